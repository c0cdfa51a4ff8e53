"""A fixture for tiny-tensor workloads: one torch thread while the test runs.

On a shared 2-core machine, OpenMP threads that wait at every operation's barrier for a descheduled
sibling make tiny-tensor code 20-100x slower; one thread loses nothing. Use it with
``pytestmark = pytest.mark.usefixtures("one_thread")`` after importing it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
