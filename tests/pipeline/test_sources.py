from __future__ import annotations

import hashlib
import io
import os
import random
import re
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


# ------------------------------------------------------------ names that are not text

HOSTILE_NAMES = [
    b"n\xff.jpg",  # not UTF-8: the name
    b"\xe9t\xe9.png",  # Latin-1
    b"\xed\xa0\x80surrogate.png",  # UTF-8 of a surrogate: not valid UTF-8
    b"new\nline.png",
    b"tab\there.png",
    b"back\\slash.png",
    b"50%.png",
    b"%FF-literal.png",  # reads like an escape: must become %25FF
    b"%25-literal.png",
    b"%ff-lower.png",  # lower case is never an escape: kept
    "caf\u00e9-nfc.png".encode(),
    "cafe\u0301-nfd.png".encode(),  # same text, other bytes: another file
    b" lead and trail .png",
    "\u2028sep\u00a0nbsp.png".encode(),
]


def _write_raw(root: Path, rel: bytes, data: bytes) -> None:
    path = os.path.join(os.fsencode(root), rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def test_scan_names_round_trip_to_the_files(tmp_path):
    import json

    from pipeline.sources import escape_path, source_path, unescape_path

    rels = [b"cls/" + n for n in HOSTILE_NAMES] + [b"cl\xe4ss/x.png", b"top\xfe.gif"]
    for i, rel in enumerate(rels):
        _write_raw(tmp_path, rel, b"file %d" % i)
    m = scan(tmp_path)
    assert len(m.files) == len(rels)
    by_content = {}
    for f in m.files:
        f.path.encode("utf-8")  # valid Unicode: JSON, Zarr and terminals take it
        assert f.path == escape_path(unescape_path(f.path))
        with open(source_path(tmp_path, f.path), "rb") as fp:
            by_content[fp.read()] = f
        assert m.abspath(f) == Path(source_path(tmp_path, f.path))
        assert json.loads(json.dumps(f.path, ensure_ascii=False)) == f.path
    assert sorted(by_content) == sorted(b"file %d" % i for i in range(len(rels)))
    for i, rel in enumerate(rels):
        assert unescape_path(by_content[b"file %d" % i].path) == rel
    names = {f.path for f in m.files}
    assert "cls/n%FF.jpg" in names
    assert "cls/%25FF-literal.png" in names
    assert "cls/%2525-literal.png" in names
    assert "cls/50%.png" in names  # kept: no escape needed
    assert "cls/%ff-lower.png" in names
    assert "cls/new\nline.png" in names
    assert "cls/back\\slash.png" in names
    assert "cls/caf\u00e9-nfc.png" in names
    assert "cls/cafe\u0301-nfd.png" in names  # never normalized
    assert m.classes == ("cl%E4ss", "cls")
    assert [f.path for f in m.files] == sorted(names)
    # the fingerprint hashes the raw bytes, as before the escaping
    h = hashlib.sha256()
    for f in m.files:
        h.update(unescape_path(f.path) + b"\0%d\0%d\n" % (f.size, f.mtime_ns))
    assert m.fingerprint == h.hexdigest()


def test_hostile_names_through_stats_and_the_store(tmp_path):
    """The issue's case: a name that is not UTF-8 no longer aborts the store's `paths`."""
    import numpy as np
    import zarr
    from PIL import Image

    from pipeline.decode import decode_histogram
    from pipeline.sources import source_path

    buf = io.BytesIO()
    Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3)).save(buf, "PNG")
    for name in HOSTILE_NAMES:
        _write_raw(tmp_path, b"a/" + name.replace(b".jpg", b".png"), buf.getvalue())
    m = scan(tmp_path)
    for f in m.files:
        assert decode_histogram(source_path(m.root, f.path)).pixels == 16
    group = zarr.open_group(str(tmp_path.parent / "s.zarr"), mode="w")
    arr = group.create_array("paths", shape=(len(m),), dtype=str, chunks=(len(m),))
    arr[:] = [f.path for f in m.files]
    assert list(arr[:]) == [f.path for f in m.files]
    group.attrs["failures"] = [{"path": f.path, "error": "x"} for f in m.files]


def test_unescape_rejects_a_raw_os_string():
    from pipeline.sources import unescape_path

    with pytest.raises(InvalidArgumentError, match="must be a manifest name"):
        unescape_path(os.fsdecode(b"n\xff.jpg"))


@settings(max_examples=500, deadline=None)
@given(
    raw=st.binary(max_size=40) | st.text(max_size=20).map(lambda t: t.encode("utf-8", "replace"))
)
def test_escape_is_lossless_and_minimal(raw):
    from pipeline.sources import escape_path, unescape_path

    name = escape_path(raw)
    name.encode("utf-8")  # never a lone surrogate
    assert unescape_path(name) == raw
    assert escape_path(os.fsdecode(raw)) == name  # the OS's str form gives the same name
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        assert "%" in name
    else:
        if re.search("%(25|[89A-F][0-9A-F])", text) is None:
            assert name == text  # nothing to escape: unchanged


@settings(max_examples=300, deadline=None)
@given(name=st.text(alphabet=st.sampled_from("%2589ABCFfx/é\n\\"), max_size=16))
def test_escape_of_percent_heavy_text(name):
    from pipeline.sources import escape_path, unescape_path

    assert unescape_path(escape_path(name.encode())) == name.encode()
    assert unescape_path(escape_path(name.encode())).decode() == name


def test_rejections_carry_escaped_names(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(os.fsencode(root) + b"/nowhere\xff.png", os.fsencode(root) + b"/br\xff.png")
    outside = tmp_path / "out\udcfe.png"
    outside.write_bytes(b"x")
    os.symlink(outside, os.fsencode(root) + b"/esc\xfd.png")
    m = scan(root)
    assert m.files == ()
    by_path = {f.path: f.error for f in m.rejected}
    assert by_path["br%FF.png"] == "broken symlink: target does not exist"
    assert by_path["esc%FD.png"].endswith("out%FE.png")
    for f in m.rejected:
        (f.path + f.error).encode("utf-8")
