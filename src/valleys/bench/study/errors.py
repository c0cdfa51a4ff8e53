"""The two ways a study stops: a configuration that cannot run, and a study that cannot proceed."""

from __future__ import annotations

__all__ = ["StudyConfigError", "StudyError"]


class StudyConfigError(ValueError):
    """A study configuration that cannot run; the message names the key and the valid choices."""


class StudyError(RuntimeError):
    """A study cannot proceed: unreachable storage, a name taken by other settings, failed workers."""
