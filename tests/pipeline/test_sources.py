from __future__ import annotations

import hashlib
import os
import random
import threading
from pathlib import Path

import pytest

from pipeline.errors import InvalidArgumentError
from pipeline.sources import IMAGE_EXTENSIONS, Manifest, SourceFile, fingerprint_of, scan


def touch(root: Path, rel: str, data: bytes = b"x") -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def test_extensions_are_the_documented_set():
    assert {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"} == IMAGE_EXTENSIONS


def test_scan_sorted_hidden_extensions_and_labels(tmp_path):
    rng = random.Random(0)
    names = [
        "zebra/z1.jpg",
        "zebra/sub/deeper/z2.PNG",
        "ant/a-2.TIFF",
        "ant/a.1.jpeg",
        "ant/A0.Gif",
        "ant/x.WebP",
        "ant/y.bmp",
        "ant/z.tif",
        "root_image.png",
        "Bee/b.jpg",
    ]
    ignored = [
        "ant/notes.txt",
        "ant/image.jpg.bak",
        "ant/noext",
        "ant/.hidden.jpg",
        ".hiddendir/h.jpg",
        "zebra/.cache/c.png",
        "empty_class/readme.md",
        ".DS_Store",
    ]
    all_names = names + ignored
    rng.shuffle(all_names)  # creation order must not matter
    for n in all_names:
        touch(tmp_path, n, n.encode())
    m = scan(tmp_path)
    paths = [f.path for f in m.files]
    assert paths == sorted(names)
    # folders without images are not classes; class names sorted by code point
    assert m.classes == ("Bee", "ant", "zebra")
    labels = {f.path: f.label for f in m.files}
    assert labels["Bee/b.jpg"] == 0
    assert labels["ant/x.WebP"] == 1
    assert labels["zebra/sub/deeper/z2.PNG"] == 2
    assert labels["root_image.png"] == -1
    # ignored files are not rejections either
    assert m.rejected == ()
    for f in m.files:
        st = (tmp_path / f.path).stat()
        assert (f.size, f.mtime_ns) == (st.st_size, st.st_mtime_ns)
        assert m.abspath(f) == tmp_path / f.path
    assert len(m) == len(names)


def test_scan_labels_none(tmp_path):
    touch(tmp_path, "a/x.png")
    touch(tmp_path, "b/y.png")
    m = scan(tmp_path, labels="none")
    assert m.classes == ()
    assert [f.label for f in m.files] == [-1, -1]


def test_scan_empty_folder(tmp_path):
    m = scan(tmp_path)
    assert (m.files, m.classes, m.rejected) == ((), (), ())
    assert m.fingerprint == hashlib.sha256().hexdigest()


def test_scan_bad_arguments(tmp_path):
    with pytest.raises(InvalidArgumentError, match="root must be an existing folder, got"):
        scan(tmp_path / "missing")
    f = touch(tmp_path, "file.png")
    with pytest.raises(InvalidArgumentError, match="root must be an existing folder"):
        scan(f)
    with pytest.raises(InvalidArgumentError, match="labels must be 'folders' or 'none', got 'x'"):
        scan(tmp_path, labels="x")  # type: ignore[arg-type]


def test_scan_relative_root_gives_absolute_manifest(tmp_path, monkeypatch):
    touch(tmp_path, "d/a/x.png")
    monkeypatch.chdir(tmp_path)
    m = scan("d")
    assert m.root.is_absolute()
    assert m.abspath(m.files[0]).is_file()


def test_fingerprint_is_documented_hash(tmp_path):
    touch(tmp_path, "a/x.png", b"12345")
    touch(tmp_path, "b.jpg", b"1")
    m = scan(tmp_path)
    h = hashlib.sha256()
    for f in m.files:
        h.update(f"{f.path}\0{f.size}\0{f.mtime_ns}\n".encode())
    assert m.fingerprint == h.hexdigest()
    assert fingerprint_of(m.files) == m.fingerprint


def test_fingerprint_changes_only_with_the_images(tmp_path):
    p = touch(tmp_path, "a/x.png", b"abc")
    touch(tmp_path, "a/y.png", b"defg")
    base = scan(tmp_path).fingerprint
    assert scan(tmp_path).fingerprint == base  # rescan: same
    touch(tmp_path, "a/notes.txt")  # not an image
    touch(tmp_path, "a/.hidden.png")  # hidden
    (tmp_path / "emptydir").mkdir()
    assert scan(tmp_path).fingerprint == base
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # touched
    touched = scan(tmp_path).fingerprint
    assert touched != base
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))  # back
    assert scan(tmp_path).fingerprint == base
    q = touch(tmp_path, "b/z.gif")  # added
    assert scan(tmp_path).fingerprint not in (base, touched)
    q.unlink()  # removed again
    (tmp_path / "b").rmdir()
    assert scan(tmp_path).fingerprint == base
    (tmp_path / "a" / "y.png").unlink()  # removed
    assert scan(tmp_path).fingerprint != base
    # same size and mtime, other name: renamed
    os.rename(p, tmp_path / "a" / "w.png")
    assert scan(tmp_path).fingerprint != base


def test_fingerprint_of_distinguishes_fields():
    a = SourceFile("a/b.png", 12, 3, 0)
    variants = [
        SourceFile("a/c.png", 12, 3, 0),
        SourceFile("a/b.png", 123, 3, 0),
        SourceFile("a/b.png", 12, 4, 0),
        SourceFile("a/b.png", 1, 23, 0),
    ]
    fps = {fingerprint_of([a])} | {fingerprint_of([v]) for v in variants}
    assert len(fps) == 5
    assert fingerprint_of([a, variants[0]]) != fingerprint_of([variants[0], a])


