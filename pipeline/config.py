"""The run configuration: pydantic models for the YAML contract, loading and overrides.

A run is described by one YAML file (``configs/*.yaml``) with five sections,
``source``, ``stats``, ``transform``, ``output`` and ``runtime``. Every key has
a default except ``source.path`` and ``output.path``. The file is validated
once, at load: unknown keys, wrong types and impossible values are errors, and
every problem is reported at once with its key path::

    transform.augment[1].band: f_low must be < f_high, got [0.3, 0.2]

Rules worth knowing:

- Relative paths in a YAML file resolve against **the folder of that file**,
  so a config means the same thing from any working directory. Paths given on
  the command line (``--set output.path=...``) resolve against the current
  working directory, as any shell user expects. A dict validated with
  :meth:`RunConfig.model_validate` resolves against ``context={"base_dir": ...}``
  when given, else the working directory. After validation every path is
  absolute.
- A "value or range" parameter is either a number (used as is) or a
  ``[lo, hi]`` pair (a value drawn uniformly per sample); ``lo == hi`` is
  allowed.
- ``random_resized_crop`` replaces the resize (it is applied first, wherever it
  is listed) and may appear at most once; its ``p`` must be 1.
- ``output.dtype: uint8`` stores un-normalized pixels, so it needs
  ``transform.normalize: false`` (said explicitly rather than ignored).

Example:
    >>> cfg = RunConfig.model_validate(
    ...     {"source": {"path": "/data/images"}, "output": {"path": "/out/ds.zarr"}}
    ... )
    >>> cfg.transform.size, cfg.output.dtype, cfg.output.compression.level
    ((224, 224), 'float16', 3)
    >>> [step.op for step in cfg.transform.augment][:2]
    ['invert', 'dog_noise']
    >>> len(cfg.identity())
    64
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pipeline.errors import ConfigError

__all__ = [
    "AugmentStep",
    "CompressionConfig",
    "ConfigKey",
    "DogNoiseStep",
    "GaussianBlurStep",
    "InvertStep",
    "OutputConfig",
    "RandomResizedCropStep",
    "RunConfig",
    "RuntimeConfig",
    "ShadowsHighlightsStep",
    "SourceConfig",
    "StatsConfig",
    "TransformConfig",
    "config_reference",
    "default_config_dict",
    "load_config",
    "parse_override",
    "validate_config",
]

#: Version of the identity hash's input; bump it when the meaning of a key changes.
IDENTITY_VERSION = "imageprep-config/1"

#: Keys left out of :meth:`RunConfig.identity`: they do not determine the stored bytes.
NOT_IN_IDENTITY: tuple[tuple[str, str], ...] = (
    ("source", "path"),  # where the source is; its content enters through the source fingerprint
    ("output", "path"),  # where the store is; moving a store does not change it
    ("output", "overwrite"),  # what to do with an existing store, not what to write
    ("runtime", "workers"),  # results are bit-identical whatever the worker count
    ("runtime", "dask_address"),  # ... and whatever the cluster
)

#: Per-codec compression levels: (lowest, highest, default).
CODEC_LEVELS: dict[str, tuple[int, int, int]] = {
    "zstd": (1, 22, 3),
    "blosc": (0, 9, 5),
    "gzip": (0, 9, 6),
}

_PATH_KEYS = (("source", "path"), ("stats", "file"), ("output", "path"))

# --------------------------------------------------------------------------- value types


def _show(value: Any) -> str:
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
        raise ValueError(f"expected a finite number, got {_show(value)}")
    return value


def _pair(value: Any) -> Any:
    if isinstance(value, list | tuple) and len(value) == 2 and all(_is_number(v) for v in value):
        return (float(value[0]), float(value[1]))
    raise ValueError(f"expected a [lo, hi] pair of numbers, got {_show(value)}")


def _value_or_range(value: Any) -> Any:
    if _is_number(value):
        return float(value)
    if isinstance(value, list | tuple) and len(value) == 2 and all(_is_number(v) for v in value):
        lo, hi = float(value[0]), float(value[1])
        if lo > hi:
            raise ValueError(f"a [lo, hi] range needs lo <= hi, got {_show([lo, hi])}")
        return (lo, hi)
    raise ValueError(f"expected a number or a [lo, hi] range, got {_show(value)}")


def _size(value: Any) -> Any:
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    ):
        return (int(value[0]), int(value[1]))
    raise ValueError(f"expected [H, W], two integers >= 1, got {_show(value)}")


def _path(value: Any) -> Any:
    if isinstance(value, str | os.PathLike) and str(value).strip():
        return Path(value)
    raise ValueError(f"expected a non-empty path, got {_show(value)}")


Int = Annotated[int, Strict()]
PositiveInt = Annotated[int, Strict(), Field(ge=1)]
Bool = Annotated[bool, Strict()]
Probability = Annotated[float, BeforeValidator(_number), Strict(), Field(ge=0.0, le=1.0)]
Pair = Annotated[tuple[float, float], BeforeValidator(_pair)]
ValueOrRange = Annotated[float | tuple[float, float], BeforeValidator(_value_or_range)]
Size = Annotated[tuple[int, int], BeforeValidator(_size)]
PathValue = Annotated[Path, BeforeValidator(_path)]


def _bounds(value: float | tuple[float, float]) -> tuple[float, float]:
    return (value, value) if isinstance(value, float) else value


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir") if isinstance(info.context, dict) else None
    path = value.expanduser()
    if not path.is_absolute():
        path = Path(base if base is not None else os.getcwd()) / path
    return Path(os.path.normpath(path))


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, allow_inf_nan=False, validate_default=False
    )


# --------------------------------------------------------------------------- augment steps


class InvertStep(_Model):
    """``1 - x`` on the [0, 1] image, with probability ``p``."""

    op: Literal["invert"] = Field(description="Invert the image: 1 - x.")
    p: Probability = Field(default=1.0, description="Probability of applying the step to a sample.")


class DogNoiseStep(_Model):
    """Band-pass (difference-of-Gaussians) noise added to the image."""

    op: Literal["dog_noise"] = Field(description="Add band-pass (DoG-filtered) Gaussian noise.")
    band: Pair = Field(
        description="[f_low, f_high] pass band in cycles/pixel, 0 < f_low < f_high <= 0.5."
    )
    rms: ValueOrRange = Field(
        description="RMS of the added noise (> 0), a value or a [lo, hi] range."
    )
    p: Probability = Field(default=1.0, description="Probability of applying the step to a sample.")

    @field_validator("band")
    @classmethod
    def _check_band(cls, band: tuple[float, float]) -> tuple[float, float]:
        lo, hi = band
        if not lo < hi:
            raise ValueError(f"f_low must be < f_high, got {_show(list(band))}")
        if not (0.0 < lo and hi <= 0.5):
            raise ValueError(
                f"the band must lie in (0, 0.5] cycles/pixel (0.5 is Nyquist), "
                f"got {_show(list(band))}"
            )
        return band

    @field_validator("rms")
    @classmethod
    def _check_rms(cls, rms: float | tuple[float, float]) -> float | tuple[float, float]:
        if _bounds(rms)[0] <= 0.0:
            raise ValueError(f"rms must be > 0, got {_show(rms)}")
        return rms


class ShadowsHighlightsStep(_Model):
    """Lift or darken shadows and highlights; 0 leaves them unchanged."""

    op: Literal["shadows_highlights"] = Field(description="Shadows/highlights tone adjustment.")
    shadows: ValueOrRange = Field(
        default=0.0,
        description="Shadow amount in [-1, 1] (> 0 lifts), a value or a [lo, hi] range.",
    )
    highlights: ValueOrRange = Field(
        default=0.0,
        description="Highlight amount in [-1, 1] (< 0 darkens), a value or a [lo, hi] range.",
    )
    p: Probability = Field(default=1.0, description="Probability of applying the step to a sample.")

    @field_validator("shadows", "highlights")
    @classmethod
    def _check_amount(cls, value: float | tuple[float, float], info: ValidationInfo) -> Any:
        lo, hi = _bounds(value)
        if lo < -1.0 or hi > 1.0:
            raise ValueError(f"{info.field_name} must lie in [-1, 1], got {_show(value)}")
        return value


class GaussianBlurStep(_Model):
    """Gaussian blur with standard deviation ``sigma`` (pixels)."""

    op: Literal["gaussian_blur"] = Field(description="Gaussian blur.")
    sigma: ValueOrRange = Field(
        description="Standard deviation in pixels (>= 0), a value or a [lo, hi] range."
    )
    p: Probability = Field(default=1.0, description="Probability of applying the step to a sample.")

    @field_validator("sigma")
    @classmethod
    def _check_sigma(cls, sigma: float | tuple[float, float]) -> float | tuple[float, float]:
        if _bounds(sigma)[0] < 0.0:
            raise ValueError(f"sigma must be >= 0, got {_show(sigma)}")
        return sigma


class RandomResizedCropStep(_Model):
    """A random crop of random area and aspect ratio, resized to ``transform.size``.

    It replaces the resize: it is applied first, wherever it is listed.
    """

    op: Literal["random_resized_crop"] = Field(
        description="Random crop resized to transform.size; replaces the resize."
    )
    scale: Pair = Field(
        default=(0.08, 1.0), description="[lo, hi] crop area as a fraction of the image, in (0, 1]."
    )
    ratio: Pair = Field(
        default=(0.75, 4.0 / 3.0), description="[lo, hi] crop aspect ratio W/H, > 0."
    )
    p: Probability = Field(default=1.0, description="Must be 1 (the crop replaces the resize).")

    @field_validator("scale")
    @classmethod
    def _check_scale(cls, scale: tuple[float, float]) -> tuple[float, float]:
        lo, hi = scale
        if not (0.0 < lo <= hi <= 1.0):
            raise ValueError(f"scale must satisfy 0 < lo <= hi <= 1, got {_show(list(scale))}")
        return scale

    @field_validator("ratio")
    @classmethod
    def _check_ratio(cls, ratio: tuple[float, float]) -> tuple[float, float]:
        lo, hi = ratio
        if not (0.0 < lo <= hi):
            raise ValueError(f"ratio must satisfy 0 < lo <= hi, got {_show(list(ratio))}")
        return ratio

    @field_validator("p")
    @classmethod
    def _check_p(cls, p: float) -> float:
        if p != 1.0:
            raise ValueError(f"random_resized_crop replaces the resize, so p must be 1, got {p}")
        return p


AugmentStep = Annotated[
    InvertStep | DogNoiseStep | ShadowsHighlightsStep | GaussianBlurStep | RandomResizedCropStep,
    Field(discriminator="op"),
]

#: op name -> step model.
AUGMENT_OPS: dict[str, type[_Model]] = {
    "invert": InvertStep,
    "dog_noise": DogNoiseStep,
    "shadows_highlights": ShadowsHighlightsStep,
    "gaussian_blur": GaussianBlurStep,
    "random_resized_crop": RandomResizedCropStep,
}


def _default_augment() -> tuple[Any, ...]:
    return (
        InvertStep(op="invert", p=0.5),
        DogNoiseStep(op="dog_noise", band=(0.05, 0.2), rms=0.08, p=1.0),
        ShadowsHighlightsStep(op="shadows_highlights", shadows=0.3, highlights=-0.2),
        GaussianBlurStep(op="gaussian_blur", sigma=(0.1, 1.5)),
        RandomResizedCropStep(op="random_resized_crop", scale=(0.35, 1.0), ratio=(0.75, 1.333)),
    )


# --------------------------------------------------------------------------- sections


class SourceConfig(_Model):
    """Where the images come from and how they are labelled."""

    path: PathValue = Field(description="Folder of images, scanned recursively. Required.")
    labels: Literal["folders", "none"] = Field(
        default="folders",
        description="folders: the first-level subfolder is the class; none: every label is -1.",
    )

    @field_validator("path")
    @classmethod
    def _resolve(cls, value: Path, info: ValidationInfo) -> Path:
        return _resolve_path(value, info)


class StatsConfig(_Model):
    """How the dataset statistics are obtained."""

    method: Literal["exact", "chan", "two-pass"] = Field(
        default="exact", description="exact (integer sums) | chan (pairwise merge) | two-pass."
    )
    at: Literal["source", "resized"] = Field(
        default="source",
        description="source: decoded pixels; resized: after resize, before normalize.",
    )
    file: PathValue | None = Field(
        default=None, description="Reuse this stats JSON instead of computing (must exist)."
    )

    @field_validator("file")
    @classmethod
    def _check_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        path = _resolve_path(value, info)
        if not path.is_file():
            raise ValueError(f"no such file: {path}")
        return path


class TransformConfig(_Model):
    """What every sample goes through between decoding and the store."""

    size: Size = Field(default=(224, 224), description="[H, W] of every sample, positive integers.")
    resize: Literal["shorter-side-crop", "stretch", "pad"] = Field(
        default="shorter-side-crop",
        description="shorter-side-crop (scale shorter side, center crop) | stretch | pad.",
    )
    normalize: Bool = Field(default=True, description="(x - mean) / std with the dataset stats.")
    copies: PositiveInt = Field(
        default=1, description="Independently augmented samples per source image (>= 1)."
    )
    augment: tuple[AugmentStep, ...] = Field(
        default_factory=_default_augment,
        description="Augmentation steps, applied in order after the resize; [] for none.",
    )

    @field_validator("augment")
    @classmethod
    def _check_augment(cls, steps: tuple[Any, ...]) -> tuple[Any, ...]:
        crops = [i for i, s in enumerate(steps) if s.op == "random_resized_crop"]
        if len(crops) > 1:
            raise ValueError(
                f"random_resized_crop may appear at most once, got {len(crops)} "
                f"(steps {', '.join(map(str, crops))})"
            )
        return steps


class CompressionConfig(_Model):
    """The compressor of every array in the store.

    ``zstd`` and ``gzip`` are the plain codecs; ``blosc`` is Blosc with LZ4
    and the shuffle filter chosen by Zarr for the dtype; ``none`` stores raw
    bytes. ``level`` defaults per codec (zstd 3, blosc 5, gzip 6).
    """

    codec: Literal["zstd", "blosc", "gzip", "none"] = Field(
        default="zstd", description="zstd | blosc | gzip | none."
    )
    level: Int | None = Field(
        default=None,
        validate_default=True,
        description="zstd 1..22 (default 3), blosc 0..9 (5), gzip 0..9 (6); none takes no level.",
    )

    @field_validator("level")
    @classmethod
    def _check_level(cls, level: int | None, info: ValidationInfo) -> int | None:
        codec = info.data.get("codec")
        if codec is None:  # the codec itself is invalid: reported on its own
            return level
        if codec == "none":
            if level is not None:
                raise ValueError(f"codec 'none' takes no level, got {level}")
            return None
        lo, hi, default = CODEC_LEVELS[codec]
        if level is None:
            return default
        if not lo <= level <= hi:
            raise ValueError(f"{codec} level must be in {lo}..{hi}, got {level}")
        return level


class OutputConfig(_Model):
    """The Zarr store written by the run."""

    path: PathValue = Field(description="The Zarr v3 store (a folder). Required.")
    dtype: Literal["float16", "float32", "uint8"] = Field(
        default="float16",
        description="float16 | float32 | uint8 (uint8 stores un-normalized pixels).",
    )
    shard_size: PositiveInt = Field(
        default=256, description="Samples per shard; one shard is written by one task."
    )
    compression: CompressionConfig = Field(
        default_factory=lambda: CompressionConfig(codec="zstd", level=3),
        description="Compressor: {codec, level}.",
    )
    overwrite: Bool = Field(
        default=False, description="Replace an existing store made with another config or source."
    )

    @field_validator("path")
    @classmethod
    def _resolve(cls, value: Path, info: ValidationInfo) -> Path:
        return _resolve_path(value, info)


_DEVICE = re.compile(r"auto|cpu|cuda|cuda:\d+")
_ADDRESS = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s/]+")


class RuntimeConfig(_Model):
    """How the run executes; only ``seed``, ``device`` and ``batch_size`` can change bytes."""

    seed: Int = Field(
        default=0, ge=0, lt=2**63, description="Sample i, copy k always gets the same randomness."
    )
    device: str = Field(default="auto", description="auto | cpu | cuda | cuda:N.")
    workers: PositiveInt | None = Field(
        default=None, description="Local worker threads (null: all cores)."
    )
    batch_size: PositiveInt = Field(default=64, description="Images per kernel call.")
    dask_address: str | None = Field(
        default=None, description="scheme://host:port of an existing Dask scheduler (null: local)."
    )

    @field_validator("device")
    @classmethod
    def _check_device(cls, device: str) -> str:
        if not _DEVICE.fullmatch(device):
            raise ValueError(f"expected auto, cpu, cuda or cuda:N, got {_show(device)}")
        return device

    @field_validator("dask_address")
    @classmethod
    def _check_address(cls, address: str | None) -> str | None:
        if address is not None and not _ADDRESS.fullmatch(address):
            raise ValueError(
                f"expected scheme://host:port (e.g. tcp://host:8786), got {_show(address)}"
            )
        return address


class RunConfig(_Model):
    """A validated run configuration (see the module docstring for the rules).

    Build it with :func:`load_config` from a YAML file, or with
    ``RunConfig.model_validate(dict)`` (relative paths then resolve against
    ``context={"base_dir": ...}`` or the working directory); invalid input
    raises pydantic's ``ValidationError`` there, and :func:`validate_config`
    turns it into a :class:`~pipeline.errors.ConfigError`.
    """

    source: SourceConfig = Field(description="The input images.")
    stats: StatsConfig = Field(default_factory=StatsConfig, description="Dataset statistics.")
    transform: TransformConfig = Field(
        default_factory=TransformConfig, description="Resize, normalize, augment."
    )
    output: OutputConfig = Field(description="The Zarr store.")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="Execution.")

    @model_validator(mode="before")
    @classmethod
    def _required_sections(cls, data: Any) -> Any:
        # A missing section is reported as its missing required key (source.path),
        # which says more than "source: required key is missing".
        if isinstance(data, dict):
            data = dict(data)
            for section in ("source", "output"):
                data.setdefault(section, {})
        return data

    @model_validator(mode="after")
    def _cross_checks(self) -> RunConfig:
        if self.output.dtype == "uint8" and self.transform.normalize:
            raise ValueError(
                "output.dtype: uint8 stores un-normalized pixels; set transform.normalize: false "
                "(or use float16/float32), got dtype uint8 with normalize true"
            )
        return self

    def resolved_dict(self) -> dict[str, Any]:
        """Return every key with its value, JSON-safe (paths as absolute strings).

        This is what the store records as the run's config;
        ``RunConfig.model_validate(cfg.resolved_dict()) == cfg``.
        """
        return self.model_dump(mode="json")

    def identity(self) -> str:
        """Return a hex SHA-256 of everything in the config that determines the stored bytes.

        Two configs with the same identity write the same samples from the same
        source, so a store can be resumed only by a run of the same identity
        (and the same source fingerprint, compared separately). Left out:
        ``source.path`` and ``output.path`` (locations: the source's content
        enters through its fingerprint, and a store may be moved),
        ``output.overwrite`` (a policy), ``runtime.workers`` and
        ``runtime.dask_address`` (results are bit-identical whatever the
        parallelism). ``stats.file`` enters as the SHA-256 of the file's
        content, not its path. Everything else is in, including
        ``runtime.device`` and ``runtime.batch_size``, which may change the
        last float16 ulp.

        Raises:
            ConfigError: ``stats.file`` can no longer be read.
        """
        data = self.resolved_dict()
        for section, key in NOT_IN_IDENTITY:
            data[section].pop(key)
        if self.stats.file is not None:
            try:
                digest = hashlib.sha256(self.stats.file.read_bytes()).hexdigest()
            except OSError as exc:
                raise ConfigError(f"stats.file: cannot read {self.stats.file}: {exc}") from exc
            data["stats"]["file"] = {"sha256": digest}
        canonical = json.dumps(
            {"version": IDENTITY_VERSION, "config": data},
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=True,
            allow_nan=False,
        )
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()


# --------------------------------------------------------------------------- errors


def _loc_path(loc: Sequence[str | int]) -> str:
    """Render a pydantic location as a key path, dropping discriminator tags."""
    out = ""
    previous: str | int | None = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(previous, int) and part in AUGMENT_OPS:
            pass  # the discriminated union adds the tag after the list index
        else:
            out += f".{part}" if out else str(part)
        previous = part
    return out or "(config)"


def _model_at(loc: Sequence[str | int]) -> type[BaseModel] | None:
    """Return the model that holds the key at ``loc`` (for "allowed keys" hints)."""
    model: type[BaseModel] | None = RunConfig
    parts = list(loc[:-1])
    i = 0
    while i < len(parts) and model is not None:
        part = parts[i]
        if isinstance(part, int):
            tag = parts[i + 1] if i + 1 < len(parts) else None
            model = AUGMENT_OPS.get(tag) if isinstance(tag, str) else None
            i += 2
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        model = _field_model(field.annotation)
        if model is None and i + 1 < len(parts) and isinstance(parts[i + 1], int):
            model = RunConfig  # a list of steps: the next index and tag pick the step model
        i += 1
    return model


def _field_model(annotation: Any) -> type[BaseModel] | None:
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


_BOUNDS = {
    "greater_than_equal": (">=", "ge"),
    "greater_than": (">", "gt"),
    "less_than_equal": ("<=", "le"),
    "less_than": ("<", "lt"),
}


_TYPE_NAMES = {
    "bool_type": "true or false",
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "tuple_type": "a list",
    "list_type": "a list",
    "none_required": "null",
}


def _describe_error(err: Mapping[str, Any]) -> str:
    loc = err.get("loc", ())
    path = _loc_path(loc)
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    got = _show(err.get("input"))
    if kind == "missing":
        return f"{path}: required key is missing"
    if kind == "extra_forbidden":
        model = _model_at(loc)
        hint = f" (allowed: {', '.join(model.model_fields)})" if model is not None else ""
        return f"{path}: unknown key{hint}"
    if kind == "union_tag_not_found":
        return f"{path}.op: required key is missing (one of {', '.join(AUGMENT_OPS)})"
    if kind == "union_tag_invalid":
        ops = ", ".join(AUGMENT_OPS)
        return f"{path}.op: unknown op {_show(ctx.get('tag'))}, expected one of {ops}"
    if kind in _BOUNDS:
        symbol, name = _BOUNDS[kind]
        return f"{path}: must be {symbol} {ctx.get(name)}, got {got}"
    msg = str(err.get("msg", "invalid value"))
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
        if not loc:
            return msg
        return f"{path}: {msg}"
    if kind == "literal_error":
        return f"{path}: expected {ctx.get('expected', '?')}, got {got}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"{path}: expected a mapping of keys, got {got}"
    if kind in _TYPE_NAMES:
        return f"{path}: expected {_TYPE_NAMES[kind]}, got {got}"
    msg = msg.replace("Input should be", "expected").replace("Input should", "expected to")
    return f"{path}: {msg}, got {got}"


def _problems(exc: ValidationError) -> list[str]:
    problems: list[str] = []
    for err in exc.errors(include_url=False):
        for line in _describe_error(err).splitlines():
            if line not in problems:
                problems.append(line)
    return problems


def _config_error(source: str, problems: Sequence[str]) -> ConfigError:
    noun = "problem" if len(problems) == 1 else "problems"
    body = "\n".join(f"  {p}" for p in problems)
    return ConfigError(f"invalid config {source} ({len(problems)} {noun}):\n{body}")


def validate_config(
    data: Mapping[str, Any],
    *,
    base_dir: str | os.PathLike[str] | None = None,
    source: str = "<dict>",
) -> RunConfig:
    """Validate a config dict, raising :class:`ConfigError` with every problem.

    Args:
        data: the parsed YAML (or any mapping in the contract's shape).
        base_dir: folder that relative paths resolve against (default: the
            working directory).
        source: a name for the config in messages (its file path).

    Returns:
        The validated config, with absolute paths.

    Raises:
        ConfigError: one line per problem, each naming its key path.

    Example:
        >>> validate_config({"source": {"path": "/d"}, "output": {"path": "/o", "shard_size": 0}})
        Traceback (most recent call last):
        ...
        pipeline.errors.ConfigError: invalid config <dict> (1 problem):
          output.shard_size: must be >= 1, got 0
    """
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"invalid config {source}: expected a mapping of sections, got {_show(data)}"
        )
    context = {"base_dir": Path(base_dir) if base_dir is not None else None}
    try:
        return RunConfig.model_validate(dict(data), context=context)
    except ValidationError as exc:
        raise _config_error(source, _problems(exc)) from None


# --------------------------------------------------------------------------- overrides

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
_SEGMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_\-]*)((?:\[\d+\])*)")


def parse_override(text: str) -> tuple[tuple[str | int, ...], Any]:
    """Split a ``key.path=value`` override into its key path and YAML value.

    The value is parsed as a YAML scalar or flow collection, so ``true``,
    ``3``, ``0.5``, ``null``, ``[128, 128]``, ``[]`` and ``{codec: gzip}``
    mean what they mean in the file; anything else is a string. List items
    are addressed with ``[i]``.

    Raises:
        ConfigError: no ``=``, or a malformed key path.

    Example:
        >>> parse_override("transform.size=[128, 128]")
        (('transform', 'size'), [128, 128])
        >>> parse_override("transform.augment[1].p=0.25")
        (('transform', 'augment', 1, 'p'), 0.25)
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {text}: expected key.path=value")
    parts: list[str | int] = []
    for segment in key.split("."):
        match = _SEGMENT.fullmatch(segment)
        if match is None:
            raise ConfigError(f"--set {text}: malformed key path {key!r}")
        parts.append(match.group(1))
        parts.extend(int(i) for i in re.findall(r"\[(\d+)\]", match.group(2)))
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text}: the value is not valid YAML: {exc}") from None
    return tuple(parts), value


