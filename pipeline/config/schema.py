"""The run config's sections and :class:`RunConfig`, with its identity.

See :mod:`pipeline.config` for the rules (paths, ranges, cross-checks).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator, model_validator

from pipeline.config._values import (
    Bool,
    Int,
    LocationValue,
    Model,
    PathValue,
    PositiveInt,
    Size,
    check_storage_options,
    resolve_location_value,
    resolve_path,
    show,
)
from pipeline.config.steps import (
    AugmentStep,
)
from pipeline.errors import ConfigError, InvalidArgumentError
from pipeline.store.codecs import Compression
from pipeline.store.create import differences

if TYPE_CHECKING:
    from pipeline.storage import Location

__all__ = [
    "IDENTITY_VERSION",
    "NOT_IN_IDENTITY",
    "PATH_KEYS",
    "STORAGE_OPTION_KEYS",
    "CompressionConfig",
    "OutputConfig",
    "RunConfig",
    "RuntimeConfig",
    "SourceConfig",
    "StatsConfig",
    "TransformConfig",
    "config_differences",
]


def _normalize_mode(value: Any) -> Any:
    if value is True:
        return "dataset"
    if value is False:
        return "none"
    return value


#: ``transform.normalize``: a mode, or ``true``/``false`` for ``dataset``/``none``.
Normalize = Annotated[Literal["dataset", "per-image", "none"], BeforeValidator(_normalize_mode)]

#: Version of the identity hash's input; bump it when the meaning of a key changes.
IDENTITY_VERSION = "imageprep-config/2"

#: Keys left out of :meth:`RunConfig.identity`: they do not determine the stored bytes.
NOT_IN_IDENTITY: tuple[tuple[str, str], ...] = (
    ("source", "path"),  # where the source is; its content enters through the source fingerprint
    ("output", "path"),  # where the store is; moving a store does not change it
    ("output", "overwrite"),  # what to do with an existing store, not what to write
    ("runtime", "workers"),  # results are bit-identical whatever the worker count
    ("runtime", "dask_address"),  # ... and whatever the cluster
    ("stats", "update"),  # what a rerun over a changed source does, not what a run writes
    ("source", "storage_options"),  # how to reach the source (endpoint, credentials)
    ("output", "storage_options"),  # how to reach the store
)

#: The keys that hold fsspec storage options (redacted in what a store records).
STORAGE_OPTION_KEYS: tuple[tuple[str, str], ...] = (
    ("source", "storage_options"),
    ("output", "storage_options"),
)

#: The keys that hold paths (relative ones resolve against the config file's folder);
#: ``source.path`` and ``output.path`` may also be URLs.
PATH_KEYS: tuple[tuple[str, str], ...] = (("source", "path"), ("stats", "file"), ("output", "path"))

# --------------------------------------------------------------------------- sections


_STORAGE_OPTIONS_HELP = (
    "fsspec options when path is a URL (s3://, gs://, az://, memory://): endpoint_url, key, "
    "secret, anon, ...; {}: the environment's credentials. Credentials are not recorded."
)


class _Located(Model):
    """A section with a ``path`` (folder or URL) and its ``storage_options``.

    The two validators and :attr:`location` of :class:`SourceConfig` and
    :class:`OutputConfig`; ``_key`` names the path's key in messages.
    """

    _key: ClassVar[str]

    @field_validator("path", check_fields=False)
    @classmethod
    def _resolve(cls, value: Path | str, info: ValidationInfo) -> Path | str:
        return resolve_location_value(value, info, key=cls._key)

    @field_validator("storage_options", check_fields=False)
    @classmethod
    def _check_options(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        return check_storage_options(value, info)

    @property
    def location(self) -> Location:
        """Where this section points, as :mod:`pipeline.storage` opens it (path and options)."""
        from pipeline.storage import resolve_location

        path: Path | str = getattr(self, "path")  # noqa: B009 (declared by each subclass)
        options: dict[str, Any] = getattr(self, "storage_options")  # noqa: B009
        return resolve_location(path, key=self._key, storage_options=options)


class SourceConfig(_Located):
    """Where the images come from and how they are labelled.

    ``path`` is a local folder (a ``Path``: absolute, symbolic links resolved)
    or an object-store URL (a ``str``, canonical: ``s3://bucket/prefix``);
    :attr:`location` is what the pipeline opens.
    """

    _key: ClassVar[str] = "source.path"

    path: LocationValue = Field(description="Folder of images, scanned recursively. Required.")
    labels: Literal["folders", "none"] = Field(
        default="folders",
        description="folders: the first-level subfolder is the class; none: every label is -1.",
    )
    storage_options: dict[str, Any] = Field(default_factory=dict, description=_STORAGE_OPTIONS_HELP)


class StatsConfig(Model):
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
    update: Literal["freeze", "refresh"] = Field(
        default="freeze",
        description="On a changed source: freeze (keep normalizing with the store's stats) "
        "| refresh (renormalize every live row with the current stats).",
    )

    @field_validator("file")
    @classmethod
    def _check_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        path = resolve_path(value, info)
        try:
            exists = path.is_file()
        except OSError as exc:  # e.g. a name longer than the filesystem allows
            raise ValueError(f"cannot use {str(path)[:200]!r}: {exc.strerror or exc}") from None
        if not exists:
            raise ValueError(f"no such file: {path}")
        return path


class TransformConfig(Model):
    """What every sample goes through between decoding and the store."""

    size: Size = Field(default=(224, 224), description="[H, W] of every sample, positive integers.")
    resize: Literal["shorter-side-crop", "stretch", "pad"] = Field(
        default="shorter-side-crop",
        description="shorter-side-crop (scale shorter side, center crop) | stretch | pad.",
    )
    normalize: Normalize = Field(
        default="dataset",
        description="dataset: (x - mean) / std with the dataset stats | per-image: each image "
        "standardized on its own (TF's per_image_standardization) | none; true/false = "
        "dataset/none.",
    )
    copies: PositiveInt = Field(
        default=1, description="Independently augmented samples per source image (>= 1)."
    )
    augment: tuple[AugmentStep, ...] = Field(
        default=(),
        description="Augmentation steps, applied in order after the resize (default: none).",
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


class CompressionConfig(Model):
    """The compressor of every array in the store (:class:`pipeline.store.Compression`).

    ``blosc`` (the default) is Blosc with LZ4 after a shuffle filter
    (``bit`` by default); ``zstd`` and ``gzip`` are the plain codecs; ``none``
    stores raw bytes. ``level`` defaults per codec (zstd 3, blosc 5, gzip 6).
    The rules are the store's own (``Compression.check_level``, ``check_shuffle``).
    """

    codec: Literal["zstd", "blosc", "gzip", "none"] = Field(
        default="blosc", description="blosc (LZ4 after a shuffle) | zstd | gzip | none."
    )
    level: Int | None = Field(
        default=None,
        validate_default=True,
        description="zstd 1..22 (default 3), blosc 0..9 (5), gzip 0..9 (6); none takes no level.",
    )
    shuffle: Literal["bit", "byte", "none"] | None = Field(
        default=None,
        validate_default=True,
        description="blosc's filter: bit (default) | byte | none; other codecs take none.",
    )

    @field_validator("level")
    @classmethod
    def _check_level(cls, level: int | None, info: ValidationInfo) -> int | None:
        codec = info.data.get("codec")
        if codec is None:  # the codec itself is invalid: reported on its own
            return level
        try:
            return Compression.check_level(codec, level)
        except InvalidArgumentError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("shuffle")
    @classmethod
    def _check_shuffle(cls, shuffle: str | None, info: ValidationInfo) -> str | None:
        codec = info.data.get("codec")
        if codec is None:
            return shuffle
        try:
            return Compression.check_shuffle(codec, shuffle)
        except InvalidArgumentError as exc:
            raise ValueError(str(exc)) from None

    def compression(self) -> Compression:
        """The storage layer's :class:`~pipeline.store.Compression` of this section."""
        return Compression(self.codec, self.level, self.shuffle)


class OutputConfig(_Located):
    """The Zarr store written by the run (``path`` as in :class:`SourceConfig`)."""

    _key: ClassVar[str] = "output.path"

    path: LocationValue = Field(description="The Zarr v3 store (a folder). Required.")
    storage_options: dict[str, Any] = Field(default_factory=dict, description=_STORAGE_OPTIONS_HELP)
    dtype: Literal["float16", "float32", "uint8"] = Field(
        default="float16",
        description="float16 | float32 | uint8 (uint8 stores un-normalized pixels).",
    )
    shard_size: PositiveInt = Field(
        default=256, description="Samples per shard; one shard is written by one task."
    )
    compression: CompressionConfig = Field(
        default_factory=lambda: CompressionConfig(codec="blosc", level=5, shuffle="bit"),
        description="Compressor: {codec, level, shuffle}.",
    )
    overwrite: Bool = Field(
        default=False, description="Replace an existing store made with another config or source."
    )


_DEVICE = re.compile(r"auto|cpu|cuda|cuda:\d+")
_ADDRESS = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s/]+")


