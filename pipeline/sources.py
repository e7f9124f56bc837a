r"""Scan a folder of images into a manifest: files, labels, sizes, mtimes, fingerprint.

The scan follows the ImageFolder convention (torchvision's
``datasets.ImageFolder``): every first-level subfolder of the root is a class,
and an image's label is the index of its class folder among the sorted class
names. The manifest is the single list of source files every later step uses
(stats, transform, the store's ``paths`` array), so its rules are stated once
here:

- The walk is recursive and the result is sorted by relative path (code-point
  order of the ``/``-separated path, so the same on every platform).
- Hidden entries (a name starting with ``.``) are skipped, files and folders.
- A file is an image candidate when its extension is in
  :data:`IMAGE_EXTENSIONS`, compared case-insensitively (``.JPG`` counts).
  Files with other extensions are ignored silently: they are not rejections.
  Whether a candidate really is an image is decided later by the decoder.
- Labels (``labels="folders"``): a class is a first-level folder holding at
  least one image candidate (at any depth); ``classes`` are their names
  sorted, label ``i`` is ``classes[i]``. Images directly in the root get label
  ``-1``. With ``labels="none"`` every label is ``-1`` and ``classes`` is
  empty.
- Symbolic links are followed only while they stay inside the root (after
  resolving every link). A link that leaves the root, a link whose target is
  missing, a link back to one of its own ancestor folders (a loop) and an
  entry that is not a regular file (a FIFO, a socket, a device) are not
  followed: they are recorded in ``Manifest.rejected`` with a reason (for
  files, only when the name has an image extension).
- The fingerprint is the SHA-256 of the relative paths (their raw bytes),
  sizes and mtimes (in nanoseconds) of the accepted files in order: it
  changes when a file is added, removed, renamed, resized or touched, and not
  otherwise.

**Names.** A POSIX file name is a byte string, not text: it may hold any byte
but ``/`` and NUL, including bytes that are not valid UTF-8 (``printf
'n\xff.jpg'``). Every path this module hands out (``SourceFile.path``, the
paths of ``Manifest.rejected``) is a *manifest name*: a ``str`` that is valid
Unicode (it encodes to UTF-8, so it can be written to JSON, a Zarr ``paths``
array or a terminal) and that maps back to the exact bytes of the name:

- The name's bytes are decoded as UTF-8; each byte that is not part of valid
  UTF-8 (always ``0x80``..``0xFF``) becomes ``%XX``, two upper-case hex digits
  (``n\xff.jpg`` -> ``n%FF.jpg``).
- A literal ``%`` becomes ``%25`` only where it would otherwise be read as
  such an escape, i.e. when it is followed by ``25`` or by ``8``..``F`` and a
  hex digit (upper case). Every other character is kept as it is: newlines,
  tabs, backslashes, other ``%`` signs, NFC and NFD forms (never normalized:
  ``é`` as one or two code points are two different files).

So every name that is valid UTF-8 and has no ``%25``/``%8X``..``%FX``
sequence is its own manifest name, and percent-escapes appear only where they
are needed. :func:`escape_path` and :func:`unescape_path` are the two
directions (``unescape_path(escape_path(b)) == b`` for every byte string);
:func:`source_path` (or :meth:`Manifest.abspath`) turns a manifest name back
into the path to open. Open files through them, never by joining the manifest
name to the root: the two differ exactly for the names that needed escaping.
Percent-escapes were chosen over ``\xff``-style ones because backslashes are
common in names copied from Windows, while a ``%`` followed by two upper-case
hex digits from ``8`` up is rare, so fewer real names change.

**Object stores.** A source given as an object-store URL (a
:class:`~pipeline.storage.Location`: ``s3://bucket/prefix``, ``memory://...``)
is listed with :func:`pipeline.storage.list_files` (one paged LIST per 1000
objects) and follows the same rules for order, hidden names, extensions and
labels; it has no symbolic links, and an object whose key has an empty, ``.``
or ``..`` component (``a//b.png``) is rejected. Its size and mtime are the
object's size and ``LastModified`` (whole seconds on S3). The manifest's
``root`` is then the location, and its files are read with
:func:`open_source` (one GET per file), never through a local path.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from pipeline.errors import DecodeError, Failure, InvalidArgumentError
from pipeline.storage import Location, is_url, list_files, open_file, resolve_location

__all__ = [
    "IMAGE_EXTENSIONS",
    "Manifest",
    "SourceFile",
    "SourceRoot",
    "escape_path",
    "fingerprint_of",
    "open_source",
    "read_source",
    "scan",
    "source_path",
    "unescape_path",
]

SourceRoot = str | os.PathLike[str] | Location
"""A source folder: a local path, or the :class:`~pipeline.storage.Location` of an object store."""

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
)
"""Lower-case extensions (with the dot) of files the scan treats as images."""


@dataclass(frozen=True)
class SourceFile:
    """One accepted source file.

    Attributes:
        path: path relative to the source root, with ``/`` separators, as a
            manifest name (module docstring; open it with :func:`source_path`).
        size: size in bytes (of the link target for a symlink).
        mtime_ns: modification time in nanoseconds since the epoch.
        label: index into ``Manifest.classes``, or ``-1`` when there is none.
    """

    path: str
    size: int
    mtime_ns: int
    label: int


@dataclass(frozen=True)
class Manifest:
    """The scanned source: accepted files in order, classes, rejections, fingerprint.

    Attributes:
        root: the source folder, absolute (a ``Path``), or the
            :class:`~pipeline.storage.Location` of a source in object storage.
        files: accepted image candidates sorted by ``path``.
        classes: sorted class folder names; label ``i`` is ``classes[i]``.
        rejected: entries that were not followed (escaping or broken symlinks,
            loops, non-regular files), sorted by path.
        fingerprint: hex SHA-256 over the files' paths, sizes and mtimes.
    """

    root: Path | Location
    files: tuple[SourceFile, ...]
    classes: tuple[str, ...]
    rejected: tuple[Failure, ...]
    fingerprint: str

    def abspath(self, f: SourceFile) -> Path:
        """Return the absolute path of a file of this manifest (its name unescaped).

        Raises:
            InvalidArgumentError: the source is in object storage (use :meth:`open`).
        """
        if isinstance(self.root, Location):
            raise InvalidArgumentError(
                f"{self.root}: a source in object storage has no local paths; use open_source"
            )
        return Path(source_path(self.root, f.path))

    def open(self, f: SourceFile | str) -> BinaryIO:
        """Open a file of this manifest for reading (:func:`open_source`)."""
        return open_source(self.root, f if isinstance(f, str) else f.path)

    def __len__(self) -> int:
        return len(self.files)


# A byte that is not valid UTF-8, decoded with "surrogateescape" (U+DC80..U+DCFF),
# or a literal "%" that would read as an escape: the only characters escape_path changes.
_NEEDS_ESCAPE = re.compile("[\udc80-\udcff]|%(?=25|[89A-F][0-9A-F])")
_ESCAPE = re.compile("%(25|[89A-F][0-9A-F])")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _escape_one(m: re.Match[str]) -> str:
    c = m.group()
    return "%25" if c == "%" else f"%{ord(c) - 0xDC00:02X}"


def _unescape_one(m: re.Match[str]) -> str:
    v = int(m.group(1), 16)
    return "%" if v == 0x25 else chr(0xDC00 + v)


def escape_path(raw: bytes | str) -> str:
    r"""Return the manifest name of a path: valid Unicode, lossless (module docstring).

    Args:
        raw: the path's bytes, or a ``str`` as the OS gives it (``os.fsdecode``:
            undecodable bytes as lone surrogates), which is encoded back with
            ``os.fsencode`` first.

    Returns:
        The name with each byte that is not valid UTF-8 as ``%XX`` and a ``%``
        that would read as an escape as ``%25``; everything else unchanged.

    Example:
        >>> escape_path(b"cat/n\xff.jpg"), escape_path("50%.jpg"), escape_path(b"%FF.png")
        ('cat/n%FF.jpg', '50%.jpg', '%25FF.png')
        >>> escape_path("caf\u00e9\ttab.png")
        'café\ttab.png'
    """
    data = os.fsencode(raw) if isinstance(raw, str) else raw
    text = data.decode("utf-8", "surrogateescape")
    return _NEEDS_ESCAPE.sub(_escape_one, text)


def unescape_path(name: str) -> bytes:
    r"""Return the raw bytes of a manifest name: the inverse of :func:`escape_path`.

    Raises:
        InvalidArgumentError: ``name`` holds a lone surrogate, so it is not a
            manifest name (a raw ``os.fsdecode`` string, for instance).

    Example:
        >>> unescape_path("cat/n%FF.jpg"), unescape_path("50%.jpg"), unescape_path("%25FF.png")
        (b'cat/n\xff.jpg', b'50%.jpg', b'%FF.png')
    """
    if _SURROGATE.search(name) is not None:
        raise InvalidArgumentError(
            f"path must be a manifest name (valid Unicode, undecodable bytes as %XX), got {name!r}"
        )
    return _ESCAPE.sub(_unescape_one, name).encode("utf-8", "surrogateescape")


def source_path(root: str | os.PathLike[str], rel: str) -> str:
    r"""Return the path to open for the manifest name ``rel`` under ``root``.

    The result is a ``str`` as the OS functions take it (undecodable bytes as
    ``os.fsdecode`` gives them), so ``open``, Pillow and ``pathlib`` accept it.

    Args:
        root: the source folder.
        rel: a manifest name (``SourceFile.path``), ``/``-separated.

    Raises:
        InvalidArgumentError: ``rel`` is not a manifest name.

    Example:
        >>> p = source_path("/data", "cat/n%FF.jpg")
        >>> os.fsencode(p)
        b'/data/cat/n\xff.jpg'
    """
    return os.fsdecode(os.path.join(os.fsencode(root), unescape_path(rel)))


def open_source(root: SourceRoot, rel: str) -> BinaryIO:
    r"""Open the manifest name ``rel`` under ``root`` for reading, as a binary file object.

    A local file is opened with ``open`` (:func:`source_path`); an object is
    read whole with one GET (:func:`pipeline.storage.open_file`) into a
    seekable file object whose ``name`` is its URL. Close it after use.

    Raises:
        OSError: the file cannot be opened or read (``FileNotFoundError`` when
            it is gone).
        InvalidArgumentError: ``rel`` is not a manifest name.

    Example:
        >>> from pipeline.storage import resolve_location
        >>> loc = resolve_location("memory://doc-src/imgs", key="source.path")
        >>> loc.fs.pipe_file("/doc-src/imgs/cat/a b%.png", b"png")
        >>> with open_source(loc, "cat/a b%.png") as fp:
        ...     fp.read(), fp.name
        (b'png', 'memory://doc-src/imgs/cat/a b%.png')
    """
    if isinstance(root, Location) and not root.is_local:
        key = unescape_path(rel).decode("utf-8", "surrogateescape")
        return open_file(root, key)
    base = root.path if isinstance(root, Location) else root
    return open(source_path(base, rel), "rb")  # the caller closes it


def read_source(root: SourceRoot, rel: str) -> tuple[BinaryIO, bytes]:
    """Read a source file once: its bytes as a file object for the decoder, and their SHA-256.

    A local file is read by :func:`pipeline.decode.read_with_digest`; an object
    with one GET (:func:`open_source`).

    Raises:
        DecodeError: the file's rejection: missing, refused, empty, or (a local
            file) unreadable.
        OSError: on an object store, any other error (the network, the
            server): not the file's fault, so the task fails and a rerun reads
            it again.
    """
    import hashlib

    if not isinstance(root, Location) or root.is_local:
        from pipeline.decode import read_with_digest

        base = root.path if isinstance(root, Location) else root
        fp, digest = read_with_digest(source_path(base, rel))
        return fp, digest  # type: ignore[return-value]
    name = root.joinpath(unescape_path(rel).decode("utf-8", "surrogateescape")).url
    try:
        fp = open_source(root, rel)
    except (FileNotFoundError, PermissionError) as exc:
        raise DecodeError(name, _os_reason(exc)) from None
    data = fp.read()
    fp.seek(0)
    if not data:
        raise DecodeError(name, "empty file")
    return fp, hashlib.sha256(data).digest()


def fingerprint_of(files: tuple[SourceFile, ...] | list[SourceFile]) -> str:
    """Return the hex SHA-256 of the files' relative paths, sizes and mtimes.

    Each file contributes ``path NUL size NUL mtime_ns LF``, in the order
    given; ``path`` is the raw bytes of the relative path
    (:func:`unescape_path` of the manifest name), so the fingerprint does not
    depend on the escaping.

    Args:
        files: the files, normally ``Manifest.files`` (already sorted).

    Returns:
        64 hex digits.

    Example:
        >>> len(fingerprint_of([SourceFile("a/x.png", 10, 5, 0)]))
        64
        >>> fingerprint_of([]) == hashlib.sha256().hexdigest()
        True
    """
    h = hashlib.sha256()
    for f in files:
        h.update(unescape_path(f.path))
        h.update(b"\0%d\0%d\n" % (f.size, f.mtime_ns))
    return h.hexdigest()


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def scan(root: SourceRoot, *, labels: Literal["folders", "none"] = "folders") -> Manifest:
    """Scan a folder recursively for images and return its manifest.

    See the module docstring for the rules (order, hidden entries, extensions,
    labels, symlinks, fingerprint, object stores).

    Args:
        root: the source folder: a local path, an object-store URL string
            (opened with the environment's credentials) or a
            :class:`~pipeline.storage.Location` (with its storage options).
        labels: ``"folders"`` (first-level subfolders are classes) or ``"none"``.

    Returns:
        The manifest.

    Raises:
        InvalidArgumentError: ``root`` is not an existing folder (no object
            under the prefix), or ``labels`` is not one of the two values.
        ConfigError: ``root`` is a URL that :func:`~pipeline.storage.resolve_location`
            refuses (unknown scheme, package not installed, lost slash).

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> for p in ["cat/b.PNG", "cat/a.jpg", "dog/x.gif", "top.bmp", "notes.txt", ".h/y.png"]:
        ...     (d / p).parent.mkdir(parents=True, exist_ok=True)
        ...     _ = (d / p).write_bytes(b"data")
        >>> m = scan(d)
        >>> [(f.path, f.label) for f in m.files]
        [('cat/a.jpg', 0), ('cat/b.PNG', 0), ('dog/x.gif', 1), ('top.bmp', -1)]
        >>> m.classes
        ('cat', 'dog')
    """
    if labels not in ("folders", "none"):
        raise InvalidArgumentError(f"labels must be 'folders' or 'none', got {labels!r}")
    if isinstance(root, Location) or is_url(root):
        location = resolve_location(root, key="root")
        if not location.is_local:
            return _scan_objects(location, labels)
        root = location.path  # a file:// URL or a local Location
    root_path = Path(root)
    if not root_path.is_dir():
        raise InvalidArgumentError(f"root must be an existing folder, got {str(root)!r}")
    root_abs = Path(os.path.abspath(root_path))
    root_real = os.path.realpath(root_abs)

    found: list[tuple[str, int, int]] = []
    rejected: list[Failure] = []

    def walk(dir_abs: str, rel_parts: tuple[str, ...], ancestors: frozenset[str]) -> None:
        try:
            with os.scandir(dir_abs) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            rel = escape_path("/".join(rel_parts)) or "."
            rejected.append(Failure(rel, f"unreadable folder: {_os_reason(e)}"))
            return
        for entry in entries:
            name = entry.name
            if _is_hidden(name):
                continue
            rel_list = (*rel_parts, name)
            rel = escape_path("/".join(rel_list))
            is_image_name = _is_image_name(name)
            is_link = entry.is_symlink()
            if is_link:
                target = os.path.realpath(entry.path)
                if not _inside(target, root_real):
                    if is_image_name or os.path.isdir(target):
                        rejected.append(
                            Failure(
                                rel, f"symlink leaves the source root: -> {escape_path(target)}"
                            )
                        )
                    continue
            try:
                st = os.stat(entry.path)  # follows links
            except OSError as e:
                if not is_image_name:
                    pass
                elif is_link and isinstance(e, FileNotFoundError):
                    rejected.append(Failure(rel, "broken symlink: target does not exist"))
                elif is_link and e.errno == errno.ELOOP:
                    rejected.append(Failure(rel, "symlink loop: too many levels of links"))
                else:
                    rejected.append(Failure(rel, f"unreadable: {_os_reason(e)}"))
                continue
            if stat.S_ISDIR(st.st_mode):
                real = os.path.realpath(entry.path)
                if real in ancestors:
                    rejected.append(Failure(rel, f"symlink loop: -> {escape_path(real)}"))
                    continue
                walk(entry.path, rel_list, ancestors | {real})
            elif is_image_name:
                if stat.S_ISREG(st.st_mode):
                    found.append((rel, st.st_size, st.st_mtime_ns))
                else:
                    rejected.append(Failure(rel, "not a regular file"))

    walk(str(root_abs), (), frozenset({root_real}))
    return _manifest(root_abs, found, rejected, labels)


def _manifest(
    root: Path | Location,
    found: list[tuple[str, int, int]],
    rejected: list[Failure],
    labels: str,
) -> Manifest:
    """The manifest of the accepted ``(name, size, mtime_ns)`` and the rejections."""
    found.sort(key=lambda t: t[0])
    classes: tuple[str, ...] = ()
    if labels == "folders":
        classes = tuple(sorted({p.split("/", 1)[0] for p, _, _ in found if "/" in p}))
    index = {c: i for i, c in enumerate(classes)}
    files = tuple(
        SourceFile(p, size, mtime, index.get(p.split("/", 1)[0], -1) if "/" in p else -1)
        for p, size, mtime in found
    )
    return Manifest(
        root=root,
        files=files,
        classes=classes,
        rejected=tuple(sorted(rejected)),
        fingerprint=fingerprint_of(files),
    )


def _scan_objects(location: Location, labels: str) -> Manifest:
    """Scan a source in object storage (module docstring, "Object stores")."""
    try:
        entries = list_files(location)
    except (FileNotFoundError, NotADirectoryError):
        raise InvalidArgumentError(
            f"root must be an existing folder (objects under a prefix), got {location.url!r}"
        ) from None
    found: list[tuple[str, int, int]] = []
    rejected: list[Failure] = []
    for entry in entries:
        parts = entry.path.split("/")
        if any(_is_hidden(p) for p in parts if p):
            continue
        if not _is_image_name(parts[-1]):
            continue
        name = escape_path(entry.path.encode("utf-8", "surrogateescape"))
        if any(p in ("", ".", "..") for p in parts):
            rejected.append(Failure(name, "object key has an empty, '.' or '..' part"))
            continue
        found.append((name, entry.size, entry.mtime_ns))
    return _manifest(location, found, rejected, labels)


def _os_reason(e: OSError) -> str:
    if isinstance(e, PermissionError):
        return "permission denied"
    if isinstance(e, FileNotFoundError):
        return "file not found"
    return e.strerror or type(e).__name__
