"""Value types of the config models: numbers, ``[lo, hi]`` ranges, sizes, paths.

Private to :mod:`pipeline.config`: the shaping every model shares (a YAML
value to a typed one, with messages that show the value as YAML writes it).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, ValidationInfo

__all__ = [
    "Bool",
    "Int",
    "LocationValue",
    "Model",
    "Pair",
    "PathValue",
    "PositiveInt",
    "Probability",
    "Size",
    "ValueOrRange",
    "check_storage_options",
    "resolve_location_value",
    "resolve_path",
    "show",
]


def show(value: Any) -> str:
    """Render a value for an error message, the way it reads in YAML/JSON."""
    try:
        return json.dumps(value, default=str, ensure_ascii=False)
    except (TypeError, ValueError):  # pragma: no cover - default=str makes this rare
        return repr(value)


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _number(value: Any) -> Any:
    if isinstance(value, bool) or (isinstance(value, float) and not math.isfinite(value)):
        raise ValueError(f"expected a finite number, got {show(value)}")
    return value


def _pair(value: Any) -> Any:
    if isinstance(value, list | tuple) and len(value) == 2 and all(_is_number(v) for v in value):
        return (float(value[0]), float(value[1]))
    raise ValueError(f"expected a [lo, hi] pair of numbers, got {show(value)}")


def _value_or_range(value: Any) -> Any:
    if _is_number(value):
        return float(value)
    if isinstance(value, list | tuple) and len(value) == 2 and all(_is_number(v) for v in value):
        lo, hi = float(value[0]), float(value[1])
        if lo > hi:
            raise ValueError(f"a [lo, hi] range needs lo <= hi, got {show([lo, hi])}")
        return (lo, hi)
    raise ValueError(f"expected a number or a [lo, hi] range, got {show(value)}")


def _size(value: Any) -> Any:
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    ):
        return (int(value[0]), int(value[1]))
    raise ValueError(f"expected [H, W], two integers >= 1, got {show(value)}")


def _path(value: Any) -> Any:
    if isinstance(value, str | os.PathLike) and str(value).strip():
        return Path(value)
    raise ValueError(f"expected a non-empty path, got {show(value)}")


def _location_text(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str) and value.strip():
        return value  # kept a string: pathlib would turn "s3://b" into "s3:/b"
    raise ValueError(f"expected a non-empty path or URL, got {show(value)}")


Int = Annotated[int, Strict()]
PositiveInt = Annotated[int, Strict(), Field(ge=1)]
Bool = Annotated[bool, Strict()]
Probability = Annotated[float, BeforeValidator(_number), Strict(), Field(ge=0.0, le=1.0)]
Pair = Annotated[tuple[float, float], BeforeValidator(_pair)]
ValueOrRange = Annotated[float | tuple[float, float], BeforeValidator(_value_or_range)]
Size = Annotated[tuple[int, int], BeforeValidator(_size)]
PathValue = Annotated[Path, BeforeValidator(_path)]
LocationValue = Annotated[Path | str, BeforeValidator(_location_text)]
"""A local folder (a ``Path`` once resolved) or an object-store URL (its canonical string)."""


def _bounds(value: float | tuple[float, float]) -> tuple[float, float]:
    return (value, value) if isinstance(value, float) else value


def resolve_path(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir") if isinstance(info.context, dict) else None
    path = Path(os.path.expanduser(value))  # an unknown ~user stays as written
    if not path.is_absolute():
        path = Path(base if base is not None else os.getcwd()) / path
    return Path(os.path.normpath(path))


def resolve_location_value(value: Path | str, info: ValidationInfo, *, key: str) -> Path | str:
    """Resolve a :data:`LocationValue`: an absolute real ``Path``, or a canonical URL string.

    A plain path (or ``file://`` URL) resolves against the context's
    ``base_dir`` (else the working directory), with ``~`` expanded and
    symbolic links resolved; a URL is checked (known scheme, package
    installed, no lost slash) by :func:`pipeline.storage.resolve_location`.
    """
    from pipeline.errors import ConfigError
    from pipeline.storage import resolve_location

    base = (info.context or {}).get("base_dir") if isinstance(info.context, dict) else None
    try:
        location = resolve_location(value, key=key, base_dir=base)
    except ConfigError as exc:  # the message gets the key from the problem's location
        raise ValueError(str(exc).removeprefix(f"{key}: ")) from None
    return Path(location.path) if location.is_local else location.url


def check_storage_options(value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
    """Storage options: string keys, JSON values, and a URL ``path`` to apply to."""
    bad = next((k for k in value if not isinstance(k, str)), None)
    if bad is not None:
        raise ValueError(f"keys must be strings, got {show(bad)}")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"values must be JSON-safe (strings, numbers, mappings): {exc}") from None
    path = info.data.get("path")
    if value and isinstance(path, Path):  # a local folder (a URL stays a string)
        raise ValueError(
            f"only apply to a URL path (s3://, gs://, az://, memory://), but path is the local "
            f"folder {str(path)!r}; remove them or give path as a URL"
        )
    return value


class Model(BaseModel):
    """Base of every config model: frozen, unknown keys forbidden, no inf/NaN."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, allow_inf_nan=False, validate_default=False
    )
