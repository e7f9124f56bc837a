"""Scan a folder of images into a manifest: files, labels, sizes, mtimes, fingerprint.

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
- The fingerprint is the SHA-256 of the relative paths, sizes and mtimes (in
  nanoseconds) of the accepted files in order: it changes when a file is
  added, removed, renamed, resized or touched, and not otherwise.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipeline.errors import Failure, InvalidArgumentError

__all__ = ["IMAGE_EXTENSIONS", "Manifest", "SourceFile", "fingerprint_of", "scan"]

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
)
"""Lower-case extensions (with the dot) of files the scan treats as images."""


@dataclass(frozen=True)
class SourceFile:
    """One accepted source file.

    Attributes:
        path: path relative to the source root, with ``/`` separators.
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
        root: the source folder, absolute.
        files: accepted image candidates sorted by ``path``.
        classes: sorted class folder names; label ``i`` is ``classes[i]``.
        rejected: entries that were not followed (escaping or broken symlinks,
            loops, non-regular files), sorted by path.
        fingerprint: hex SHA-256 over the files' paths, sizes and mtimes.
    """

    root: Path
    files: tuple[SourceFile, ...]
    classes: tuple[str, ...]
    rejected: tuple[Failure, ...]
    fingerprint: str

    def abspath(self, f: SourceFile) -> Path:
        """Return the absolute path of a file of this manifest."""
        return self.root.joinpath(*f.path.split("/"))

    def __len__(self) -> int:
        return len(self.files)


def fingerprint_of(files: tuple[SourceFile, ...] | list[SourceFile]) -> str:
    """Return the hex SHA-256 of the files' relative paths, sizes and mtimes.

    Each file contributes ``path NUL size NUL mtime_ns LF`` (path in UTF-8 with
    surrogate escapes for undecodable bytes), in the order given.

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
        h.update(f.path.encode("utf-8", "surrogateescape"))
        h.update(b"\0%d\0%d\n" % (f.size, f.mtime_ns))
    return h.hexdigest()


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def scan(root: str | Path, *, labels: Literal["folders", "none"] = "folders") -> Manifest:
    """Scan a folder recursively for images and return its manifest.

    See the module docstring for the rules (order, hidden entries, extensions,
    labels, symlinks, fingerprint).

    Args:
        root: the source folder.
        labels: ``"folders"`` (first-level subfolders are classes) or ``"none"``.

    Returns:
        The manifest.

    Raises:
        InvalidArgumentError: ``root`` is not an existing folder, or ``labels``
            is not one of the two values.

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
            rel = "/".join(rel_parts) or "."
            rejected.append(Failure(rel, f"unreadable folder: {_os_reason(e)}"))
            return
        for entry in entries:
            name = entry.name
            if _is_hidden(name):
                continue
            rel_list = (*rel_parts, name)
            rel = "/".join(rel_list)
            is_image_name = _is_image_name(name)
            is_link = entry.is_symlink()
            if is_link:
                target = os.path.realpath(entry.path)
                if not _inside(target, root_real):
                    if is_image_name or os.path.isdir(target):
                        rejected.append(
                            Failure(rel, f"symlink leaves the source root: -> {target}")
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
                    rejected.append(Failure(rel, f"symlink loop: -> {real}"))
                    continue
                walk(entry.path, rel_list, ancestors | {real})
            elif is_image_name:
                if stat.S_ISREG(st.st_mode):
                    found.append((rel, st.st_size, st.st_mtime_ns))
                else:
                    rejected.append(Failure(rel, "not a regular file"))

    walk(str(root_abs), (), frozenset({root_real}))
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
        root=root_abs,
        files=files,
        classes=classes,
        rejected=tuple(sorted(rejected)),
        fingerprint=fingerprint_of(files),
    )


def _os_reason(e: OSError) -> str:
    if isinstance(e, PermissionError):
        return "permission denied"
    if isinstance(e, FileNotFoundError):
        return "file not found"
    return e.strerror or type(e).__name__
