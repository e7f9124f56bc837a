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
    "NotAStoreError",
    "OutputPathError",
    "SourceError",
    "StoreError",
    "StoreLockedError",
    "ShardFailures",
    "ShardWriteError",
    "StoreMismatchError",
    "StoreVerificationError",
    "UnsupportedStoreError",
]


class ConfigError(ImageprepError):
    """A run configuration is invalid; the message names the key path.

    Attributes:
        problems: one line per problem, each naming its key path (empty when
            the error is not a validation of a whole config).
    """

    problems: list[str] = []  # replaced per instance, never mutated


class SourceError(ConfigError):
    """The source holds nothing a run can use (no image file, or none decodable)."""


class DecodeError(ImageprepError):
    """A source file could not be turned into pixels.

    Attributes:
        path: the file, as given to the decoder.
        reason: a short human reason (``truncated image: ...``).
    """

    exit_code = 1

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class StoreError(ImageprepError):
    """A Zarr store is missing, malformed or cannot be written as asked."""

    exit_code = 1


class NotAStoreError(StoreError):
    """The path holds no imageprep store (nothing there, or something else): a usage error."""

    exit_code = 2


class OutputPathError(StoreError):
    """``output.path`` cannot hold a store (``/``, inside the source, unwritable, foreign files)."""

    exit_code = 2


class UnsupportedStoreError(StoreError):
    """The command does not work on this kind of store (``compact`` in object storage)."""

    exit_code = 2


class StoreMismatchError(StoreError):
    """An existing store was made with another config or source."""

    exit_code = 2


class StoreLockedError(StoreError):
    """Another run holds the output store."""

    exit_code = 2


class StoreVerificationError(StoreError):
    """A written shard is missing or does not match its SHA-256 record."""


class ShardWriteError(ImageprepError):
    """One or more shards could not be written; the store stays resumable.

    Attributes:
        report: what failed (:class:`ShardFailures`), when known.
    """

    exit_code = 1

    def __init__(self, message: str, *, report: ShardFailures | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class ShardFailures:
    """The shards of a run that failed, with their causes.

    Example:
        >>> failures = ShardFailures("/o", 2, ("shard 1: OSError: disk full",))
        >>> print(failures.message())  # doctest: +NORMALIZE_WHITESPACE
        1 of 2 shards failed (OSError: disk full); the store at /o is resumable
        (rerun the same command):
          - shard 1: OSError: disk full
    """

    store: str
    n_shards: int
    errors: tuple[str, ...]

    def message(self, *, attempts: int | None = None) -> str:
        """Count, cause, store, then one line per shard and cause (and the attempts, if several).

        The first line names the cause (the first shard's, when the shards failed
        for different reasons), so that the one line a command prints says why.
        """
        after = f" after {attempts} attempts" if attempts and attempts > 1 else ""
        causes = [e.split(": ", 1)[-1] for e in self.errors]
        if not causes:
            why = ""
        elif len(set(causes)) == 1:
            why = f" ({causes[0]})"
        else:
            why = f" (first: {self.errors[0]})"
        lines = "\n".join(f"  - {e}" for e in self.errors)
        return (
            f"{len(self.errors)} of {self.n_shards} shards failed{after}{why}; the store at "
            f"{self.store} is resumable (rerun the same command):\n{lines}"
        )


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
