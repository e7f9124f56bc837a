"""The compressors a store may use, their levels and filters: the one table of codec rules.

``zstd`` and ``gzip`` are the plain codecs; ``blosc`` is Blosc with LZ4 after a
shuffle filter (``bit``: bitshuffle, the default, which suits float16 samples
whose low mantissa bits are noise; ``byte``; ``none``); ``none`` stores raw
bytes. The default of a store, chosen by measurement
(``benchmarks/bench_codecs.py``), is Blosc LZ4 level 5 with bitshuffle: on the
Pareto front of encode speed, decode speed and size, 5.6x cheaper to encode
than zstd 3 for ~1.5x the bytes, and about 0.8 of the raw float16 bytes on
photos.

Example:
    >>> Compression("zstd").level, Compression("blosc").level, Compression("none").level
    (3, 5, None)
    >>> Compression("blosc").shuffle, Compression("zstd").shuffle
    ('bit', None)
    >>> Compression("gzip", 9).to_json()
    {'codec': 'gzip', 'level': 9, 'shuffle': None}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.errors import InvalidArgumentError

__all__ = ["CODECS", "CODEC_LEVELS", "SHUFFLES", "Compression"]

#: Per-codec compression levels: (lowest, highest, default).
CODEC_LEVELS: dict[str, tuple[int, int, int]] = {
    "zstd": (1, 22, 3),
    "blosc": (0, 9, 5),
    "gzip": (0, 9, 6),
}
#: Every codec name, ``none`` included.
CODECS: tuple[str, ...] = (*CODEC_LEVELS, "none")
#: Blosc's shuffle filters, and zarr's names for them.
SHUFFLES: dict[str, str] = {"bit": "bitshuffle", "byte": "shuffle", "none": "noshuffle"}


@dataclass(frozen=True)
class Compression:
    """A codec and its level; ``level=None`` takes the codec's default.

    Raises:
        InvalidArgumentError: an unknown codec, a level out of the codec's
            range, or a level given for ``none``.
    """

    codec: str = "zstd"
    level: int | None = None
    shuffle: str | None = None

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise InvalidArgumentError(
                f"codec must be one of {', '.join(CODECS)}, got {self.codec!r}"
            )
        object.__setattr__(self, "level", self.check_level(self.codec, self.level))
        object.__setattr__(self, "shuffle", self.check_shuffle(self.codec, self.shuffle))

    @staticmethod
    def check_level(codec: str, level: int | None) -> int | None:
        """The level to use: ``level``, or the codec's default when ``None``.

        Raises:
            InvalidArgumentError: out of the codec's range, or a level for ``none``.
        """
        if codec == "none":
            if level is not None:
                raise InvalidArgumentError(f"codec 'none' takes no level, got {level}")
            return None
        lo, hi, default = CODEC_LEVELS[codec]
        if level is None:
            return default
        if isinstance(level, bool) or not isinstance(level, int):
            raise InvalidArgumentError(f"level must be an int, got {level!r}")
        if not lo <= level <= hi:
            raise InvalidArgumentError(f"{codec} level must be in {lo}..{hi}, got {level}")
        return level

    @staticmethod
    def check_shuffle(codec: str, shuffle: str | None) -> str | None:
        """The shuffle filter to use: ``shuffle``, or ``bit`` for blosc when ``None``.

        Raises:
            InvalidArgumentError: not one of ``bit``, ``byte``, ``none``, or a
                shuffle for a codec other than blosc.
        """
        if codec != "blosc":
            if shuffle is not None:
                raise InvalidArgumentError(
                    f"shuffle is a blosc filter; {codec} takes none, got {shuffle!r}"
                )
            return None
        if shuffle is None:
            return "bit"
        if shuffle not in SHUFFLES:
            raise InvalidArgumentError(
                f"shuffle must be one of {', '.join(SHUFFLES)}, got {shuffle!r}"
            )
        return shuffle

    def to_json(self) -> dict[str, Any]:
        """``{"codec": ..., "level": ..., "shuffle": ...}`` as the store records it."""
        return {"codec": self.codec, "level": self.level, "shuffle": self.shuffle}

    @classmethod
    def from_json(cls, data: Any) -> Compression:
        """Inverse of :meth:`to_json` (an object with ``codec`` and ``level`` also works)."""
        if isinstance(data, Compression):
            return data
        if not isinstance(data, dict):
            data = {
                "codec": getattr(data, "codec", None),
                "level": getattr(data, "level", None),
                "shuffle": getattr(data, "shuffle", None),
            }
        return cls(
            codec=data.get("codec", "zstd"), level=data.get("level"), shuffle=data.get("shuffle")
        )

    def compressors(self) -> tuple[Any, ...] | None:
        """The zarr-python codec objects of this compression (``None`` for raw bytes)."""
        from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

        if self.codec == "none" or self.level is None:
            return None
        if self.codec == "zstd":
            return (ZstdCodec(level=self.level),)
        if self.codec == "blosc":
            shuffle = SHUFFLES[self.shuffle or "bit"]
            return (BloscCodec(cname="lz4", clevel=self.level, shuffle=shuffle),)  # type: ignore[arg-type]
        return (GzipCodec(level=self.level),)
