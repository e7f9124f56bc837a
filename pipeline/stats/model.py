"""The stats JSON: :class:`Stats`, the contract's keys in order plus additive ones."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import Failure, InvalidArgumentError

__all__ = ["CHANNELS", "HISTOGRAM_BINS", "Stats"]

HISTOGRAM_BINS = 256
"""Bins of the display histogram: ``256`` equal bins of ``[0, 1]``."""
#: Channel names of image statistics.
CHANNELS = ("R", "G", "B")
_CONTRACT_KEYS = (
    "channels",
    "scale",
    "images",
    "count",
    "mean",
    "var",
    "std",
    "min",
    "max",
    "per_image_mean",
    "per_image_std",
    "method",
    "failures",
)


def _json_float(x: float) -> float | None:
    return None if math.isnan(x) else x


@dataclass
class Stats:
    """Dataset statistics: the stats JSON contract, plus additive fields.

    ``mean``/``var``/``std`` are pooled over every pixel of every image
    (population variance) on the ``[0, 1]`` scale; ``per_image_*`` are the
    averages over images of per-image means and population stds. Undefined
    values (no image) are NaN here and ``null`` in JSON.

    Attributes:
        channels: channel names, ``["R", "G", "B"]`` for images.
        scale: ``"0-1"``.
        images: images measured.
        count: values per channel (pixels).
        mean: pooled mean per channel.
        var: pooled population variance per channel.
        std: pooled population standard deviation per channel.
        min: smallest value per channel.
        max: largest value per channel.
        per_image_mean: average of the per-image means.
        per_image_std: average of the per-image population stds.
        method: ``exact``, ``chan`` or ``two-pass``.
        failures: rejected inputs, sorted by path.
        histogram: additive: per channel, counts over 256 equal bins of
            ``[0, 1]`` (bin ``min(floor(256 x), 255)``), or ``None``.
        fingerprint: additive: the source manifest's fingerprint, or ``None``.

    Example:
        >>> s = Stats.from_json(Stats.empty(method="exact").to_json())
        >>> s.images, s.channels, s.to_json()["mean"]
        (0, ['R', 'G', 'B'], [None, None, None])
    """

    channels: list[str]
    scale: str
    images: int
    count: int
    mean: list[float]
    var: list[float]
    std: list[float]
    min: list[float]
    max: list[float]
    per_image_mean: list[float]
    per_image_std: list[float]
    method: str
    failures: list[Failure] = field(default_factory=list)
    histogram: list[list[int]] | None = None
    fingerprint: str | None = None

    @classmethod
    def empty(cls, *, method: str, channels: Sequence[str] = CHANNELS) -> Stats:
        """Return the statistics of no data (every value NaN)."""
        nan = [math.nan] * len(channels)
        return cls(
            channels=list(channels),
            scale="0-1",
            images=0,
            count=0,
            mean=list(nan),
            var=list(nan),
            std=list(nan),
            min=list(nan),
            max=list(nan),
            per_image_mean=list(nan),
            per_image_std=list(nan),
            method=method,
        )

    def to_json(self) -> dict[str, Any]:
        """Return the JSON-ready dict: the contract keys in order, then additive keys."""
        d: dict[str, Any] = {
            "channels": list(self.channels),
            "scale": self.scale,
            "images": self.images,
            "count": self.count,
        }
        for key in ("mean", "var", "std", "min", "max", "per_image_mean", "per_image_std"):
            d[key] = [_json_float(float(v)) for v in getattr(self, key)]
        d["method"] = self.method
        d["failures"] = [f.to_json() for f in self.failures]
        if self.histogram is not None:
            d["histogram"] = [list(map(int, row)) for row in self.histogram]
        if self.fingerprint is not None:
            d["fingerprint"] = self.fingerprint
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Stats:
        """Build from a stats JSON dict; unknown keys are ignored (additive contract).

        Raises:
            InvalidArgumentError: a contract key is missing or has the wrong type.
        """
        if not isinstance(d, dict):
            raise InvalidArgumentError(f"stats JSON must be an object, got {type(d).__name__}")
        missing = [k for k in _CONTRACT_KEYS if k not in d]
        if missing:
            raise InvalidArgumentError(f"stats JSON must have keys {missing}, got {sorted(d)}")
        channels = d["channels"]
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            raise InvalidArgumentError(
                f"stats JSON channels must be a list of str, got {channels!r}"
            )

        def floats(key: str) -> list[float]:
            v = d[key]
            if (
                not isinstance(v, list)
                or len(v) != len(channels)
                or not all(x is None or isinstance(x, (int, float)) for x in v)
            ):
                raise InvalidArgumentError(
                    f"stats JSON {key} must be a list of {len(channels)} numbers, got {v!r}"
                )
            return [math.nan if x is None else float(x) for x in v]

        def integer(key: str) -> int:
            v = d[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise InvalidArgumentError(f"stats JSON {key} must be an int >= 0, got {v!r}")
            return v

        failures = d["failures"]
        if not isinstance(failures, list) or not all(
            isinstance(f, dict)
            and isinstance(f.get("path"), str)
            and isinstance(f.get("error"), str)
            for f in failures
        ):
            raise InvalidArgumentError(
                f"stats JSON failures must be a list of {{path, error}} objects, got {failures!r}"
            )
        hist = d.get("histogram")
        return cls(
            channels=list(channels),
            scale=str(d["scale"]),
            images=integer("images"),
            count=integer("count"),
            mean=floats("mean"),
            var=floats("var"),
            std=floats("std"),
            min=floats("min"),
            max=floats("max"),
            per_image_mean=floats("per_image_mean"),
            per_image_std=floats("per_image_std"),
            method=str(d["method"]),
            failures=[Failure(f["path"], f["error"]) for f in failures],
            histogram=None if hist is None else [[int(v) for v in row] for row in hist],
            fingerprint=d.get("fingerprint"),
        )

    def save(self, path: str | Path) -> None:
        """Write the stats JSON (indented, UTF-8) to ``path``."""
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Stats:
        """Read a stats JSON file written by :meth:`save` (or by hand)."""
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))
