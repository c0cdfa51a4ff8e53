"""Helpers for the study tests: tiny study files on the digits task and a throw-away PostgreSQL."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Digits cut to a few batches, so that a run takes a fraction of a second.
TINY_TASK_OPTIONS = {"model": "mlp", "train_limit": 128, "test_limit": 64}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f'"{k}" = {_toml_value(v)}' for k, v in value.items()) + " }"
    return repr(value)


def to_toml(data: dict[str, Any]) -> str:
    """A TOML document for ``data``: scalars first, then one table per nested dictionary."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for key, table in data.items():
        if not isinstance(table, dict):
            continue
        nested = {k: v for k, v in table.items() if isinstance(v, dict)}
        if key == "optimizers":
            for name, params in nested.items():
                lines.append(f"\n[optimizers.{name}]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in params.items()]
            continue
        lines.append(f"\n[{key}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def tiny_study(name: str = "tiny", **changes: Any) -> dict[str, Any]:
    """Raw settings of a small grid study on digits (``changes`` replace top-level keys)."""
    data: dict[str, Any] = {
        "name": name,
        "task": "digits",
        "kind": "grid",
        "batch_sizes": [32, 64],
        "seeds": [0, 1],
        "task_options": dict(TINY_TASK_OPTIONS),
        "budget": {"epochs": 1, "target": 0.3},
        "workers": {"heartbeat_interval": 1, "grace_period": 2, "max_retry": 2},
        "optimizers": {
            "alto": {"lr": 0.01, "beta1": [0.9, 0.99], "alpha": -5},
            "sgd": {"lr": [0.1], "momentum": 0.9},
        },
    }
    data.update(changes)
    return data


def write_study(path: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as a TOML study file at ``path``."""
    path.write_text(to_toml(data))
    return path


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server on 127.0.0.1 in a temporary data folder; yields its base URL.

    As root the server runs as the ``postgres`` user (it refuses to run as root), in a folder that
    user owns. Skipped with the reason when the server binaries or the driver are missing.
    """
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql)")
    pytest.importorskip("psycopg", reason="psycopg not installed (pip install 'psycopg[binary]')")
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    base = Path(tempfile.mkdtemp(prefix="valleys-pg-"))
    data = base / "data"
    if as_root:
        shutil.chown(base, user="postgres")
    port = _free_port()
    run = {"check": True, "capture_output": True, "text": True}
    subprocess.run(
        [*prefix, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"], **run
    )
    pg_ctl = [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data)]
    options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run([*pg_ctl, "-o", options, "-l", str(base / "log"), "-w", "start"], **run)
    try:
        # The driver named explicitly: SQLAlchemy 2.0 would pick psycopg2 for plain postgresql://.
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def new_database(server: str, name: str) -> str:
    """Create database ``name`` on ``server`` and return its URL."""
    import psycopg

    dsn = server.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(f"{dsn}/postgres", autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
        connection.execute(f'CREATE DATABASE "{name}"')
    return f"{server}/{name}"
