"""The Zarr v3 store: layout, shard writer with checksummed records, resume, lock, verify.

Layout (a Zarr v3 group on the local filesystem; ``N`` samples, ``S`` rows per
shard, ``M`` accepted source files)::

    images          (N, C, H, W)  float16 | float32 | uint8, chunk (1, C, H, W), shard (S, C, H, W)
    labels          (N,)          int64, chunk (S,)   -1 where the source has no classes
    source_index    (N,)          int64, chunk (S,)   row of ``paths`` each sample came from
    copy_index      (N,)          int32, chunk (S,)   which augmented copy of its source it is
    paths           (M,)          variable-length UTF-8, sorted, relative to the source root
    records/rows    (n_shards,)   int64, chunk (1,)   rows written by shard i
    records/sha256  (n_shards, 32) uint8, chunk (1, 32)  SHA-256 of shard i (see shard_digest)
    records/done    (n_shards,)   bool, chunk (1,)    True once shard i is completely written
    attribute ``imageprep``: format version, layout, resolved config, config identity,
                             stats JSON, classes, seed, package versions, source
                             fingerprint, failures, and what finalize() adds.

One shard task writes exactly one ``images`` shard, one chunk of each 1-D
array and one element (its own chunk) of each ``records/`` array: no two
writers ever touch the same object, and no task rewrites a shared document
(the group attribute is written only by :func:`create_store` and
:func:`finalize`, in the coordinating process). A shard is written in this
order: its ``done`` flag is cleared, the data is written, then ``rows`` and
``sha256``, then ``done``; a shard counts as written only once ``done`` is
True, so a process killed anywhere in between leaves the shard "not done" and a
resumed run writes it again. Zarr's local store writes every object to a
temporary file and renames it, so no object is ever half-written.

Resume (:func:`open_or_create`): an existing store with the same config
identity, source fingerprint and layout is reused and only its missing shards
need writing; anything else is a :class:`~pipeline.errors.StoreMismatchError`
naming what differs, unless ``overwrite=True``. :class:`StoreLock` makes a
second run against the same output fail fast.

Example:
    >>> import tempfile, numpy as np
    >>> path = tempfile.mkdtemp() + "/ds.zarr"
    >>> layout = StoreLayout(n_samples=5, channels=3, height=4, width=4, dtype="float16",
    ...                      shard_size=2)
    >>> layout.n_shards, list(layout.shard_rows(2))
    (3, [4])
    >>> attrs = {"config_identity": "abc", "source_fingerprint": "fp", "classes": ["a", "b"]}
    >>> create_store(path, layout, attrs=attrs, paths=["a/0.png", "b/1.png"])
    >>> rng = np.random.default_rng(0)
    >>> for i in range(layout.n_shards):
    ...     n = len(layout.shard_rows(i))
    ...     _ = write_shard(path, i, images=rng.random((n, 3, 4, 4)), labels=np.zeros(n, int),
    ...                     source_index=np.zeros(n, int), copy_index=np.zeros(n, int))
    >>> sorted(done_shards(path)), verify(path).ok
    ([0, 1, 2], True)
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import os
import platform
import shutil
import socket
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

from pipeline.config import CompressionConfig
from pipeline.errors import (
    InvalidArgumentError,
    StoreError,
    StoreLockedError,
    StoreMismatchError,
)

if TYPE_CHECKING:
    from pipeline.config import RunConfig

__all__ = [
    "ATTRIBUTE",
    "FORMAT_VERSION",
    "ShardProblem",
    "ShardRecord",
    "StoreLayout",
    "StoreLock",
    "StoreState",
    "VerifyReport",
    "create_store",
    "done_shards",
    "finalize",
    "open_group",
    "open_or_create",
    "read_attrs",
    "read_layout",
    "read_records",
    "shard_digest",
    "store_attrs",
    "verify",
    "write_shard",
]

#: Name of the group attribute that holds imageprep's metadata.
ATTRIBUTE = "imageprep"
#: Version of the store layout; a reader refuses versions it does not know.
FORMAT_VERSION = 1
_CREATING = "imageprep_creating"  # group attribute present only while create_store runs
DTYPES = ("float16", "float32", "uint8")
#: Keys of the ``imageprep`` attribute that finalize() may not change.
FROZEN_KEYS = frozenset(
    {"format_version", "layout", "config", "config_identity", "source_fingerprint"}
)
_PathLike = str | os.PathLike[str]


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class StoreLayout:
    """Shape, dtype, sharding and compression of a store.

    Attributes:
        n_samples: number of samples ``N`` (source images times copies), >= 0.
        channels: ``C``, >= 1.
        height: ``H``, >= 1.
        width: ``W``, >= 1.
        dtype: ``"float16"``, ``"float32"`` or ``"uint8"``.
        shard_size: rows per shard ``S``, >= 1; the last shard may be shorter.
        compression: the codec of every array.

    Example:
        >>> layout = StoreLayout(n_samples=10, channels=3, height=8, width=8, dtype="uint8",
        ...                      shard_size=4)
        >>> layout.n_shards, layout.shard_rows(2), layout.sample_shape
        (3, range(8, 10), (3, 8, 8))
    """

    n_samples: int
    channels: int
    height: int
    width: int
    dtype: str
    shard_size: int
    compression: CompressionConfig = field(
        default_factory=lambda: CompressionConfig(codec="zstd", level=3)
    )

    def __post_init__(self) -> None:
        for name, low in (
            ("n_samples", 0),
            ("channels", 1),
            ("height", 1),
            ("width", 1),
            ("shard_size", 1),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise InvalidArgumentError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.dtype not in DTYPES:
            raise InvalidArgumentError(
                f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}"
            )
        if not isinstance(self.compression, CompressionConfig):
            raise InvalidArgumentError(
                f"compression must be a CompressionConfig, got {type(self.compression).__name__}"
            )

    @classmethod
    def from_config(cls, config: RunConfig, *, n_samples: int, channels: int) -> StoreLayout:
        """Return the layout a run of ``config`` writes for ``n_samples`` samples."""
        height, width = config.transform.size
        return cls(
            n_samples=n_samples,
            channels=channels,
            height=height,
            width=width,
            dtype=config.output.dtype,
            shard_size=config.output.shard_size,
            compression=config.output.compression,
        )

    @property
    def n_shards(self) -> int:
        """Number of shards, ``ceil(N / S)``."""
        return -(-self.n_samples // self.shard_size)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        return (self.channels, self.height, self.width)

    def shard_rows(self, index: int) -> range:
        """Rows of shard ``index``: ``range(index * S, min((index + 1) * S, N))``.

        Raises:
            InvalidArgumentError: ``index`` is not in ``[0, n_shards)``.
        """
        if not isinstance(index, int | np.integer) or not 0 <= index < self.n_shards:
            raise InvalidArgumentError(
                f"index must be a shard index in [0, {self.n_shards}), got {index!r}"
            )
        start = int(index) * self.shard_size
        return range(start, min(start + self.shard_size, self.n_samples))

    def to_json(self) -> dict[str, Any]:
        """Return the layout as a JSON-safe dict (stored in the group attribute)."""
        return {
            "n_samples": self.n_samples,
            "channels": self.channels,
            "height": self.height,
            "width": self.width,
            "dtype": self.dtype,
            "shard_size": self.shard_size,
            "compression": self.compression.model_dump(mode="json"),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StoreLayout:
        """Inverse of :meth:`to_json`."""
        fields = dict(data)
        fields["compression"] = CompressionConfig.model_validate(fields.get("compression", {}))
        return cls(**fields)


def _compressors(compression: CompressionConfig) -> tuple[Any, ...] | None:
    level = compression.level
    if compression.codec == "zstd":
        return (ZstdCodec(level=level if level is not None else 3),)
    if compression.codec == "blosc":
        return (BloscCodec(cname="lz4", clevel=level if level is not None else 5),)
    if compression.codec == "gzip":
        return (GzipCodec(level=level if level is not None else 6),)
    return None


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class ShardRecord:
    """The record of one shard.

    Attributes:
        index: shard index.
        rows: rows written (0 when never written).
        sha256: hex digest of :func:`shard_digest` ("" when never written).
        done: True once the shard is completely written.
    """

    index: int
    rows: int
    sha256: str
    done: bool


@dataclass(frozen=True)
class StoreState:
    """What :func:`open_or_create` found or made.

    Attributes:
        path: the store.
        layout: its layout.
        resumed: True when an existing store of the same identity was reused.
        done: indices of the shards already written.
    """

    path: Path
    layout: StoreLayout
    resumed: bool
    done: frozenset[int]

    @property
    def todo(self) -> list[int]:
        """Indices of the shards still to write, in order."""
        return [i for i in range(self.layout.n_shards) if i not in self.done]


def shard_digest(
    images: np.ndarray, labels: np.ndarray, source_index: np.ndarray, copy_index: np.ndarray
) -> str:
    """Return the hex SHA-256 of one shard's decoded values.

    Canonical byte order: the bytes of ``images`` (C order, little-endian, in
    the store's dtype), then ``labels`` (int64 LE), ``source_index`` (int64
    LE) and ``copy_index`` (int32 LE). The arrays are hashed exactly as they
    are stored, so the digest can be recomputed from a read-back with any Zarr
    implementation.

    Example:
        >>> z = np.zeros(1, np.int64)
        >>> digest = shard_digest(np.zeros((1, 1, 1, 1), np.uint8), z, z, z.astype(np.int32))
        >>> digest == hashlib.sha256(bytes(1 + 8 + 8 + 4)).hexdigest()  # 1 uint8, 2 int64, 1 int32
        True
    """
    h = hashlib.sha256()
    # memoryviews of contiguous arrays: hashed in place, no copy of the shard
    h.update(np.ascontiguousarray(images, dtype=images.dtype.newbyteorder("<")).data)
    h.update(np.ascontiguousarray(labels, dtype="<i8").data)
    h.update(np.ascontiguousarray(source_index, dtype="<i8").data)
    h.update(np.ascontiguousarray(copy_index, dtype="<i4").data)
    return h.hexdigest()


# --------------------------------------------------------------------------- opening


def open_group(path: _PathLike, *, mode: str = "r") -> zarr.Group:
    """Open an imageprep store's root group.

    Args:
        path: the store folder.
        mode: ``"r"`` (read-only) or ``"r+"`` (read and write).

    Raises:
        StoreError: there is no complete imageprep store at ``path``, or its
            format version is unknown.
    """
    group = _open_zarr_group(path, mode=mode)
    meta = group.attrs.get(ATTRIBUTE)
    if not isinstance(meta, dict):
        if _CREATING in group.attrs:
            raise StoreError(f"{path}: the store was not completely created (interrupted run)")
        raise StoreError(f"{path}: not an imageprep store (no '{ATTRIBUTE}' group attribute)")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise StoreError(
            f"{path}: store format_version must be {FORMAT_VERSION}, got {version!r} "
            f"(written by another imageprep version)"
        )
    return group


def _open_zarr_group(path: _PathLike, *, mode: str) -> zarr.Group:
    if mode not in ("r", "r+"):
        raise InvalidArgumentError(f"mode must be 'r' or 'r+', got {mode!r}")
    if not Path(path).is_dir():
        raise StoreError(f"{path}: no such store (not a folder)")
    try:
        return zarr.open_group(str(path), mode=mode, zarr_format=3, use_consolidated=False)  # type: ignore[arg-type]
    except (FileNotFoundError, zarr.errors.BaseZarrError, ValueError) as exc:
        raise StoreError(f"{path}: not a Zarr v3 group ({exc})") from exc


def _group_of(store: _PathLike | zarr.Group, *, mode: str = "r") -> zarr.Group:
    if isinstance(store, zarr.Group):
        return store
    return open_group(store, mode=mode)


def _read(array: zarr.Array, selection: Any = slice(None)) -> np.ndarray:
    """Read ``array[selection]`` as a NumPy array."""
    return np.asarray(array[selection])


def _array(group: zarr.Group, name: str) -> zarr.Array:
    try:
        node = group[name]
    except KeyError as exc:
        raise StoreError(f"{group.store}: array '{name}' is missing") from exc
    if not isinstance(node, zarr.Array):
        raise StoreError(f"{group.store}: '{name}' must be an array, got a group")
    return node


def read_attrs(store: _PathLike | zarr.Group) -> dict[str, Any]:
    """Return the store's ``imageprep`` attribute (a copy).

    Raises:
        StoreError: not an imageprep store.
    """
    meta: dict[str, Any] = json.loads(json.dumps(_group_of(store).attrs[ATTRIBUTE]))
    return meta


def read_layout(store: _PathLike | zarr.Group) -> StoreLayout:
    """Return the store's layout, checked against the ``images`` array's metadata.

    Raises:
        StoreError: not an imageprep store, or the attribute and the arrays disagree.
    """
    group = _group_of(store)
    layout = StoreLayout.from_json(read_attrs(group)["layout"])
    images = _array(group, "images")
    expected = (layout.n_samples, *layout.sample_shape)
    if images.shape != expected or str(images.dtype) != layout.dtype:
        raise StoreError(
            f"{group.store}: images must have shape {expected} and dtype {layout.dtype} as its "
            f"layout says, got {images.shape} {images.dtype}"
        )
    return layout


# --------------------------------------------------------------------------- creation


def _package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("imageprep", "numpy", "zarr", "torch", "dask", "pydantic", "pillow", "prefect"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def store_attrs(
    config: RunConfig,
    *,
    stats: Mapping[str, Any],
    classes: Sequence[str],
    source_fingerprint: str,
    failures: Iterable[Mapping[str, str]] = (),
) -> dict[str, Any]:
    """Build the ``imageprep`` group attribute for a run of ``config``.

    Args:
        config: the validated run config.
        stats: the stats JSON (contract shape) the samples were normalized with.
        classes: class names; label ``i`` is ``classes[i]``.
        source_fingerprint: the scanned manifest's fingerprint.
        failures: rejected inputs known so far, ``{"path", "error"}`` dicts.

    Returns:
        A JSON-safe dict: ``config`` (resolved), ``config_identity``, ``stats``,
        ``classes``, ``seed``, ``versions``, ``source_fingerprint``, ``failures``.
    """
    return {
        "config": config.resolved_dict(),
        "config_identity": config.identity(),
        "stats": json.loads(json.dumps(dict(stats))),
        "classes": [str(c) for c in classes],
        "seed": config.runtime.seed,
        "versions": _package_versions(),
        "source_fingerprint": str(source_fingerprint),
        "failures": [dict(f) for f in failures],
    }


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def create_store(
    path: _PathLike,
    layout: StoreLayout,
    *,
    attrs: Mapping[str, Any],
    paths: Sequence[str],
    overwrite: bool = False,
) -> None:
    """Create an empty store: every array, the source manifest and the group attribute.

    The group attribute is written last, so an interrupted creation is
    recognisable (and :func:`open_or_create` simply redoes it).

    Args:
        path: the store folder (must not exist, or be empty, unless ``overwrite``).
        layout: shape, dtype, sharding, compression.
        attrs: the ``imageprep`` attribute (see :func:`store_attrs`), JSON-safe;
            ``format_version``, ``layout`` and ``created`` are added.
        paths: the manifest, every accepted source file relative to the source
            root, in sorted order.
        overwrite: delete an existing imageprep store at ``path`` first.

    Raises:
        StoreError: ``path`` holds something else, or a store and not ``overwrite``.
        InvalidArgumentError: ``attrs`` is not JSON-safe or uses reserved keys.
    """
    path = Path(path)
    _check_attrs(attrs)
    manifest = np.empty(len(paths), dtype=object)
    manifest[:] = list(paths)
    bad = next((p for p in manifest if not isinstance(p, str)), None)
    if bad is not None or isinstance(paths, str):
        raise InvalidArgumentError(f"paths must be a sequence of strings, got an item {bad!r}")
    if _occupied(path):
        if not overwrite:
            raise StoreError(f"{path}: a store already exists (pass overwrite=True to replace it)")
        _delete_store(path)
    group = zarr.create_group(
        str(path), zarr_format=3, overwrite=True, attributes={_CREATING: {"pid": os.getpid()}}
    )
    n, rows = layout.n_samples, layout.shard_size
    compressors = _compressors(layout.compression)
    group.create_array(
        "images",
        shape=(n, *layout.sample_shape),
        dtype=layout.dtype,
        chunks=(1, *layout.sample_shape),
        shards=(rows, *layout.sample_shape),
        compressors=compressors,
        fill_value=0,
        dimension_names=("sample", "channel", "y", "x"),
    )
    for name, dtype in (("labels", "int64"), ("source_index", "int64"), ("copy_index", "int32")):
        group.create_array(
            name,
            shape=(n,),
            dtype=dtype,
            chunks=(rows,),
            compressors=compressors,
            fill_value=-1 if name == "labels" else 0,
            dimension_names=("sample",),
        )
    arr = group.create_array(
        "paths",
        shape=(len(manifest),),
        dtype=str,
        chunks=(max(1, min(len(manifest), 65536)),),
        compressors=compressors,
        dimension_names=("file",),
    )
    if len(manifest):
        arr[:] = manifest
    records = group.create_group("records")
    n_shards = layout.n_shards
    records.create_array("rows", shape=(n_shards,), dtype="int64", chunks=(1,), fill_value=0)
    records.create_array(
        "sha256", shape=(n_shards, 32), dtype="uint8", chunks=(1, 32), fill_value=0
    )
    records.create_array("done", shape=(n_shards,), dtype="bool", chunks=(1,), fill_value=False)
    meta = {
        **json.loads(json.dumps(dict(attrs))),
        "format_version": FORMAT_VERSION,
        "layout": layout.to_json(),
        "created": _now(),
    }
    group.attrs.put({ATTRIBUTE: meta})


def _check_attrs(attrs: Mapping[str, Any]) -> None:
    if not isinstance(attrs, Mapping):
        raise InvalidArgumentError(f"attrs must be a mapping, got {type(attrs).__name__}")
    reserved = {"format_version", "layout", "created"} & set(attrs)
    if reserved:
        raise InvalidArgumentError(
            f"attrs must not set {', '.join(sorted(reserved))} (the store sets them)"
        )
    try:
        json.dumps(dict(attrs), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"attrs must be JSON-safe, got {exc}") from exc


def _occupied(path: Path) -> bool:
    if not path.exists():
        return False
    if not path.is_dir():
        raise StoreError(f"{path}: exists and is not a folder")
    return any(path.iterdir())


def _delete_store(path: Path) -> None:
    """Delete a store, refusing anything that is not one (overwrite must never eat a home)."""
    if not (path / "zarr.json").is_file():
        raise StoreError(f"{path}: is not a Zarr store; refusing to delete it")
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: unreadable zarr.json; refusing to delete it ({exc})") from exc
    attributes = meta.get("attributes") or {}
    if ATTRIBUTE not in attributes and _CREATING not in attributes:
        raise StoreError(
            f"{path}: is a Zarr store but not an imageprep store; refusing to delete it"
        )
    shutil.rmtree(path)


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    a, b = _flatten(dict(old)), _flatten(dict(new))
    lines = []
    for key in sorted(set(a) | set(b)):
        if a.get(key, "(absent)") != b.get(key, "(absent)"):
            before, after = json.dumps(a.get(key, "(absent)")), json.dumps(b.get(key, "(absent)"))
            lines.append(f"{key}: {before} -> {after}")
    return lines


def open_or_create(
    path: _PathLike,
    layout: StoreLayout,
    *,
    attrs: Mapping[str, Any],
    paths: Sequence[str],
    overwrite: bool = False,
) -> StoreState:
    """Open the store for a run, resuming it when it was made by the same run.

    An existing store is reused when its ``config_identity``,
    ``source_fingerprint`` and layout equal those given; its done shards are
    kept. A store left half-created by an interrupted run is re-created. A
    store of another identity, source or layout is an error naming what
    differs, unless ``overwrite`` (then it is deleted and re-created). Call it
    while holding :class:`StoreLock`.

    Args:
        path: the store folder.
        layout: the layout this run writes.
        attrs: the ``imageprep`` attribute; must contain ``config_identity``
            and ``source_fingerprint``.
        paths: the source manifest (written only when creating).
        overwrite: replace a mismatching store.

    Returns:
        The :class:`StoreState`: ``resumed`` and the shards already done.

    Raises:
        StoreMismatchError: the existing store was made by another config,
            source or layout, and not ``overwrite``.
        StoreError: ``path`` holds something that is not an imageprep store.
    """
    path = Path(path)
    for key in ("config_identity", "source_fingerprint"):
        if not isinstance(attrs.get(key), str):
            raise InvalidArgumentError(
                f"attrs must contain '{key}' (a string), got {attrs.get(key)!r}"
            )
    if not _occupied(path):
        create_store(path, layout, attrs=attrs, paths=paths)
        return StoreState(path, layout, resumed=False, done=frozenset())
    if not (path / "zarr.json").is_file():
        raise StoreError(
            f"{path}: is not a Zarr store but a folder with other files; refusing to use or "
            "delete it (choose another output.path)"
        )
    group = _open_zarr_group(path, mode="r")
    existing = group.attrs.get(ATTRIBUTE)
    if not isinstance(existing, dict):
        if _CREATING in group.attrs:  # an interrupted create_store: nothing of value in it
            create_store(path, layout, attrs=attrs, paths=paths, overwrite=True)
            return StoreState(path, layout, resumed=False, done=frozenset())
        raise StoreError(f"{path}: is a Zarr store but not an imageprep store; refusing to use it")
    problems = []
    if existing.get("format_version") != FORMAT_VERSION:
        problems.append(f"format_version: {existing.get('format_version')!r} -> {FORMAT_VERSION}")
    if existing.get("config_identity") != attrs["config_identity"]:
        changed = _differences(
            _identity_view(existing.get("config", {})), _identity_view(attrs.get("config", {}))
        )
        detail = f" ({'; '.join(changed)})" if changed else ""
        problems.append(
            f"config identity: {str(existing.get('config_identity'))[:12]} -> "
            f"{attrs['config_identity'][:12]}{detail}"
        )
    if existing.get("source_fingerprint") != attrs["source_fingerprint"]:
        problems.append(
            f"source fingerprint: {str(existing.get('source_fingerprint'))[:16]} -> "
            f"{attrs['source_fingerprint'][:16]} (the source files changed)"
        )
    if existing.get("layout") != layout.to_json():
        changed = _differences(existing.get("layout", {}), layout.to_json())
        problems.append(f"layout: {'; '.join(changed)}")
    if problems:
        if not overwrite:
            raise StoreMismatchError(
                f"{path}: the existing store was made by another run: {' | '.join(problems)}. "
                "Set output.overwrite: true (--set output.overwrite=true) to replace it, "
                "or choose another output.path"
            )
        create_store(path, layout, attrs=attrs, paths=paths, overwrite=True)
        return StoreState(path, layout, resumed=False, done=frozenset())
    return StoreState(path, layout, resumed=True, done=frozenset(done_shards(group)))


def _identity_view(config: Any) -> Any:
    from pipeline.config import NOT_IN_IDENTITY

    if not isinstance(config, dict):
        return {}
    view = json.loads(json.dumps(config))
    for section, key in NOT_IN_IDENTITY:
        if isinstance(view.get(section), dict):
            view[section].pop(key, None)
    return view


# --------------------------------------------------------------------------- writing


def _as_int_array(value: Any, name: str, rows: int, dtype: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.shape != (rows,):
        raise InvalidArgumentError(f"{name} must have shape ({rows},), got {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise InvalidArgumentError(f"{name} must have an integer dtype, got {arr.dtype}")
    info = np.iinfo(dtype)
    if rows and (arr.min() < info.min or arr.max() > info.max):
        raise InvalidArgumentError(
            f"{name} must fit in {dtype}, got values in [{arr.min()}, {arr.max()}]"
        )
    return np.ascontiguousarray(arr, dtype=dtype)


def write_shard(
    store: _PathLike | zarr.Group,
    index: int,
    *,
    images: np.ndarray,
    labels: np.ndarray,
    source_index: np.ndarray,
    copy_index: np.ndarray,
) -> ShardRecord:
    """Write shard ``index``: its rows of every array, then its record, ``done`` last.

    Rows ``layout.shard_rows(index)`` of ``images``, ``labels``,
    ``source_index`` and ``copy_index`` are written, the SHA-256 of the stored
    values (:func:`shard_digest`) and the row count go to ``records/``, and
    ``records/done[index]`` is set last. Writing a shard again (a retried task)
    first clears its ``done`` flag, so a record never vouches for data being
    replaced. Safe to call concurrently for different shards (threads or
    processes); never call it twice at once for the same shard.

    Args:
        store: the store folder or its open root group (``mode="r+"``).
        index: the shard index.
        images: ``(rows, C, H, W)``; float data is cast to the store's float
            dtype (round to nearest); a uint8 store takes uint8 only.
        labels: ``(rows,)`` integers, -1 for "no class".
        source_index: ``(rows,)`` integers, rows of ``paths``.
        copy_index: ``(rows,)`` integers that fit in int32.

    Returns:
        The shard's record.

    Raises:
        InvalidArgumentError: a shape, dtype or index is wrong.
        StoreError: ``store`` is not an imageprep store.
    """
    group = _group_of(store, mode="r+")
    layout = StoreLayout.from_json(read_attrs(group)["layout"])
    rows = layout.shard_rows(index)
    n = len(rows)
    imgs = np.asarray(images)
    if imgs.shape != (n, *layout.sample_shape):
        raise InvalidArgumentError(
            f"images must have shape {(n, *layout.sample_shape)} for shard {index}, "
            f"got {imgs.shape}"
        )
    if layout.dtype == "uint8":
        if imgs.dtype != np.uint8:
            raise InvalidArgumentError(f"images must be uint8 for a uint8 store, got {imgs.dtype}")
    elif imgs.dtype.kind != "f":
        raise InvalidArgumentError(
            f"images must be floating-point for a {layout.dtype} store, got {imgs.dtype}"
        )
    imgs = np.ascontiguousarray(imgs, dtype=layout.dtype)
    lab = _as_int_array(labels, "labels", n, "int64")
    src = _as_int_array(source_index, "source_index", n, "int64")
    cpy = _as_int_array(copy_index, "copy_index", n, "int32")
    digest = shard_digest(imgs, lab, src, cpy)

    done = _array(group, "records/done")
    sl = slice(rows.start, rows.stop)
    done[index] = False
    # every chunk is written, so zarr need not scan each one for "all fill value"
    _array(group, "images").with_config({"write_empty_chunks": True})[sl] = imgs
    _array(group, "labels")[sl] = lab
    _array(group, "source_index")[sl] = src
    _array(group, "copy_index")[sl] = cpy
    _array(group, "records/rows")[index] = n
    _array(group, "records/sha256")[index] = np.frombuffer(bytes.fromhex(digest), dtype=np.uint8)
    done[index] = True
    return ShardRecord(index=int(index), rows=n, sha256=digest, done=True)


def read_records(store: _PathLike | zarr.Group) -> list[ShardRecord]:
    """Return every shard's record, written or not, in index order."""
    group = _group_of(store)
    rows = _read(_array(group, "records/rows"))
    sha = _read(_array(group, "records/sha256"))
    done = _read(_array(group, "records/done"))
    out = []
    for i in range(len(rows)):
        n = int(rows[i])
        out.append(
            ShardRecord(
                index=i, rows=n, sha256=bytes(sha[i]).hex() if n else "", done=bool(done[i])
            )
        )
    return out