def test_symlinks_inside_followed_outside_rejected(tmp_path):
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    touch(outside, "o.png")
    touch(outside, "dir/o2.png")
    touch(root, "cls/real.png", b"12")
    touch(root, "other/inner.jpg")
    os.symlink(root / "cls" / "real.png", root / "cls" / "link.png")  # inside: followed
    os.symlink(root / "other", root / "cls" / "linked_dir")  # inside dir: followed
    os.symlink(outside / "o.png", root / "cls" / "escape.png")
    os.symlink(outside / "dir", root / "cls" / "escape_dir")
    os.symlink("../../outside/o.png", root / "cls" / "relative_escape.png")
    os.symlink(outside / "o.png", root / "cls" / "escape.txt")  # not an image: ignored
    os.symlink(root / "cls" / "nothing.png", root / "cls" / "dangling.png")
    m = scan(root)
    paths = [f.path for f in m.files]
    assert paths == [
        "cls/link.png",
        "cls/linked_dir/inner.jpg",
        "cls/real.png",
        "other/inner.jpg",
    ]
    link = next(f for f in m.files if f.path == "cls/link.png")
    assert link.size == 2  # the target's size
    reasons = {f.path: f.error for f in m.rejected}
    assert set(reasons) == {
        "cls/escape.png",
        "cls/escape_dir",
        "cls/relative_escape.png",
        "cls/dangling.png",
    }
    assert reasons["cls/escape.png"] == f"symlink leaves the source root: -> {outside / 'o.png'}"
    assert reasons["cls/escape_dir"].startswith("symlink leaves the source root: ")
    assert reasons["cls/dangling.png"] == "broken symlink: target does not exist"
    assert [f.path for f in m.rejected] == sorted(reasons)


def test_symlink_root_itself_is_fine(tmp_path):
    touch(tmp_path, "real/a/x.png")
    os.symlink(tmp_path / "real", tmp_path / "alias")
    m = scan(tmp_path / "alias")
    assert [f.path for f in m.files] == ["a/x.png"]
    assert m.rejected == ()


def _scan_in_thread(root: Path) -> Manifest:
    result: list[Manifest] = []
    t = threading.Thread(target=lambda: result.append(scan(root)), daemon=True)
    t.start()
    t.join(timeout=20)
    assert not t.is_alive(), "scan hung"
    return result[0]


def test_symlink_loops_do_not_hang(tmp_path):
    touch(tmp_path, "a/x.png")
    touch(tmp_path, "b/y.png")
    os.symlink(tmp_path / "a", tmp_path / "a" / "self")  # a -> a
    os.symlink(tmp_path, tmp_path / "a" / "up")  # a -> root
    os.symlink(tmp_path / "b", tmp_path / "a" / "to_b")  # a -> b -> a
    os.symlink(tmp_path / "a", tmp_path / "b" / "to_a")
    os.symlink(tmp_path / "c", tmp_path / "d")  # c <-> d: a link cycle
    os.symlink(tmp_path / "d", tmp_path / "c")
    os.symlink(tmp_path / "f.png", tmp_path / "e.png")  # e.png <-> f.png
    os.symlink(tmp_path / "e.png", tmp_path / "f.png")
    m = _scan_in_thread(tmp_path)
    paths = [f.path for f in m.files]
    assert "a/x.png" in paths
    assert "b/y.png" in paths
    assert "a/to_b/y.png" in paths
    assert "b/to_a/x.png" in paths
    reasons = {f.path: f.error for f in m.rejected}
    assert reasons["a/self"].startswith("symlink loop: ")
    assert reasons["a/up"].startswith("symlink loop: ")
    assert reasons["a/to_b/to_a"].startswith("symlink loop: ")
    assert reasons["b/to_a/to_b"].startswith("symlink loop: ")
    assert reasons["e.png"] == reasons["f.png"] == "symlink loop: too many levels of links"
    assert "c" not in reasons
    assert "d" not in reasons


def test_fifo_is_rejected_not_opened(tmp_path):
    touch(tmp_path, "a/x.png")
    os.mkfifo(tmp_path / "a" / "pipe.jpg")
    m = _scan_in_thread(tmp_path)
    assert [f.path for f in m.files] == ["a/x.png"]
    assert [(f.path, f.error) for f in m.rejected] == [("a/pipe.jpg", "not a regular file")]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder: chmod cannot deny")
def test_unreadable_folder_is_rejected(tmp_path):
    touch(tmp_path, "a/x.png")
    touch(tmp_path, "b/y.png")
    (tmp_path / "b").chmod(0)
    try:
        m = scan(tmp_path)
    finally:
        (tmp_path / "b").chmod(0o755)
    assert [f.path for f in m.files] == ["a/x.png"]
    assert [(f.path, f.error) for f in m.rejected] == [
        ("b", "unreadable folder: permission denied")
    ]


def test_unreadable_folder_simulated(tmp_path, monkeypatch):
    touch(tmp_path, "a/x.png")
    touch(tmp_path, "b/y.png")
    real_scandir = os.scandir

    def fake_scandir(path):
        if os.fspath(path).endswith(os.sep + "b"):
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", fake_scandir)
    m = scan(tmp_path)
    assert [f.path for f in m.files] == ["a/x.png"]
    assert [(f.path, f.error) for f in m.rejected] == [
        ("b", "unreadable folder: permission denied")
    ]
