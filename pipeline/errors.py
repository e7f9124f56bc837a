"""The project's exceptions and the record of a rejected input.

The base classes live in :mod:`ops.errors` (the layer below, which imports
nothing from ``pipeline``); this module re-exports them and adds the library's
own errors, so ``except ImageprepError`` catches a bad kernel argument too.

Bad *arguments* and bad *configuration* raise; bad *data* (a corrupt file) does
not stop a run: it becomes a :class:`Failure` record with the path and a human
reason, and the run goes on.
"""

from __future__ import annotations

from dataclasses import dataclass

from ops.errors import ImageprepError, InvalidArgumentError

__all__ = [
    "ConfigError",
    "DecodeError",
    "Failure",
    "ImageprepError",
    "InvalidArgumentError",
    "StoreError",
    "StoreLockedError",
    "ShardWriteError",
    "StoreMismatchError",
    "StoreVerificationError",
]


class ConfigError(ImageprepError):
    """A run configuration is invalid; the message names the key path."""


class DecodeError(ImageprepError):
    """A source file could not be turned into pixels.

    Attributes:
        path: the file, as given to the decoder.
        reason: a short human reason (``truncated image: ...``).
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class StoreError(ImageprepError):
    """A Zarr store is missing, malformed or cannot be written as asked."""


class StoreMismatchError(StoreError):
    """An existing store was made with another config or source."""


class StoreLockedError(StoreError):
    """Another run holds the output store."""


class StoreVerificationError(StoreError):
    """A written shard is missing or does not match its SHA-256 record."""


class ShardWriteError(ImageprepError):
    """One or more shards could not be written; the store stays resumable."""


@dataclass(frozen=True, order=True)
class Failure:
    """One rejected input: its path relative to the source root and why.

    Attributes:
        path: path relative to the source root, with ``/`` separators.
        error: a human reason, e.g. ``"truncated image: image file is truncated"``.
    """

    path: str
    error: str

    def to_json(self) -> dict[str, str]:
        """Return the record as in the stats JSON contract."""
        return {"path": self.path, "error": self.error}
