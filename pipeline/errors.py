"""The project's exceptions and the record of a rejected input.

This module is a leaf: it imports nothing from the project, so that ``ops``
(the kernel layer below ``pipeline``) can raise these errors without pulling in
any of the library.

Bad *arguments* and bad *configuration* raise; bad *data* (a corrupt file) does
not stop a run: it becomes a :class:`Failure` record with the path and a human
reason, and the run goes on.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ConfigError",
    "DecodeError",
    "Failure",
    "ImageprepError",
    "InvalidArgumentError",
    "StoreError",
    "StoreLockedError",
    "StoreMismatchError",
]


class ImageprepError(ValueError):
    """Base class of every error imageprep raises on purpose."""


class InvalidArgumentError(ImageprepError):
    """A function argument has the wrong type, shape, dtype or value.

    The message names the parameter, what was expected and what was got, e.g.
    ``sigma must be >= 0, got -1.0``.
    """


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
