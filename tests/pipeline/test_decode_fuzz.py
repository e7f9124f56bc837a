"""Property-based fuzz of the decoder: mutated image bytes give pixels or a reason, nothing else.

Small valid JPEG, PNG, WebP, TIFF, GIF (and BMP) files are made with Pillow;
hypothesis mutates their bytes (bit flips, truncation, inserted and deleted
bytes, header fields overwritten with extreme values) and every mutant goes
through scan -> decode / decode_histogram / decode_for_size, and a folder of
them through ``compute_stats``. Every outcome must be a decoded image or a
``DecodeError`` (a recorded ``Failure``) whose reason has a documented prefix
and is valid UTF-8; no other exception, no warning on stderr, and no call
slower than a generous hang limit.
"""

from __future__ import annotations

import functools
import io
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from ops import resize_to
from pipeline.decode import decode, decode_for_size, decode_histogram
from pipeline.errors import DecodeError
from pipeline.sources import scan
from pipeline.stats import compute_stats
from pipeline.transforms import to_tensor

REASON_PREFIXES = (
    "empty file",
    "permission denied",
    "file not found",
    "unreadable",
    "not an image",
    "corrupt image",
    "truncated image",
    "decompression bomb",
    "unsupported mode",
    "unsupported values",
    "out of memory",
)
HANG_LIMIT_S = 10.0  # a hang detector, not a speed requirement: each call takes milliseconds
MAX_PIXELS = 1 << 22  # mutated headers claim big sizes: keep each attempt cheap
SIZE = (16, 12)