def _check_key_path(parts: Sequence[str | int], text: str) -> None:
    model: type[BaseModel] | None = RunConfig
    shown = ""
    for i, part in enumerate(parts):
        if model is None:  # inside a list item: its keys depend on its op, validated later
            return
        if isinstance(part, int):
            raise ConfigError(f"--set {text}: {shown or 'the config'} is not a list")
        field = model.model_fields.get(part)
        if field is None:
            where = f"in '{shown}'" if shown else "at the top level"
            raise ConfigError(
                f"--set {text}: unknown key '{_loc_path(parts[: i + 1])}' "
                f"(allowed {where}: {', '.join(model.model_fields)})"
            )
        shown = _loc_path(parts[: i + 1])
        sub = _field_model(field.annotation)
        if sub is not None:
            model = sub
            continue
        rest = parts[i + 1 :]
        if not rest:
            return
        if get_origin(field.annotation) in (tuple, list) and isinstance(rest[0], int):
            model = None
            if len(rest) == 1:
                return
            continue
        raise ConfigError(f"--set {text}: '{shown}' is a value, it has no key {_show(rest[0])}")


def apply_overrides(
    data: Mapping[str, Any], overrides: Sequence[str], *, cwd: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """Return a copy of ``data`` with ``key.path=value`` overrides applied.

    Path values given on the command line that are relative resolve against
    ``cwd`` (default: the working directory), not the config file's folder.

    Raises:
        ConfigError: an override is malformed or names an unknown key path.
    """
    out: dict[str, Any] = copy.deepcopy(dict(data))
    defaults = default_config_dict()
    for text in overrides:
        parts, value = parse_override(text)
        _check_key_path(parts, text)
        if tuple(parts) in _PATH_KEYS and isinstance(value, str) and value.strip():
            path = Path(value).expanduser()
            if not path.is_absolute():
                value = str(Path(cwd if cwd is not None else os.getcwd()) / path)
        node: Any = out
        default: Any = defaults
        for depth, part in enumerate(parts[:-1]):
            default = _child(default, part)
            nxt = parts[depth + 1]
            if isinstance(node, dict):
                if part not in node or node[part] is None:
                    # a missing list (indexed into) starts from its default; a
                    # missing mapping starts empty, so its other keys keep their
                    # own defaults (e.g. the level of a new compression codec)
                    node[part] = copy.deepcopy(default) if isinstance(default, list) else {}
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and part < len(node):
                node = node[part]
            else:
                raise ConfigError(f"--set {text}: cannot set '{_loc_path(parts[: depth + 1])}'")
            if isinstance(nxt, int) and not (isinstance(node, list) and nxt < len(node)):
                size = len(node) if isinstance(node, list) else 0
                raise ConfigError(
                    f"--set {text}: index {nxt} out of range, "
                    f"'{_loc_path(parts[: depth + 1])}' has {size} items"
                )
            if isinstance(nxt, str) and not isinstance(node, dict):
                raise ConfigError(
                    f"--set {text}: '{_loc_path(parts[: depth + 1])}' is not a mapping"
                )
        last = parts[-1]
        if isinstance(node, dict):
            node[last] = value
        elif isinstance(node, list) and isinstance(last, int):
            node[last] = value
        else:  # pragma: no cover - excluded by the checks above
            raise ConfigError(f"--set {text}: cannot set '{_loc_path(parts)}'")
    return out


def _child(container: Any, key: str | int) -> Any:
    """``container[key]`` for a dict key or an in-range list index, else None."""
    if isinstance(container, dict):
        return container.get(key)
    if isinstance(container, list) and isinstance(key, int) and key < len(container):
        return container[key]
    return None


# --------------------------------------------------------------------------- loading


def load_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> RunConfig:
    r"""Load, override and validate a YAML run config.

    Args:
        path: the YAML file; relative paths inside resolve against its folder.
        overrides: ``key.path=value`` strings (the CLI's ``--set``), applied in
            order on top of the file; values are YAML (``[128,128]``, ``true``).

    Returns:
        The validated config.

    Raises:
        ConfigError: the file cannot be read or parsed, an override names an
            unknown key, or the result is invalid (all problems listed, each
            with its key path).

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "run.yaml").write_text("source: {path: imgs}\noutput: {path: out.zarr}\n")
        >>> cfg = load_config(d / "run.yaml", ["transform.size=[64, 32]", "transform.augment=[]"])
        >>> cfg.transform.size, cfg.transform.augment, cfg.source.path == d / "imgs"
        ((64, 32), (), True)
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {file}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"invalid config {file}: not valid YAML{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"invalid config {file}: expected a mapping of sections at the top level, "
            f"got {type(data).__name__}"
        )
    data = apply_overrides(data, overrides)
    return validate_config(data, base_dir=file.resolve().parent, source=str(file))


def default_config_dict() -> dict[str, Any]:
    """Return every key with its default (``None`` for the two required paths).

    Example:
        >>> d = default_config_dict()
        >>> d["output"]["shard_size"], d["source"]["path"], d["stats"]["method"]
        (256, None, 'exact')
    """
    return {
        "source": {"path": None, "labels": "folders"},
        "stats": StatsConfig().model_dump(mode="json"),
        "transform": TransformConfig().model_dump(mode="json"),
        "output": {
            "path": None,
            **OutputConfig.model_construct().model_dump(mode="json", exclude={"path"}),
        },
        "runtime": RuntimeConfig().model_dump(mode="json"),
    }


@dataclass(frozen=True)
class ConfigKey:
    """One row of the config reference: key path, default (YAML) and meaning."""

    key: str
    default: str
    description: str


def _yaml_value(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000)
    return text.strip().removesuffix("...").strip()


def config_reference() -> list[ConfigKey]:
    """Return the reference of every key: sections first, then each augment op's keys.

    Augment keys are listed as ``transform.augment[].<op>.<key>``.

    Example:
        >>> rows = {row.key: row for row in config_reference()}
        >>> rows["output.shard_size"].default, rows["source.path"].default
        ('256', '(required)')
    """
    defaults = default_config_dict()
    rows: list[ConfigKey] = []

    def walk(model: type[BaseModel], prefix: str, values: Any) -> None:
        for name, field in model.model_fields.items():
            key = f"{prefix}.{name}" if prefix else name
            sub = _field_model(field.annotation)
            value = values.get(name) if isinstance(values, dict) else None
            if sub is not None and name != "compression":
                walk(sub, key, value)
                continue
            if name == "augment":
                rows.append(ConfigKey(key, "(contract example, 5 steps)", field.description or ""))
                continue
            shown = "(required)" if value is None and field.is_required() else _yaml_value(value)
            rows.append(ConfigKey(key, shown, field.description or ""))
            if sub is not None:
                walk(sub, key, value)

    walk(RunConfig, "", defaults)
    for op, model in AUGMENT_OPS.items():
        for name, field in model.model_fields.items():
            if name == "op":
                continue
            default = (
                "(required)"
                if field.is_required()
                else _yaml_value(json.loads(json.dumps(field.default)))
            )
            rows.append(
                ConfigKey(f"transform.augment[].{op}.{name}", default, field.description or "")
            )
    return rows