def done_shards(store: _PathLike | zarr.Group) -> set[int]:
    """Return the indices of the shards whose ``done`` flag is set."""
    group = _group_of(store)
    done = _read(_array(group, "records/done"))
    return {int(i) for i in np.flatnonzero(done)}


def finalize(store: _PathLike | zarr.Group, attrs_update: Mapping[str, Any]) -> dict[str, Any]:
    """Record the run's final metadata once every shard is written.

    Merges ``attrs_update`` (e.g. ``failures``, ``timings``) into the
    ``imageprep`` attribute and sets ``complete: true`` and ``finalized`` (UTC
    time). Called once, by the coordinating process.

    Returns:
        The new ``imageprep`` attribute.

    Raises:
        StoreError: some shards are not done (their indices are listed).
        InvalidArgumentError: ``attrs_update`` changes a key that defines the
            store (layout, config, identity, fingerprint, format version) or
            is not JSON-safe.
    """
    group = _group_of(store, mode="r+")
    layout = read_layout(group)
    missing = sorted(set(range(layout.n_shards)) - done_shards(group))
    if missing:
        raise StoreError(
            f"{group.store}: cannot finalize, {len(missing)} of {layout.n_shards} shards are "
            f"not written: {_ranges(missing)}"
        )
    frozen = FROZEN_KEYS & set(attrs_update)
    if frozen:
        raise InvalidArgumentError(f"attrs_update must not change {', '.join(sorted(frozen))}")
    try:
        update = json.loads(json.dumps(dict(attrs_update), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"attrs_update must be JSON-safe, got {exc}") from exc
    meta = {**read_attrs(group), **update, "complete": True, "finalized": _now()}
    group.attrs[ATTRIBUTE] = meta
    return meta


def _ranges(indices: Sequence[int], limit: int = 10) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2, 5, 7-8"`` (at most ``limit`` parts)."""
    parts: list[str] = []
    runs: list[list[int]] = []
    for i in indices:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    parts = [str(a) if a == b else f"{a}-{b}" for a, b in runs]
    if len(parts) > limit:
        return ", ".join(parts[:limit]) + f", ... ({len(parts) - limit} more)"
    return ", ".join(parts)


# --------------------------------------------------------------------------- verify


@dataclass(frozen=True)
class ShardProblem:
    """A shard whose stored values do not match its record, and why."""

    index: int
    reason: str


@dataclass(frozen=True)
class VerifyReport:
    """Result of :func:`verify`.

    Attributes:
        path: the store.
        n_shards: shards in the layout.
        verified: done shards whose stored values match their checksum.
        unfinished: shards with no ``done`` record (missing or interrupted).
        mismatched: done shards whose values differ from their record or
            cannot be read.
    """

    path: str
    n_shards: int
    verified: tuple[int, ...]
    unfinished: tuple[int, ...]
    mismatched: tuple[ShardProblem, ...]

    @property
    def ok(self) -> bool:
        """True when every shard is written and matches its checksum."""
        return not self.unfinished and not self.mismatched

    def summary(self) -> str:
        """One line per finding, first a count."""
        lines = [
            f"{self.path}: {len(self.verified)}/{self.n_shards} shards verified, "
            f"{len(self.unfinished)} unfinished, {len(self.mismatched)} mismatched"
        ]
        if self.unfinished:
            lines.append(f"  unfinished: {_ranges(self.unfinished)}")
        lines.extend(f"  shard {p.index}: {p.reason}" for p in self.mismatched)
        return "\n".join(lines)


def _check_shard(group: zarr.Group, layout: StoreLayout, record: ShardRecord) -> str | None:
    rows = layout.shard_rows(record.index)
    if record.rows != len(rows):
        return f"record says {record.rows} rows, the layout has {len(rows)}"
    sl = slice(rows.start, rows.stop)
    try:
        digest = shard_digest(
            _read(_array(group, "images"), sl),
            _read(_array(group, "labels"), sl),
            _read(_array(group, "source_index"), sl),
            _read(_array(group, "copy_index"), sl),
        )
    except Exception as exc:  # a corrupt chunk fails to decode: that is a finding, not a crash
        return f"cannot read: {type(exc).__name__}: {exc}"
    if digest != record.sha256:
        return f"sha256 {digest[:16]}... does not match the record {record.sha256[:16]}..."
    return None


def verify(store: _PathLike | zarr.Group, *, workers: int | None = None) -> VerifyReport:
    """Recompute every done shard's checksum from the stored arrays and compare.

    Args:
        store: the store folder or its open root group.
        workers: threads reading shards (default ``min(8, cpu count)``).

    Returns:
        The :class:`VerifyReport`; ``report.ok`` is True when every shard is
        done and matches.

    Raises:
        StoreError: not an imageprep store.
    """
    group = _group_of(store)
    layout = read_layout(group)
    records = read_records(group)
    unfinished = tuple(r.index for r in records if not r.done)
    done = [r for r in records if r.done]
    n_workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    if n_workers < 1:
        raise InvalidArgumentError(f"workers must be >= 1, got {n_workers}")
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        results = list(pool.map(lambda r: _check_shard(group, layout, r), done))
    pairs = list(zip(done, results, strict=True))
    mismatched = tuple(ShardProblem(r.index, why) for r, why in pairs if why)
    verified = tuple(r.index for r, why in pairs if why is None)
    return VerifyReport(
        str(store if not isinstance(store, zarr.Group) else store.store),
        layout.n_shards,
        verified,
        unfinished,
        mismatched,
    )


# --------------------------------------------------------------------------- lock


class StoreLock:
    """An exclusive, non-blocking lock on an output store, held by one process.

    The lock is ``fcntl.flock`` on the file ``<store>.lock`` next to the store
    (outside it, so that deleting and re-creating the store keeps it). The
    kernel drops the lock when the holder's file descriptor closes, which
    includes the process dying (even from SIGKILL): a crashed run never leaves
    a stale lock. The file holds the holder's pid, host and start time for the
    error message; it is left in place on release (removing it would race with
    the next holder). flock is per open file, so a second lock object in the
    same process is refused too. On network filesystems flock may be local to
    one client: run one coordinator per store.

    Example:
        >>> import tempfile
        >>> path = tempfile.mkdtemp() + "/ds.zarr"
        >>> with StoreLock(path) as lock:
        ...     try:
        ...         StoreLock(path).acquire()
        ...     except StoreLockedError as exc:
        ...         print("refused")
        refused
    """

    def __init__(self, path: _PathLike) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> StoreLock:
        """Take the lock or fail at once.

        Raises:
            StoreLockedError: another process (or lock object) holds it; the
                message names the holder's pid and host and the store.
        """
        if self._fd is not None:
            raise StoreError(f"{self.path}: this StoreLock is already held")
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self.holder()
            who = (
                f"pid {holder.get('pid')} on host {holder.get('host')} since {holder.get('since')}"
                if holder
                else "another process"
            )
            raise StoreLockedError(
                f"{self.path}: the output store is in use by {who} "
                f"(lock file {self.lock_path}); wait for that run to finish"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": _now()})
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Release the lock (a no-op when not held)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def holder(self) -> dict[str, Any]:
        """Return what the lock file says about its holder (``{}`` when unknown)."""
        try:
            data = json.loads(self.lock_path.read_text() or "{}")
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:  # pragma: no cover
                pass
