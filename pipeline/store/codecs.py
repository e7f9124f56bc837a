"""The compressors a store may use, and their levels: the one table of codec defaults.

``zstd`` and ``gzip`` are the plain codecs; ``blosc`` is Blosc with LZ4 and the
shuffle filter zarr chooses for the dtype; ``none`` stores raw bytes.

Example:
    >>> Compression("zstd").level, Compression("blosc").level, Compression("none").level
    (3, 5, None)
    >>> Compression("gzip", 9).to_json()
    {'codec': 'gzip', 'level': 9}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.errors import InvalidArgumentError

__all__ = ["CODECS", "CODEC_LEVELS", "Compression"]

#: Per-codec compression levels: (lowest, highest, default).
CODEC_LEVELS: dict[str, tuple[int, int, int]] = {
    "zstd": (1, 22, 3),
    "blosc": (0, 9, 5),
    "gzip": (0, 9, 6),
}
#: Every codec name, ``none`` included.
CODECS: tuple[str, ...] = (*CODEC_LEVELS, "none")


@dataclass(frozen=True)
class Compression:
    """A codec and its level; ``level=None`` takes the codec's default.

    Raises:
        InvalidArgumentError: an unknown codec, a level out of the codec's
            range, or a level given for ``none``.
    """

    codec: str = "zstd"
    level: int | None = None

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise InvalidArgumentError(
                f"codec must be one of {', '.join(CODECS)}, got {self.codec!r}"
            )
        if self.codec == "none":
            if self.level is not None:
                raise InvalidArgumentError(f"codec 'none' takes no level, got {self.level}")
            return
        lo, hi, default = CODEC_LEVELS[self.codec]
        if self.level is None:
            object.__setattr__(self, "level", default)
        elif isinstance(self.level, bool) or not isinstance(self.level, int):
            raise InvalidArgumentError(f"level must be an int, got {self.level!r}")
        elif not lo <= self.level <= hi:
            raise InvalidArgumentError(
                f"{self.codec} level must be in {lo}..{hi}, got {self.level}"
            )

    def to_json(self) -> dict[str, Any]:
        """``{"codec": ..., "level": ...}`` as the store records it."""
        return {"codec": self.codec, "level": self.level}

    @classmethod
    def from_json(cls, data: Any) -> Compression:
        """Inverse of :meth:`to_json` (an object with ``codec`` and ``level`` also works)."""
        if isinstance(data, Compression):
            return data
        if not isinstance(data, dict):
            data = {"codec": getattr(data, "codec", None), "level": getattr(data, "level", None)}
        return cls(codec=data.get("codec", "zstd"), level=data.get("level"))

    def compressors(self) -> tuple[Any, ...] | None:
        """The zarr-python codec objects of this compression (``None`` for raw bytes)."""
        from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

        if self.codec == "none" or self.level is None:
            return None
        if self.codec == "zstd":
            return (ZstdCodec(level=self.level),)
        if self.codec == "blosc":
            return (BloscCodec(cname="lz4", clevel=self.level),)
        return (GzipCodec(level=self.level),)
