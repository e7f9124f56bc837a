from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from pipeline.decode import decode
from pipeline.errors import DecodeError, InvalidArgumentError
from pipeline.sources import scan
from pipeline.synthetic import BROKEN_KINDS, DEFAULT_MODES, MARKER, make_dataset

# the modes Pillow opens each written mode as (GIF stores L/P as P or L)
OPENS_AS = {
    "RGB": {"RGB"},
    "L": {"L", "P"},
    "RGBA": {"RGBA"},
    "P": {"P", "L"},
    "CMYK": {"CMYK"},
    "I;16": {"I;16"},
    "LA": {"LA"},
    "1": {"1"},
}


def _digest(root) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_deterministic_for_a_seed(tmp_path):
    a = make_dataset(tmp_path / "a", n_per_class=5, seed=1)
    b = make_dataset(tmp_path / "b", n_per_class=5, seed=1)
    c = make_dataset(tmp_path / "c", n_per_class=5, seed=2)
    assert a.files == b.files
    assert _digest(a.root) == _digest(b.root)
    assert _digest(a.root) != _digest(c.root)
    assert scan(a.root).fingerprint == scan(b.root).fingerprint
    assert scan(a.root).fingerprint != scan(c.root).fingerprint


def test_files_are_what_it_says(tmp_path):
    modes = (*DEFAULT_MODES, "LA", "1")
    ds = make_dataset(tmp_path / "d", n_per_class=9, seed=0, sizes=(20, 40), modes=modes)
    assert ds.classes == ("checkers", "noise", "rings", "stripes")
    assert len(ds.valid) == 4 * 9
    assert {f.broken for f in ds.broken} == set(BROKEN_KINDS.values())
    m = scan(ds.root)
    assert [f.path for f in m.files] == [f.path for f in ds.files]  # marker is hidden
    assert [f.label for f in m.files] == [f.label for f in ds.files]
    formats, seen_modes, orientations = set(), set(), set()
    for f in ds.valid:
        p = ds.root / f.path
        with Image.open(p) as im:
            assert im.mode in OPENS_AS[f.mode], (f.path, im.mode)
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
            assert orientation == f.orientation
            formats.add(im.format)
        seen_modes.add(f.mode)
        orientations.add(f.orientation)
        assert 20 <= h <= 40
        assert 20 <= w <= 40
        out = decode(p)
        assert out.shape[2] == 3
        assert out.dtype == (np.uint16 if f.mode == "I;16" else np.uint8)
        assert out.std() > 0  # textured, not constant
        assert f.label == ds.classes.index(f.path.split("/")[0])
    assert formats == {"JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"}
    assert seen_modes == set(modes)
    assert orientations - {1}
    for f in ds.broken:
        with pytest.raises(DecodeError) as e:
            decode(ds.root / f.path)
        assert e.value.reason.startswith(f.broken)


def test_multi_frame_gif_is_written(tmp_path):
    ds = make_dataset(tmp_path / "d", n_per_class=12, seed=0, modes=("P",), broken=False)
    frames = []
    for f in ds.valid:
        if f.path.endswith(".gif"):
            with Image.open(ds.root / f.path) as im:
                frames.append(getattr(im, "n_frames", 1))
    assert max(frames) == 2


def test_root_handling(tmp_path):
    ds = make_dataset(tmp_path / "d", n_per_class=1, broken=False)
    assert (ds.root / MARKER).is_file()
    make_dataset(tmp_path / "d", n_per_class=2, broken=False)  # rewrites its own folder
    assert len(scan(tmp_path / "d").files) == 8
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "x.txt").write_text("keep")
    with pytest.raises(InvalidArgumentError, match="root must be empty or a folder written by"):
        make_dataset(tmp_path / "mine")
    assert (tmp_path / "mine" / "x.txt").read_text() == "keep"
    (tmp_path / "f").write_text("")
    with pytest.raises(InvalidArgumentError, match="root must be a folder"):
        make_dataset(tmp_path / "f")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_per_class": -1}, "n_per_class must be an int >= 0, got -1"),
        ({"classes": ()}, "classes must be distinct non-empty"),
        ({"classes": ("a", "a")}, "classes must be distinct"),
        ({"classes": (".h",)}, "non-hidden"),
        ({"sizes": (5, 2)}, r"sizes must be \(lo, hi\) with 1 <= lo <= hi, got \(5, 2\)"),
        ({"modes": ("HSV",)}, "modes must be a non-empty list among"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(InvalidArgumentError, match=match):
        make_dataset(tmp_path / "d", **kwargs)
