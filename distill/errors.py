"""The error types `distill` raises. Each message names the file, field or id at fault
and what was expected; callers (the CLI) show it without a traceback."""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "DistillError",
    "ExportError",
    "PackagingError",
    "ReplayError",
    "UnboundedActionError",
    "UnknownEnvError",
    "UnknownFamilyError",
]


class DistillError(Exception):
    """Base class of every error `distill` raises on purpose."""


class UnknownEnvError(DistillError):
    """The environment id is not one `distill` can build."""


class UnboundedActionError(DistillError):
    """The environment's action space is not a bounded Box, so no tanh-squashed student fits."""


class ReplayError(DistillError):
    """Replay data is malformed: wrong layout or version, shape mismatch, NaN or inf."""


class CheckpointError(DistillError):
    """A world-model checkpoint is unreadable or does not match the environment."""


class ExportError(DistillError):
    """ONNX export, checking, or numeric parity against torch failed."""


class PackagingError(DistillError):
    """The bundle could not be written or signed."""


class UnknownFamilyError(DistillError):
    """No world-model family is registered under that name, or it cannot be loaded."""
