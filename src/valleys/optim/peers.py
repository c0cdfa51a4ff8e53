"""The optimizers users pick today, by name, from optional packages imported only when used.

Adan, MARS, Lion, SOAP and ADOPT come from ``pytorch-optimizer``, Schedule-Free AdamW from
``schedulefree`` (``pip install "valleys[peers]"`` installs both). ``valleys.optim`` stays torch-only:
a :class:`PeerClass` names its class and imports it on first use, and a missing package is an
``ImportError`` that names it and the install command. Muon needs torch alone (:mod:`.hybrid`).
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any

from torch.optim import Optimizer

__all__ = ["INSTALL_PEERS", "PeerClass"]

INSTALL_PEERS = 'pip install "valleys[peers]"'
"""The install command of the packages the peers come from."""


@dataclass(frozen=True)
class PeerClass:
    """An optimizer class of an optional package: called like the class, imported on first use.

    ``inspect.signature`` gives the class's signature (importing it), so the registry's
    ``default`` and ``accepts`` read the real constructor.
    """

    package: str
    """The distribution's name on the package index (``pip install <package>``)."""
    module: str
    """The module to import the class from."""
    name: str
    """The class's name in ``module``."""

    def load(self) -> type[Optimizer]:
        """The class, imported now.

        Raises:
            ImportError: the package is not installed (the message says how to install it).
        """
        try:
            module = importlib.import_module(self.module)
        except ImportError as exc:
            raise ImportError(
                f"{self.name} needs the package {self.package!r}, which is not installed: "
                f"{INSTALL_PEERS} (or pip install {self.package})"
            ) from exc
        cls: type[Optimizer] = getattr(module, self.name)
        return cls

    def __call__(self, params: Any, **kwargs: Any) -> Optimizer:
        """An instance of the class over ``params``."""
        return self.load()(params, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        """The class's constructor signature (what ``inspect.signature`` reports)."""
        return inspect.signature(self.load())