class RuntimeConfig(Model):
    """How the run executes; only ``seed``, ``device`` and ``batch_size`` can change bytes."""

    seed: Int = Field(
        default=0, ge=0, lt=2**63, description="Sample i, copy k always gets the same randomness."
    )
    device: str = Field(default="auto", description="auto | cpu | cuda | cuda:N.")
    workers: PositiveInt | None = Field(
        default=None, description="Local worker threads (null: all cores)."
    )
    batch_size: PositiveInt = Field(
        default=64,
        description="Images per kernel call on a GPU (on the CPU each sample is finished alone).",
    )
    dask_address: str | None = Field(
        default=None, description="scheme://host:port of an existing Dask scheduler (null: local)."
    )

    @field_validator("device")
    @classmethod
    def _check_device(cls, device: str) -> str:
        if not _DEVICE.fullmatch(device):
            raise ValueError(f"expected auto, cpu, cuda or cuda:N, got {show(device)}")
        return device

    @field_validator("dask_address")
    @classmethod
    def _check_address(cls, address: str | None) -> str | None:
        if address is not None and not _ADDRESS.fullmatch(address):
            raise ValueError(
                f"expected scheme://host:port (e.g. tcp://host:8786), got {show(address)}"
            )
        return address


class RunConfig(Model):
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
        if self.output.dtype == "uint8" and self.transform.normalize != "none":
            raise ValueError(
                "output.dtype: uint8 stores un-normalized pixels; set transform.normalize: false "
                "(none), or use float16/float32; got dtype uint8 with normalize "
                f"{self.transform.normalize}"
            )
        return self

    def resolved_dict(self) -> dict[str, Any]:
        """Return every key with its value, JSON-safe (paths as absolute strings).

        ``RunConfig.model_validate(cfg.resolved_dict()) == cfg``. It holds the
        storage options as given, credentials included: what a store records
        is :meth:`recorded_dict`.
        """
        return self.model_dump(mode="json")

    def recorded_dict(self) -> dict[str, Any]:
        """:meth:`resolved_dict` with secrets of the storage options redacted: what a store records.

        Every value of ``source.storage_options`` and ``output.storage_options``
        that may be a credential is replaced by ``"<redacted>"``
        (:func:`pipeline.storage.redact_options`); the keys stay. The storage
        options are not part of the identity, so a recorded config and the
        config it came from have the same identity.

        Example:
            >>> cfg = RunConfig.model_validate({
            ...     "source": {"path": "s3://bucket/images",
            ...                "storage_options": {"key": "AKIA", "secret": "x", "anon": False}},
            ...     "output": {"path": "/out/ds.zarr"}})
            >>> cfg.recorded_dict()["source"]["storage_options"]
            {'key': '<redacted>', 'secret': '<redacted>', 'anon': False}
            >>> cfg.resolved_dict()["source"]["storage_options"]["secret"]
            'x'
        """
        from pipeline.storage import redact_options

        data = self.resolved_dict()
        for section, key in STORAGE_OPTION_KEYS:
            data[section][key] = redact_options(data[section][key])
        return data

    def identity(self) -> str:
        """Return a hex SHA-256 of everything in the config that determines the stored bytes.

        Two configs with the same identity write the same samples from the same
        source, so a store can be resumed only by a run of the same identity
        (and the same source fingerprint, compared separately). Left out:
        ``source.path`` and ``output.path`` (locations: the source's content
        enters through its fingerprint, and a store may be moved), their
        ``storage_options`` (how to reach them),
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


def config_differences(stored: Any, config: RunConfig) -> list[str]:
    """``key: before -> after`` for each identity key where a stored config and ``config`` differ.

    Example:
        >>> from pipeline.config import validate_config
        >>> a = validate_config({"source": {"path": "/s"}, "output": {"path": "/o"}})
        >>> b = validate_config({"source": {"path": "/t"}, "output": {"path": "/o"},
        ...                      "transform": {"size": [64, 64]}})
        >>> config_differences(a.resolved_dict(), b)
        ['transform.size: [224, 224] -> [64, 64]']
    """
    return differences(_identity_view(stored), _identity_view(config.resolved_dict()))


def _identity_view(config: Any) -> Any:
    """A stored resolved config without the keys outside the identity."""
    if not isinstance(config, dict):
        return {}
    view = json.loads(json.dumps(config))
    for section, key in NOT_IN_IDENTITY:
        if isinstance(view.get(section), dict):
            view[section].pop(key, None)
    return view