def _encode(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


@functools.cache
def seeds() -> dict[str, tuple[str, bytes]]:
    """name -> (extension, bytes) of small valid files, several modes and codecs."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
    gray16 = Image.fromarray(rng.integers(0, 65536, (9, 14)).astype(np.uint16))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: a rotation, and an EXIF block to corrupt
    pal = rgb.convert("P")
    frames = [pal, rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT).convert("P")]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=50)
    apng = io.BytesIO()
    rgb.save(apng, "PNG", save_all=True, append_images=[rgb.rotate(90)], exif=exif.tobytes())
    pages = io.BytesIO()
    rgb.save(pages, "TIFF", save_all=True, append_images=[gray16], compression="tiff_deflate")
    return {
        "jpeg": ("jpg", _encode(rgb, "JPEG", quality=80, exif=exif.tobytes())),
        "mpo": ("jpg", _encode(rgb, "MPO", save_all=True, append_images=[rgb.rotate(180)])),
        "jpeg-progressive-cmyk": ("jpeg", _encode(rgb.convert("CMYK"), "JPEG", progressive=True)),
        "png-palette-trns": ("png", _encode(pal, "PNG", transparency=3)),
        "png-rgba": ("png", _encode(rgb.convert("RGBA"), "PNG")),
        "png-16": ("png", _encode(gray16, "PNG")),
        "apng-exif": ("png", apng.getvalue()),
        "webp-lossy": ("webp", _encode(rgb, "WEBP", quality=60)),
        "webp-lossless-rgba": ("webp", _encode(rgb.convert("RGBA"), "WEBP", lossless=True)),
        "tiff-lzw": ("tif", _encode(rgb, "TIFF", compression="tiff_lzw", exif=exif.tobytes())),
        "tiff-raw-16": ("tiff", _encode(gray16, "TIFF")),
        "tiff-pages-deflate": ("tif", pages.getvalue()),
        "tiff-float": (
            "tif",
            _encode(Image.fromarray(rng.random((7, 5)).astype(np.float32)), "TIFF"),
        ),
        "gif-animated": ("gif", gif.getvalue()),
        "bmp": ("bmp", _encode(rgb, "BMP")),
    }


EXTREMES = [
    b"\x00",
    b"\xff",
    b"\x00\x00",
    b"\xff\xff",
    b"\x7f\xff",
    b"\x80\x00",
    b"\x00\x00\x00\x00",
    b"\xff\xff\xff\xff",
    b"\x7f\xff\xff\xff",
    b"\x80\x00\x00\x00",
    b"\x00\x00\xff\xff",
    b"\xff\xff\x00\x00",
    b"\x00\x00\x00\x01",
]

position = st.one_of(st.integers(0, 63), st.integers(0, 1 << 20))  # headers, then anywhere
mutation = st.one_of(
    st.tuples(st.just("flip"), position, st.integers(0, 7)),
    st.tuples(st.just("truncate"), position),
    st.tuples(st.just("insert"), position, st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), position, st.integers(1, 64)),
    st.tuples(
        st.just("overwrite"),
        position,
        st.one_of(st.sampled_from(EXTREMES), st.binary(min_size=1, max_size=8)),
    ),
)
mutants = st.tuples(st.sampled_from(sorted(seeds())), st.lists(mutation, min_size=1, max_size=4))


def mutate(data: bytes, ops: list[tuple]) -> bytes:
    b = bytearray(data)
    for op in ops:
        kind, pos = op[0], op[1] % max(1, len(b))
        if kind == "flip" and b:
            b[pos] ^= 1 << op[2]
        elif kind == "truncate":
            del b[pos:]
        elif kind == "insert":
            b[pos:pos] = op[2]
        elif kind == "delete":
            del b[pos : pos + op[2]]
        elif kind == "overwrite":
            b[pos : pos + len(op[2])] = op[2]
    return bytes(b)


def check_reason(e: DecodeError) -> None:
    assert e.reason.startswith(REASON_PREFIXES), e.reason
    json.dumps({"error": e.reason}, ensure_ascii=False).encode("utf-8")  # JSON/Zarr-safe


def timed(fn):
    """Call fn; return its result or the DecodeError; fail on anything else or on a hang."""
    t0 = time.monotonic()
    try:
        out = fn()
    except DecodeError as e:
        check_reason(e)
        out = e
    elapsed = time.monotonic() - t0
    assert elapsed < HANG_LIMIT_S, f"{elapsed:.1f} s"
    return out


def check_file(path: Path) -> None:
    image = timed(lambda: decode(path, max_pixels=MAX_PIXELS))
    hist = timed(lambda: decode_histogram(path, max_pixels=MAX_PIXELS))
    sized = timed(lambda: decode_for_size(path, SIZE, max_pixels=MAX_PIXELS, draft=False))
    if isinstance(image, np.ndarray):
        assert image.ndim == 3
        assert image.shape[2] == 3
        assert image.dtype in (np.uint8, np.uint16)
    if not isinstance(hist, DecodeError):
        assert hist.counts.shape == (3, 2**hist.bits)
        assert (hist.counts >= 0).all()
        if isinstance(image, np.ndarray):
            assert hist.pixels == image.shape[0] * image.shape[1]
    if not isinstance(sized, DecodeError):
        pixels, bits = sized
        assert tuple(pixels.shape) == (3, *SIZE)
        assert bits in (8, 16)
        if isinstance(image, np.ndarray):  # the same values as the two-step path
            assert torch.equal(pixels, resize_to(to_tensor(image), SIZE))


@settings(
    max_examples=800,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(case=mutants, wrong_extension=st.booleans())
def test_mutated_files_decode_or_fail_with_a_reason(tmp_path, capfd, case, wrong_extension):
    name, ops = case
    ext, data = seeds()[name]
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    (root / f"m.{'png' if wrong_extension else ext}").write_bytes(mutate(data, ops))
    manifest = scan(root)
    assert len(manifest.files) == 1
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_file(manifest.abspath(manifest.files[0]))
    assert [str(w.message) for w in caught] == []
    assert capfd.readouterr().err == ""  # nor printed below Python (libtiff)


def test_every_seed_decodes(tmp_path):
    for name, (ext, data) in seeds().items():
        p = tmp_path / f"{name}.{ext}"
        p.write_bytes(data)
        check_file(p)
        assert not isinstance(timed(lambda p=p: decode(p)), DecodeError), name


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(cases=st.lists(mutants, min_size=4, max_size=24))
def test_compute_stats_over_a_folder_of_mutants(tmp_path, cases):
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    for i, (name, ops) in enumerate(cases):
        ext, data = seeds()[name]
        (root / f"{i:02d}.{ext}").write_bytes(mutate(data, ops))
    t0 = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stats = compute_stats(root, workers=2, chunk_size=5, max_pixels=MAX_PIXELS)
    assert time.monotonic() - t0 < HANG_LIMIT_S * len(cases)
    assert [str(w.message) for w in caught] == []
    assert stats.images + len(stats.failures) == len(cases)
    for f in stats.failures:
        assert f.error.startswith(REASON_PREFIXES), f
    json.dumps(stats.to_json(), ensure_ascii=False).encode("utf-8")


@pytest.mark.parametrize("name", sorted(seeds()))
def test_every_truncation_point_of_the_header(tmp_path, name):
    """Exhaustive over the first 200 cut points: truncated headers are the commonest damage."""
    ext, data = seeds()[name]
    for cut in range(min(200, len(data))):
        p = tmp_path / f"cut{cut}.{ext}"
        p.write_bytes(data[:cut])
        check_file(p)
