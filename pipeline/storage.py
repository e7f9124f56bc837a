"""Where sources and stores live: local folders and fsspec URLs, in one place.

This is the only module that knows about URLs. Everything else receives a
:class:`Location` and asks it (or the functions here) for a filesystem, a Zarr
store, a listing, a file, or a lock.

Locations (:func:`resolve_location`):

- A **plain path** is a local folder: ``~`` is expanded, a relative path is
  resolved against ``base_dir`` (the config file's folder, or the working
  directory), and symbolic links are resolved (``os.path.realpath``), so one
  folder has one canonical location whatever path led to it: a lock taken
  through a symlinked path is the same lock. ``file://`` URLs are plain paths.
- ``memory://`` (fsspec's in-process filesystem, for tests), ``s3://`` (and
  ``s3a://``; package s3fs), ``gs://``/``gcs://`` (gcsfs), ``az://``/``abfs://``
  (adlfs) are **object-store URLs**, opened with fsspec and the location's
  ``storage_options`` (``endpoint_url``, ``key``, ``secret``, ``anon``, ...;
  the usual environment credentials apply when none are given).
- Anything else is a :class:`~pipeline.errors.ConfigError` naming the config
  key: a scheme fsspec does not know, one it knows but that imageprep does not
  support (``http``, ``zip``, chained ``a::b`` URLs), one whose package is not
  installed, and a URL that lost a slash (``s3:/bucket``, which is what
  ``pathlib.Path("s3://bucket")`` makes of it). A URL is never taken for a
  local folder with a URL-shaped name.

Stores (:func:`zarr_store`): zarr's ``LocalStore`` for local folders (the same
store, and speed, as opening a path), zarr's ``FsspecStore`` for URLs (an
asynchronous filesystem: s3fs natively, a synchronous one such as
``memory://`` through fsspec's ``AsyncFileSystemWrapper``).

Sources (:func:`list_files`, :func:`open_file`): a recursive listing with
sizes, modification times and object versions (ETags), and one file's bytes
in a seekable binary file object that Pillow can decode. The scan of a local
source stays :func:`pipeline.sources.scan` (its symlink rules and rejections);
:func:`list_files` is what a scan of an object store lists.

Locks (:class:`ObjectStoreLock`): object stores have no ``flock``; the lock
is an object ``<store>.lock`` next to the store holding the holder and a lease
that a heartbeat thread renews. What it guarantees depends on the store; see
the class.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import io
import json
import logging
import os
import re
import socket
import stat
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

from pipeline.errors import ConfigError, InvalidArgumentError, StoreError, StoreLockedError

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem
    from zarr.abc.store import Store

__all__ = [
    "REDACTED",
    "SUPPORTED_SCHEMES",
    "FileEntry",
    "Location",
    "ObjectStoreLock",
    "is_url",
    "list_files",
    "open_file",
    "redact_options",
    "resolve_location",
    "zarr_store",
]

log = logging.getLogger(__name__)

SUPPORTED_SCHEMES: Mapping[str, str] = {
    "file": "file",
    "local": "file",
    "memory": "memory",
    "s3": "s3",
    "s3a": "s3",
    "gs": "gs",
    "gcs": "gs",
    "az": "az",
    "abfs": "az",
    "abfss": "az",
}
"""URL schemes imageprep accepts, mapped to the canonical scheme of their locations."""

_FSSPEC_PROTOCOL = {"file": "file", "memory": "memory", "s3": "s3", "gs": "gs", "az": "abfs"}
"""Canonical scheme -> the fsspec protocol that implements it."""

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://(.*)$", re.DOTALL)
_ONE_SLASH = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):/(?!/)")


# --------------------------------------------------------------------------- locations


@dataclass(frozen=True)
class Location:
    """A parsed source or output location: a local folder or an object-store URL.

    Build it with :func:`resolve_location`. It pickles without its filesystem
    (which is created again, lazily, where it is unpickled), so it can be sent
    to Dask workers.

    Attributes:
        url: the canonical location: an absolute path with symlinks resolved
            for a local folder (``/data/ds.zarr``), else ``scheme://bucket/key``
            (``s3://bucket/ds.zarr``, ``memory://tmp/ds.zarr``), no trailing
            ``/``. Equal locations have equal ``url`` and options.
        protocol: the canonical scheme: ``file``, ``memory``, ``s3``, ``gs``,
            ``az``.
        path: the path within the filesystem, as fsspec spells it (``/data/x``
            for a local folder, ``bucket/key`` for S3, ``/tmp/x`` in memory).
        storage_options: fsspec options for the filesystem (empty for a local
            folder).

    Example:
        >>> loc = resolve_location("memory://bucket/ds.zarr", key="output.path")
        >>> loc.url, loc.protocol, loc.path, loc.is_local
        ('memory://bucket/ds.zarr', 'memory', '/bucket/ds.zarr', False)
        >>> loc.joinpath("a/b.png").url
        'memory://bucket/ds.zarr/a/b.png'
    """

    url: str
    protocol: str
    path: str
    storage_options: dict[str, Any] = field(default_factory=dict, hash=False, repr=False)

    @property
    def is_local(self) -> bool:
        """True for a folder on a local (or mounted) filesystem."""
        return self.protocol == "file"

    @property
    def name(self) -> str:
        """The last component of the path (``ds.zarr``)."""
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @functools.cached_property
    def fs(self) -> AbstractFileSystem:
        """The fsspec filesystem (synchronous API), created on first use.

        Raises:
            ConfigError: the scheme's package is not installed.
        """
        return _filesystem(self.protocol, self.storage_options, url=self.url)

    def joinpath(self, relpath: str) -> Location:
        """Return the location of ``relpath`` (``/``-separated) inside this one.

        Raises:
            InvalidArgumentError: ``relpath`` is absolute, empty or has ``..``.
        """
        parts = _check_relpath(relpath)
        if self.is_local:
            child = os.path.join(self.path, *parts)
            return Location(child, "file", child)
        return self._replace_path(self.path.rstrip("/") + "/" + "/".join(parts))

    def sibling(self, name: str) -> Location:
        """Return the location of ``name`` in the same folder (``ds.zarr.lock``).

        Raises:
            InvalidArgumentError: ``name`` is not a plain name.
            StoreError: this location is a bucket (it has no folder).
        """
        _check_relpath(name, single=True)
        if self.is_local:
            other = os.path.join(os.path.dirname(self.path), name)
            return Location(other, "file", other)
        head, sep, _ = self.path.rstrip("/").rpartition("/")
        if not sep or not head.strip("/"):
            raise StoreError(f"{self.url}: a bucket has no folder to put {name!r} beside it")
        return self._replace_path(head + "/" + name)

    def _replace_path(self, path: str) -> Location:
        return Location(
            f"{self.protocol}://{path.lstrip('/')}", self.protocol, path, self.storage_options
        )

    def __str__(self) -> str:
        return self.url

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("fs", None)  # the filesystem is created again where it is needed
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


def _check_relpath(relpath: str, *, single: bool = False) -> list[str]:
    parts = relpath.split("/") if isinstance(relpath, str) else []
    bad = (
        not parts
        or relpath.startswith("/")
        or any(p in ("", ".", "..") for p in parts)
        or (single and len(parts) != 1)
    )
    if bad:
        what = "a plain file name" if single else "a relative '/'-separated path without '..'"
        raise InvalidArgumentError(f"relpath must be {what}, got {relpath!r}")
    return parts


def resolve_location(
    value: str | os.PathLike[str] | Location,
    *,
    key: str,
    storage_options: Mapping[str, Any] | None = None,
    base_dir: str | os.PathLike[str] | None = None,
) -> Location:
    """Parse a path or URL from the config into a canonical :class:`Location`.

    Args:
        value: a plain path (absolute, relative, ``~``), a ``file://`` URL, or an
            object-store URL (``s3://bucket/key``, ``gs://``, ``az://``,
            ``abfs://``, ``memory://``). A :class:`Location` is returned as is.
        key: the config key the value came from (``output.path``); every
            error message starts with it.
        storage_options: fsspec options for a URL (``endpoint_url``, ``key``,
            ``secret``, ``client_kwargs``, ...); ignored for a local folder.
        base_dir: the folder a relative path is resolved against (the config
            file's folder); default the working directory.

    Returns:
        The location; its filesystem is not created yet.

    Raises:
        ConfigError: the scheme is unknown, unsupported or its package is not
            installed, the URL has no bucket or lost a slash, or the value is
            empty. The message names ``key``.

    Example:
        >>> resolve_location("s3://bucket/ds.zarr/", key="output.path").url
        's3://bucket/ds.zarr'
        >>> resolve_location("ftp://host/x", key="source.path")
        Traceback (most recent call last):
        ...
        pipeline.errors.ConfigError: source.path: URL scheme 'ftp' is not supported ...
    """
    if isinstance(value, Location):
        return value
    text = os.fspath(value) if isinstance(value, os.PathLike) else value
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{key}: expected a non-empty path or URL, got {value!r}")
    if "::" in text:
        raise ConfigError(
            f"{key}: chained fsspec URLs are not supported, got {text!r} "
            f"(use one of {_scheme_list()})"
        )
    m = _URL.match(text)
    if m is None:
        one = _ONE_SLASH.match(text)
        if one is not None and one.group(1).lower() in SUPPORTED_SCHEMES:
            fixed = f"{one.group(1)}://{text[one.end() :]}"
            raise ConfigError(
                f"{key}: {text!r} looks like a URL that lost a slash; write {fixed!r}"
            )
        return _local(text, base_dir)
    scheme, rest = m.group(1).lower(), m.group(2)
    canonical = SUPPORTED_SCHEMES.get(scheme)
    if canonical is None:
        from fsspec.registry import known_implementations, registry

        known = scheme in known_implementations or scheme in registry
        what = "is not supported" if known else "is unknown"
        raise ConfigError(f"{key}: URL scheme {scheme!r} {what} (use one of {_scheme_list()})")
    if canonical == "file":
        return _local(rest, base_dir)
    cls = _filesystem_class(canonical, key=key, scheme=scheme)
    path = cls._strip_protocol(f"{_FSSPEC_PROTOCOL[canonical]}://{rest}")
    path = path.rstrip("/") if canonical != "memory" else "/" + path.strip("/")
    if not path.strip("/"):
        raise ConfigError(f"{key}: {text!r} names no bucket or folder")
    options = dict(storage_options or {})
    return Location(f"{canonical}://{path.lstrip('/')}", canonical, path, options)


def is_url(value: object) -> bool:
    """True when ``value`` is a string that :func:`resolve_location` reads as a URL.

    That is ``scheme://...``, a chained ``a::b`` URL, or a supported scheme
    that lost a slash (``s3:/bucket``): anything that must not be taken for a
    relative local path (the command line's ``--set output.path=...`` resolves
    relative paths against the working directory, but leaves these alone).

    Example:
        >>> is_url("s3://b/ds.zarr"), is_url("s3:/b/ds.zarr"), is_url("ftp://h/x")
        (True, True, True)
        >>> is_url("data/images"), is_url("/abs/path"), is_url("C:/x")
        (False, False, False)
    """
    if not isinstance(value, str):
        return False
    if "::" in value or _URL.match(value) is not None:
        return True
    one = _ONE_SLASH.match(value)
    return one is not None and one.group(1).lower() in SUPPORTED_SCHEMES


REDACTED = "<redacted>"
"""What :func:`redact_options` writes in place of a value that may be a secret."""

_PUBLIC_OPTIONS = frozenset(
    {
        # s3fs / botocore
        "endpoint_url",
        "region_name",
        "anon",
        "requester_pays",
        "use_ssl",
        "max_concurrency",
        "version_aware",
        "default_block_size",
        "default_fill_cache",
        "default_cache_type",
        "cache_regions",
        "addressing_style",
        "signature_version",
        "connect_timeout",
        "read_timeout",
        "retries",
        "max_attempts",
        "mode",
        "client_kwargs",
        "config_kwargs",
        "s3",
        "profile",
        # gcsfs
        "project",
        "access",
        "consistency",
        "requests_timeout",
        # adlfs
        "account_name",
        "blocksize",
        # fsspec
        "skip_instance_cache",
        "use_listings_cache",
        "listings_expiry_time",
        "asynchronous",
    }
)


def redact_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Return storage options with every value that may be a secret replaced by ``<redacted>``.

    What a store records of its config (and what messages show) must never
    hold credentials. An allow-list decides: the values of keys known to be
    harmless (``endpoint_url``, ``region_name``, ``anon``, ``profile``,
    timeouts, ...) are kept, nested mappings (``client_kwargs``,
    ``config_kwargs``) are walked, and every other value (``key``, ``secret``,
    ``token``, ``password``, ``sas_token``, ``connection_string``, and any key
    not on the list) is replaced. The keys themselves are kept, so the record
    still says which options were set.

    Example:
        >>> redact_options({"endpoint_url": "http://minio:9000", "key": "AKIA", "secret": "s",
        ...                 "client_kwargs": {"region_name": "eu", "aws_session_token": "t"}})
        ... # doctest: +NORMALIZE_WHITESPACE
        {'endpoint_url': 'http://minio:9000', 'key': '<redacted>', 'secret': '<redacted>',
         'client_kwargs': {'region_name': 'eu', 'aws_session_token': '<redacted>'}}
    """
    out: dict[str, Any] = {}
    for name, value in options.items():
        if isinstance(value, Mapping):
            out[name] = redact_options(value)
        elif str(name) in _PUBLIC_OPTIONS:
            out[name] = value
        else:
            out[name] = REDACTED
    return out


def _scheme_list() -> str:
    return "a plain path or " + ", ".join(f"{s}://" for s in SUPPORTED_SCHEMES)


def _local(text: str, base_dir: str | os.PathLike[str] | None) -> Location:
    path = os.path.expanduser(text)
    if not os.path.isabs(path):
        path = os.path.join(os.fspath(base_dir) if base_dir is not None else os.getcwd(), path)
    real = os.path.realpath(path)
    return Location(real, "file", real)


def _filesystem_class(canonical: str, *, key: str, scheme: str) -> type[AbstractFileSystem]:
    """Return the fsspec class of a canonical scheme, or a ConfigError naming its package."""
    import fsspec
    from fsspec.registry import known_implementations

    protocol = _FSSPEC_PROTOCOL[canonical]
    try:
        return fsspec.get_filesystem_class(protocol)
    except (ImportError, ValueError) as exc:
        spec = known_implementations.get(protocol, {})
        package = str(spec.get("class", protocol)).split(".", 1)[0]
        raise ConfigError(
            f"{key}: scheme {scheme!r} needs the package {package} (pip install {package})"
        ) from exc


def _filesystem(
    protocol: str, storage_options: Mapping[str, Any], *, url: str
) -> AbstractFileSystem:
    import fsspec

    if protocol == "file":
        return fsspec.filesystem("file")
    _filesystem_class(protocol, key=url, scheme=protocol)  # a worker may lack the package
    return fsspec.filesystem(_FSSPEC_PROTOCOL[protocol], **_options(protocol, storage_options))


def _options(protocol: str, storage_options: Mapping[str, Any]) -> dict[str, Any]:
    """The filesystem options: the location's, over imageprep's defaults.

    s3fs reads a whole object with a HEAD (its size) and then the GETs, unless
    ``max_concurrency`` is 1: then it is one GET. s3fs splits only objects over
    2 x 50 MiB, larger than any image or shard here, so 1 is the default.
    """
    defaults: dict[str, Any] = {"max_concurrency": 1} if protocol == "s3" else {}
    return {**defaults, **storage_options}


# --------------------------------------------------------------------------- zarr


def zarr_store(location: Location, *, read_only: bool) -> Store:
    """Return a zarr-python 3 store for a location.

    A local folder gets ``zarr.storage.LocalStore`` (what ``zarr.open_group``
    makes of a path: the same behaviour and speed as before URLs existed); a
    URL gets ``zarr.storage.FsspecStore`` on an asynchronous instance of the
    location's filesystem (s3fs is asynchronous; a synchronous one such as
    ``memory://`` is wrapped in fsspec's ``AsyncFileSystemWrapper``).

    Args:
        location: the store's location.
        read_only: open the store read-only.

    Returns:
        The store, to pass to ``zarr.open_group(store, ...)``.

    Example:
        >>> import zarr
        >>> loc = resolve_location("memory://doc/ds.zarr", key="output.path")
        >>> g = zarr.open_group(zarr_store(loc, read_only=False), mode="w")
        >>> _ = g.create_array("x", shape=(4,), dtype="int64")
        >>> sorted(zarr.open_group(zarr_store(loc, read_only=True), mode="r").array_keys())
        ['x']
    """
    if location.is_local:
        from zarr.storage import LocalStore

        return LocalStore(location.path, read_only=read_only)
    from zarr.storage import FsspecStore

    _filesystem_class(location.protocol, key=location.url, scheme=location.protocol)
    return FsspecStore.from_url(
        f"{_FSSPEC_PROTOCOL[location.protocol]}://{location.path}",
        storage_options=_options(location.protocol, location.storage_options),
        read_only=read_only,
    )


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True, order=True)
class FileEntry:
    """One file of a listing.

    Attributes:
        path: path relative to the listed folder, ``/``-separated.
        size: size in bytes.
        mtime_ns: modification time in nanoseconds since the epoch (an object
            store's ``LastModified``, often whole seconds; 0 when unknown).
        version: what identifies the object's content on an object store: its
            ETag (without quotes), else its generation or version id; ``""``
            for a local file (``mtime_ns`` identifies it).
    """

    path: str
    size: int
    mtime_ns: int
    version: str = ""


def list_files(location: Location) -> list[FileEntry]:
    """List every file under a folder or prefix, recursively, sorted by path.

    A local folder is walked with ``os.scandir`` (regular files and links to
    them; links to folders are not followed: the scan of a local source,
    :func:`pipeline.sources.scan`, has its own rules for them and records
    rejections). An object store is listed with ``fs.find(detail=True)``
    (one paged LIST per 1000 objects on S3, fresh: the filesystem's listing
    cache is dropped first); "folder" marker objects (keys ending in ``/``)
    are skipped. Nothing is filtered by name: hidden names and extensions are
    the scan's business.

    Args:
        location: a folder or prefix.

    Returns:
        The files, sorted by ``path`` (code-point order).

    Raises:
        FileNotFoundError: there is no such folder (on an object store: no
            object under the prefix).
        NotADirectoryError: the location is a file.

    Example:
        >>> loc = resolve_location("memory://doc/src", key="source.path")
        >>> loc.fs.pipe({"/doc/src/cat/a.png": b"12", "/doc/src/b.png": b"345"})
        >>> [(f.path, f.size) for f in list_files(loc)]
        [('b.png', 3), ('cat/a.png', 2)]
    """
    if location.is_local:
        return _list_local(location.path)
    fs = location.fs
    root = location.path.rstrip("/")
    fs.invalidate_cache(root)
    found = fs.find(root, detail=True)
    if not found:
        if fs.isfile(root):
            raise NotADirectoryError(f"{location.url}: not a folder")
        if not fs.isdir(root):
            raise FileNotFoundError(f"{location.url}: no such folder (no object under it)")
    out = []
    prefix = root + "/"
    for name, info in found.items():
        if info.get("type") != "file" or name.endswith("/") or not name.startswith(prefix):
            continue
        out.append(
            FileEntry(
                name[len(prefix) :], int(info.get("size") or 0), _mtime_ns(info), _version(info)
            )
        )
    out.sort()
    return out


def _list_local(root: str) -> list[FileEntry]:
    if not os.path.isdir(root):
        if os.path.exists(root):
            raise NotADirectoryError(f"{root}: not a folder")
        raise FileNotFoundError(f"{root}: no such folder")
    out: list[FileEntry] = []

    def walk(folder: str, rel: str) -> None:
        with os.scandir(folder) as it:
            for entry in it:
                name = f"{rel}{entry.name}"
                if entry.is_dir(follow_symlinks=False):
                    walk(entry.path, name + "/")
                    continue
                try:
                    st = entry.stat()  # follows a link to a file
                except OSError:
                    continue  # broken link
                if stat.S_ISREG(st.st_mode):
                    out.append(FileEntry(name, st.st_size, st.st_mtime_ns))

    walk(root, "")
    out.sort()
    return out


def _mtime_ns(info: Mapping[str, Any]) -> int:
    for k in ("LastModified", "last_modified", "mtime", "updated", "created"):
        v = info.get(k)
        if v is None:
            continue
        if isinstance(v, _dt.datetime):
            if v.tzinfo is None:
                v = v.replace(tzinfo=_dt.timezone.utc)
            return int(v.timestamp()) * 1_000_000_000 + v.microsecond * 1000
        if isinstance(v, (int, float)):
            return int(round(float(v) * 1e9))
        if isinstance(v, str):
            try:
                return _mtime_ns({k: _dt.datetime.fromisoformat(v.replace("Z", "+00:00"))})
            except ValueError:
                continue
    return 0


def _version(info: Mapping[str, Any]) -> str:
    for k in ("ETag", "etag", "generation", "VersionId", "version_id"):
        v = info.get(k)
        if v not in (None, ""):
            return str(v).strip('"')
    return ""


class _NamedBytes(io.BytesIO):
    """Bytes in memory with a ``name`` (the URL), as a file opened from disk has."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.name = name


def open_file(location: Location, relpath: str) -> BinaryIO:
    """Open one file of a source for reading, as a seekable binary file object.

    A local file is opened with ``open(path, "rb")``; an object is read whole
    with one GET (``fs.cat_file``) into memory, which is what a decoder needs
    anyway and costs one request per image. The returned object has a
    ``name`` (the path or URL) for messages. Close it (``with``) after use.

    Args:
        location: the source folder.
        relpath: the file, relative to it, ``/``-separated (as in a listing or
            a manifest).

    Returns:
        A readable, seekable binary file object.

    Raises:
        FileNotFoundError, PermissionError, OSError: as ``open`` raises them (an
            object store's errors are translated to these by fsspec).
        InvalidArgumentError: ``relpath`` is absolute or has ``..``.

    Example:
        >>> loc = resolve_location("memory://doc/src2", key="source.path")
        >>> loc.fs.pipe_file("/doc/src2/a/x.bin", b"abc")
        >>> with open_file(loc, "a/x.bin") as fp:
        ...     fp.read(), fp.name
        (b'abc', 'memory://doc/src2/a/x.bin')
    """
    target = location.joinpath(relpath)
    if location.is_local:
        return open(target.path, "rb")  # the caller closes it
    return _NamedBytes(location.fs.cat_file(target.path), target.url)


# --------------------------------------------------------------------------- lock


def _iso(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).isoformat(timespec="seconds")


class _Conflict(Exception):
    """A conditional write found another version than expected."""


class _ConditionalWrites:
    """Compare-and-swap on one S3 object with ``If-None-Match: *`` / ``If-Match: etag``.

    Atomic on AWS S3 (conditional writes, 2024) and on servers that implement
    them (moto 5, MinIO): of two concurrent writes with the same condition,
    exactly one succeeds, the other gets 412 Precondition Failed.
    """

    name = "conditional writes (If-None-Match / If-Match)"

    def __init__(self, fs: Any, path: str) -> None:
        self.fs = fs
        self.path = path

    def read(self) -> tuple[bytes, str] | None:
        from fsspec.asyn import sync

        bucket, key, _ = self.fs.split_path(self.path)

        async def get() -> tuple[bytes, str]:
            resp = await self.fs._call_s3("get_object", Bucket=bucket, Key=key)
            try:
                data = await resp["Body"].read()
            finally:
                resp["Body"].close()
            return data, str(resp["ETag"])

        try:
            return sync(self.fs.loop, get)
        except FileNotFoundError:
            return None

    def create(self, data: bytes) -> str:
        try:
            out = self.fs.pipe_file(self.path, data, mode="create")
        except FileExistsError:
            raise _Conflict from None
        return str(out["ETag"])

    def replace(self, data: bytes, version: str) -> str:
        try:
            out = self.fs.pipe_file(self.path, data, IfMatch=version)
        except FileNotFoundError:
            raise _Conflict from None
        except OSError as exc:
            if "pre-condition" in str(exc).lower() or "precondition" in str(exc).lower():
                raise _Conflict from None
            raise
        return str(out["ETag"])


class _ReadBack:
    """Write, wait ``settle_s``, read back and compare: for stores without conditional writes.

    Not atomic. Two contenders that both find the lock free and both write
    within ``settle_s`` of each other: the later write wins, and the earlier
    writer sees the later content on reading back and backs off. Mutual
    exclusion holds when every contender's check-to-write time is below
    ``settle_s`` and the store is read-after-write consistent (S3, GCS and
    Azure Blob are).
    """

    name = "write, then read back and compare"

    def __init__(self, fs: Any, path: str, settle_s: float) -> None:
        self.fs = fs
        self.path = path
        self.settle_s = settle_s

    def read(self) -> tuple[bytes, str] | None:
        try:
            data = bytes(self.fs.cat_file(self.path))
        except FileNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()

    def _write_and_check(self, data: bytes) -> str:
        self.fs.pipe_file(self.path, data)
        if self.settle_s > 0:
            time.sleep(self.settle_s)
        now = self.read()
        if now is None or now[0] != data:
            raise _Conflict
        return now[1]

    def create(self, data: bytes) -> str:
        if self.fs.exists(self.path):
            raise _Conflict
        return self._write_and_check(data)

    def replace(self, data: bytes, version: str) -> str:
        now = self.read()
        if now is None or now[1] != version:
            raise _Conflict
        return self._write_and_check(data)


class ObjectStoreLock:
    """An exclusive, non-blocking lock on a store in object storage, with a lease.

    The lock is an object ``<store>.lock`` next to the store (outside it, so
    that deleting and re-creating the store keeps it), a small JSON document:
    the holder (``pid``, ``host``, ``since``), a random ``token`` of the lock
    object that holds it, and a lease (``expires``, seconds since the epoch,
    and ``expires_at``). While held, a daemon heartbeat thread renews the lease
    every ``heartbeat_s``. A holder that dies stops renewing, and once its
    lease has expired the next :meth:`acquire` takes the lock over: a killed
    run blocks the store for at most ``lease_s``. :meth:`release` marks the
    object released (it stays, like the local lock file). The interface is
    that of :class:`pipeline.store.StoreLock` (``acquire``, ``release``,
    ``holder``, ``held``, context manager); a second lock object, in this
    process or another, is refused with
    :class:`~pipeline.errors.StoreLockedError` naming the holder and the store.

    Every change of the object is a compare-and-swap against the version last
    seen (create if absent; replace if unchanged). What that guarantees:

    - **S3 (s3fs; AWS S3, moto 5, MinIO):** conditional writes, ``PUT`` with
      ``If-None-Match: *`` to create and ``If-Match: <ETag>`` to renew, take
      over or release. The store decides atomically: of two contenders exactly
      one gets the lock, also for the takeover of an expired lease; a holder
      whose lease was taken over finds out at its next renewal (412) and marks
      itself :attr:`lost`. (moto checks the condition and stores the object in
      two steps without a lock, so against moto the race between two
      *simultaneous* first writes is not atomic; sequential contention, which
      the tests check, behaves as on AWS.)
    - **Other stores** (``memory://``, gcsfs, adlfs, or ``conditional=False``):
      write, wait ``settle_s``, read back and compare. Mutual exclusion holds
      when each contender's time from reading the lock to writing it stays
      below ``settle_s`` (default 0.5 s) and the store is read-after-write
      consistent; it is a best-effort guard against a second run started by
      mistake, not a consensus protocol.
    - **Leases need clocks that agree.** Expiry compares the holder's
      ``expires`` with the reader's clock: keep machines on NTP and the skew
      far below ``lease_s``.
    - **No fencing.** A holder that stalls longer than its lease (a paused VM)
      may find the lock taken over only at its next heartbeat; shard tasks it
      already handed to Dask workers are not stopped by the lock. Check
      :attr:`lost` (or call :meth:`check`) before committing work, e.g. before
      :func:`~pipeline.store.finalize`.

    The lock object for a local folder is :class:`pipeline.store.StoreLock`
    (``flock``), which the kernel drops when its holder dies.

    Args:
        location: the store (not the lock object).
        lease_s: seconds a lease lasts without renewal.
        heartbeat_s: seconds between renewals (default ``lease_s / 4``); ``0``
            disables the heartbeat (the lease then simply runs out).
        conditional: use conditional writes (``True``), read-back (``False``),
            or decide by the store (``None``: conditional writes on ``s3``).
        settle_s: read-back only: seconds between writing and reading back.

    Example:
        >>> loc = resolve_location("memory://doc/locked.zarr", key="output.path")
        >>> with ObjectStoreLock(loc, settle_s=0) as lock:
        ...     try:
        ...         ObjectStoreLock(loc, settle_s=0).acquire()
        ...     except StoreLockedError:
        ...         print("refused")
        refused
    """

    def __init__(
        self,
        location: Location,
        *,
        lease_s: float = 60.0,
        heartbeat_s: float | None = None,
        conditional: bool | None = None,
        settle_s: float = 0.5,
    ) -> None:
        if not lease_s > 0:
            raise InvalidArgumentError(f"lease_s must be > 0, got {lease_s!r}")
        if heartbeat_s is None:
            heartbeat_s = lease_s / 4
        if heartbeat_s < 0 or heartbeat_s >= lease_s:
            raise InvalidArgumentError(
                f"heartbeat_s must be >= 0 and < lease_s ({lease_s}), got {heartbeat_s!r}"
            )
        if settle_s < 0:
            raise InvalidArgumentError(f"settle_s must be >= 0, got {settle_s!r}")
        self.location = location
        self.path = location.url
        self.lock_location = location.sibling(location.name + ".lock")
        self.lock_path = self.lock_location.url
        self.lease_s = float(lease_s)
        self.heartbeat_s = float(heartbeat_s)
        if conditional is None:
            conditional = location.protocol == "s3"
        fs = self.lock_location.fs
        self._cas: _ConditionalWrites | _ReadBack = (
            _ConditionalWrites(fs, self.lock_location.path)
            if conditional
            else _ReadBack(fs, self.lock_location.path, settle_s)
        )
        self._token = uuid.uuid4().hex
        self._since = ""
        self._version: str | None = None
        self._expires = 0.0
        self._lost = False
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._clock: Callable[[], float] = time.time

    # -- state

    @property
    def held(self) -> bool:
        """True while this object holds the lock (and has not lost its lease)."""
        return self._version is not None and not self._lost

    @property
    def lost(self) -> bool:
        """True when the lease ran out or was taken over while this object held the lock."""
        return self._lost

    @property
    def guarantee(self) -> str:
        """How changes of the lock object are made atomic here (see the class)."""
        return self._cas.name

    def check(self) -> None:
        """Raise :class:`~pipeline.errors.StoreLockedError` when the lock was lost."""
        if self._lost:
            raise StoreLockedError(
                f"{self.path}: this run lost its lock on the output store "
                f"(lease expired or taken over; lock object {self.lock_path})"
            )

    # -- records

    def _record(self, *, released: bool = False) -> bytes:
        now = self._clock()
        self._expires = now + self.lease_s
        rec: dict[str, Any] = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": self._since,
            "token": self._token,
            "lease_s": self.lease_s,
            "expires": self._expires,
            "expires_at": _iso(self._expires),
        }
        if released:
            rec.update(released=True, released_at=_iso(now))
        return json.dumps(rec, sort_keys=True).encode()

    def _read(self) -> tuple[dict[str, Any], str] | None:
        got = self._cas.read()
        if got is None:
            return None
        data, version = got
        try:
            rec = json.loads(data.decode() or "{}")
        except ValueError:
            rec = {}
        return (rec if isinstance(rec, dict) else {}), version

    def _free(self, rec: Mapping[str, Any]) -> bool:
        if rec.get("released"):
            return True
        try:
            return self._clock() > float(rec["expires"])
        except (KeyError, TypeError, ValueError):
            return True  # unreadable: nobody can be said to hold it

    # -- interface

    def acquire(self) -> ObjectStoreLock:
        """Take the lock or fail at once; start the heartbeat.

        Raises:
            StoreLockedError: another holder's lease is live; the message names
                its pid, host, start and lease end, and the store.
            StoreError: this object already holds the lock.
        """
        if self._version is not None:
            raise StoreError(f"{self.path}: this ObjectStoreLock is already held")
        self._lost = False
        self._since = _iso(self._clock())
        version = self._take()
        with self._mutex:
            self._version = version
        if self.heartbeat_s > 0:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._beat, name=f"lease {self.lock_path}", daemon=True
            )
            self._thread.start()
        return self

    def _take(self) -> str:
        last: Mapping[str, Any] = {}
        for _ in range(5):  # a conflict means the object changed: look again
            current = self._read()
            try:
                if current is None:
                    return self._cas.create(self._record())
                rec, version = current
                if rec.get("token") == self._token:  # our own write, answered 412 on a retry
                    return version
                if not self._free(rec):
                    raise self._locked(rec)
                last = rec
                return self._cas.replace(self._record(), version)
            except _Conflict:
                now = self._read()
                if now is not None and now[0].get("token") == self._token:
                    return now[1]
                last = now[0] if now is not None else last
        raise self._locked(last)

    def _locked(self, rec: Mapping[str, Any]) -> StoreLockedError:
        if rec.get("pid") is not None:
            who = (
                f"pid {rec.get('pid')} on host {rec.get('host')} since {rec.get('since')} "
                f"(lease until {rec.get('expires_at')})"
            )
        else:
            who = "another process"
        return StoreLockedError(
            f"{self.path}: the output store is in use by {who} "
            f"(lock object {self.lock_path}); wait for that run to finish or its lease to expire"
        )

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            with self._mutex:
                if self._version is None or self._lost:
                    return
                try:
                    self._version = self._cas.replace(self._record(), self._version)
                except _Conflict:
                    self._lost = True
                    log.error("%s: lost the lock (lease taken over)", self.path)
                    return
                except Exception as exc:  # network trouble: try again at the next beat
                    if self._clock() > self._expires:
                        self._lost = True
                        log.error("%s: lost the lock (lease expired: %s)", self.path, exc)
                        return
                    log.warning("%s: lease renewal failed, retrying: %s", self.path, exc)

    def renew(self) -> None:
        """Renew the lease now (the heartbeat does this on its own).

        Raises:
            StoreLockedError: the lock was lost or is not held.
        """
        with self._mutex:
            if self._version is None or self._lost:
                self.check()
                raise StoreError(f"{self.path}: this ObjectStoreLock is not held")
            try:
                self._version = self._cas.replace(self._record(), self._version)
            except _Conflict:
                self._lost = True
        self.check()

    def release(self) -> None:
        """Release the lock (a no-op when not held); stop the heartbeat.

        A lock that was lost meanwhile is left to its new holder.
        """
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._mutex:
            version, self._version = self._version, None
            if version is None or self._lost:
                return
            try:
                self._cas.replace(self._record(released=True), version)
            except _Conflict:
                self._lost = True
                log.warning("%s: the lock was taken over before release", self.path)

    def holder(self) -> dict[str, Any]:
        """Return the live holder's ``pid``, ``host``, ``since``, ``expires_at``.

        ``{}`` when the lock object is missing, unreadable, released, or its
        lease has expired.
        """
        try:
            current = self._read()
        except OSError:
            return {}
        if current is None or self._free(current[0]):
            return {}
        rec = current[0]
        return {k: rec[k] for k in ("pid", "host", "since", "expires_at") if k in rec}

    def __enter__(self) -> ObjectStoreLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
