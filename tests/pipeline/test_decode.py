from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.decode import (
    DEFAULT_MAX_PIXELS,
    EIGHT_BIT_MODES,
    decode,
    decode_histogram,
    open_image,
)
from pipeline.errors import DecodeError, InvalidArgumentError
from tests.pipeline.conftest import png_bytes, random_rgb, save


def test_default_limit_is_pillows():
    code = "from PIL import Image; print(Image.MAX_IMAGE_PIXELS)"
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(fresh.stdout) == DEFAULT_MAX_PIXELS == 89478485
    from pipeline.cli import PILLOW_MAX_PIXELS

    assert PILLOW_MAX_PIXELS == DEFAULT_MAX_PIXELS


# ----------------------------------------------------------------- modes


def _rgb_image(seed=0, h=23, w=31) -> Image.Image:
    return Image.fromarray(random_rgb(np.random.default_rng(seed), h, w))


EIGHT_BIT_CASES = [
    ("1", "png"),
    ("1", "tif"),
    ("L", "png"),
    ("L", "jpg"),
    ("LA", "png"),
    ("P", "png"),
    ("P", "gif"),
    ("P", "bmp"),
    ("PA", "tif"),
    ("RGB", "png"),
    ("RGB", "jpg"),
    ("RGB", "webp"),
    ("RGB", "bmp"),
    ("RGBA", "png"),
    ("RGBA", "webp"),
    ("RGBA", "tif"),
    ("RGBX", "tif"),
    ("CMYK", "jpg"),
    ("CMYK", "tif"),
    ("YCbCr", "tif"),
]


def _make_mode(mode: str, seed: int) -> Image.Image:
    rgb = _rgb_image(seed)
    if mode == "PA":
        return rgb.convert("P").convert("PA")
    if mode == "LA":
        la = rgb.convert("LA")
        alpha = np.random.default_rng(seed).integers(0, 256, la.size[::-1]).astype(np.uint8)
        la.putalpha(Image.fromarray(alpha))
        return la
    if mode == "RGBA":
        a = np.dstack([np.asarray(rgb), np.random.default_rng(seed).integers(0, 256, (23, 31))])
        return Image.fromarray(a.astype(np.uint8), "RGBA")
    return rgb.convert(mode)


@pytest.mark.parametrize(("mode", "fmt"), EIGHT_BIT_CASES)
def test_eight_bit_modes_equal_pillow_convert_rgb(tmp_path, mode, fmt):
    p = save(_make_mode(mode, seed=len(mode) + len(fmt)), tmp_path / f"x.{fmt}")
    with Image.open(p) as im:
        assert im.mode in EIGHT_BIT_MODES
        ref = np.asarray(im.convert("RGB"))
    out = decode(p)
    assert out.dtype == np.uint8
    assert out.shape == (23, 31, 3)
    assert out.flags.c_contiguous
    assert out.flags.writeable
    np.testing.assert_array_equal(out, ref)
    h = decode_histogram(p)
    assert h.bits == 8
    for c in range(3):
        np.testing.assert_array_equal(h.counts[c], np.bincount(ref[..., c].ravel(), minlength=256))


@pytest.mark.parametrize("transparency", [3, bytes(range(0, 256, 16))])
def test_palette_transparency_is_dropped_without_warnings(tmp_path, transparency):
    im = _rgb_image(4).quantize(16)
    p = save(im, tmp_path / "t.png", transparency=transparency)
    with Image.open(p) as ref_im, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = np.asarray(ref_im.convert("RGB"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = decode(p)
        h = decode_histogram(p)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(h.counts[2], np.bincount(ref[..., 2].ravel(), minlength=256))


def test_alpha_is_dropped_not_composited(tmp_path):
    a = np.zeros((4, 5, 4), np.uint8)
    a[..., 0] = 200
    a[..., 3] = 0  # fully transparent
    p = save(Image.fromarray(a, "RGBA"), tmp_path / "t.png")
    out = decode(p)
    assert (out[..., 0] == 200).all()
    assert (out[..., 1:] == 0).all()


SIXTEEN_BIT_CASES = ["png16", "tif16", "tif16be", "tif_int32", "tif_float"]


def _sixteen(kind: str, tmp_path, rng):
    h, w = 17, 26
    u = rng.integers(0, 65536, size=(h, w)).astype(np.uint16)
    u[0, 0], u[0, 1] = 0, 65535
    if kind == "png16":
        p = tmp_path / "g.png"
        p.write_bytes(png_bytes(u))  # written by hand: a real 16-bit grayscale PNG
        return p, u.astype(np.int64)
    if kind == "tif16":
        return save(Image.fromarray(u), tmp_path / "g.tif"), u.astype(np.int64)
    if kind == "tif16be":  # big-endian samples: Pillow opens it as I;16B
        tifffile = pytest.importorskip("tifffile")
        tifffile.imwrite(tmp_path / "g.tif", u, byteorder=">")
        with Image.open(tmp_path / "g.tif") as im:
            assert im.mode == "I;16B"
        return tmp_path / "g.tif", u.astype(np.int64)
    if kind == "tif_int32":
        return save(Image.fromarray(u.astype(np.int32)), tmp_path / "g.tif"), u.astype(np.int64)
    f = rng.random((h, w)).astype(np.float32)
    f[0, 0], f[0, 1], f[0, 2] = 0.0, 1.0, 0.5 / 65535  # 0.5 ulp of the 16-bit grid
    ref = np.round(f.astype(np.float64) * 65535).astype(np.int64)
    return save(Image.fromarray(f), tmp_path / "g.tif"), ref


@pytest.mark.parametrize("kind", SIXTEEN_BIT_CASES)
def test_sixteen_bit_sources_keep_their_values(tmp_path, kind):
    p, ref = _sixteen(kind, tmp_path, np.random.default_rng(len(kind)))
    out = decode(p)
    assert out.dtype == np.uint16
    assert out.shape == (*ref.shape, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c].astype(np.int64), ref)
    h = decode_histogram(p)
    assert h.bits == 16
    assert h.counts.shape == (3, 65536)
    np.testing.assert_array_equal(h.counts[1], np.bincount(ref.ravel(), minlength=65536))


def test_float_rounding_is_half_to_even_on_the_16_bit_grid(tmp_path):
    f = np.array([[0.5 / 65535, 1.5 / 65535, 2.5 / 65535, 1.0]], np.float32)
    p = save(Image.fromarray(f), tmp_path / "f.tif")
    got = decode(p)[0, :, 0]
    expect = np.rint(f.astype(np.float64) * 65535)[0]  # float32 inputs are not exact halves
    np.testing.assert_array_equal(got, expect.astype(np.uint16))


@pytest.mark.parametrize(
    ("values", "dtype", "match"),
    [
        ([[-1, 5]], np.int32, r"unsupported values: integer image \(mode I\) .*min -1, max 5"),
        ([[0, 65536]], np.int32, r"outside 0\.\.65535 \(min 0, max 65536\)"),
        ([[0.0, 1.5]], np.float32, r"unsupported values: float image \(mode F\) .*max 1\.5"),
        ([[-0.25, 0.5]], np.float32, r"float image \(mode F\) with values outside \[0, 1\]"),
        ([[np.nan, 0.5]], np.float32, r"not finite"),
        ([[np.inf, 0.5]], np.float32, r"not finite"),
    ],
)
def test_out_of_range_int_and_float_are_rejected(tmp_path, values, dtype, match):
    p = save(Image.fromarray(np.array(values, dtype=dtype)), tmp_path / "v.tif")
    with pytest.raises(DecodeError, match=match):
        decode(p)
    with pytest.raises(DecodeError, match=match):
        decode_histogram(p)


def test_unsupported_mode(tmp_path):
    p = save(_rgb_image().convert("LAB"), tmp_path / "lab.tif")
    with pytest.raises(DecodeError) as e:
        decode(p)
    assert e.value.reason == "unsupported mode: LAB"
    assert e.value.path == str(p)


def test_pillow_reads_16_bit_rgb_as_8_bit_high_byte(tmp_path):
    # Documented Pillow 13 limitation: 16-bit LA/RGB/RGBA PNGs come out 8-bit (v >> 8).
    rng = np.random.default_rng(5)
    for c in (2, 3, 4):  # gray+alpha, RGB, RGBA
        u = rng.integers(0, 65536, size=(6, 9, c)).astype(np.uint16)
        p = tmp_path / f"rgb16_{c}.png"
        p.write_bytes(png_bytes(u))
        out = decode(p)
        assert out.dtype == np.uint8
        color = np.repeat(u[..., :1], 3, axis=2) if c == 2 else u[..., :3]
        np.testing.assert_array_equal(out, (color >> 8).astype(np.uint8))
    # also 16-bit RGB TIFF (written by tifffile, independent of Pillow's writer)
    tifffile = pytest.importorskip("tifffile")
    u = rng.integers(0, 65536, size=(5, 7, 3)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "rgb16.tif", u, photometric="rgb")
    np.testing.assert_array_equal(decode(tmp_path / "rgb16.tif"), (u >> 8).astype(np.uint8))


def test_multi_frame_gif_and_tiff_give_the_first_frame(tmp_path):
    frames = [_rgb_image(s, 12, 14).convert("P") for s in range(3)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "a.tif", save_all=True, append_images=frames[1:])
    for name in ("a.gif", "a.tif"):
        with Image.open(tmp_path / name) as im:
            assert im.n_frames == 3
            ref = np.asarray(im.convert("RGB"))
        np.testing.assert_array_equal(decode(tmp_path / name), ref)


# ------------------------------------------------------------ orientation

ORIENT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1, :],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # transverse (anti-diagonal)
    8: lambda a: np.rot90(a, 1),
}


def _jpeg_with_orientation(path, rgb: np.ndarray, orientation: int, quality: int = 95):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rgb).save(path, "JPEG", quality=quality, exif=exif.tobytes())
    return path


@pytest.mark.parametrize("orientation", list(ORIENT))
def test_exif_orientation_is_applied(tmp_path, orientation):
    rgb = random_rgb(np.random.default_rng(orientation), 24, 40)  # H=24, W=40
    p = _jpeg_with_orientation(tmp_path / "o.jpg", rgb, orientation)
    with Image.open(p) as im:  # the stored pixels, not transposed
        raw = np.asarray(im.convert("RGB"))
    out = decode(p)
    expected = ORIENT[orientation](raw)
    assert out.shape == expected.shape
    assert out.shape[:2] == ((40, 24) if orientation >= 5 else (24, 40))
    np.testing.assert_array_equal(out, expected)
    # histograms do not depend on orientation
    h = decode_histogram(p)
    np.testing.assert_array_equal(h.counts[0], np.bincount(raw[..., 0].ravel(), minlength=256))


def test_exif_orientation_6_corner_pixel(tmp_path):
    # a red top-left block: after rotating 90 degrees clockwise it is at the top right
    rgb = np.zeros((32, 48, 3), np.uint8)
    rgb[:8, :8] = (255, 0, 0)
    p = _jpeg_with_orientation(tmp_path / "o6.jpg", rgb, 6, quality=100)
    out = decode(p)
    assert out.shape == (48, 32, 3)
    assert out[2, -3, 0] > 200
    assert out[2, -3, 1] < 60
    assert out[2, 2, 0] < 60


# ----------------------------------------------------------------- draft


def test_draft_gives_the_smallest_scale_at_least_the_request(tmp_path):
    rng = np.random.default_rng(9)
    rgb = random_rgb(rng, 300, 400)
    p = tmp_path / "d.jpg"
    Image.fromarray(rgb).save(p, "JPEG", quality=90)
    full = decode(p)
    assert full.shape == (300, 400, 3)
    for (min_h, min_w), expect in [
        ((100, 120), (150, 200)),  # 1/2: 1/4 would be 75 x 100
        ((70, 90), (75, 100)),  # 1/4
        ((30, 40), (38, 50)),  # 1/8 (ceil)
        ((151, 10), (300, 400)),  # 1/2 would be 150 high: too small
        ((1000, 1000), (300, 400)),  # larger than the image: full size
    ]:
        out = decode(p, draft=(min_h, min_w))
        assert out.shape[:2] == expect
        assert out.shape[0] >= min(min_h, 300)
        assert out.shape[1] >= min(min_w, 400)
    # the draft decode is a downscaled version of the same picture
    half = decode(p, draft=(150, 200)).astype(np.float64)
    ref = full.astype(np.float64).reshape(150, 2, 200, 2, 3).mean(axis=(1, 3))
    assert np.abs(half - ref).mean() < 12


def test_draft_accounts_for_rotated_orientation(tmp_path):
    rgb = random_rgb(np.random.default_rng(2), 200, 800)  # stored 800 wide, 200 high
    p = _jpeg_with_orientation(tmp_path / "r.jpg", rgb, 6, quality=90)
    assert decode(p).shape == (800, 200, 3)  # displayed 200 wide, 800 high
    out = decode(p, draft=(390, 90))
    assert out.shape == (400, 100, 3)  # 1/2, rotated; >= (390, 90)
    out = decode(p, draft=(401, 90))
    assert out.shape == (800, 200, 3)  # 1/2 would be 400 high: full size


def test_draft_has_no_effect_on_other_formats(tmp_path):
    p = save(_rgb_image(1, 64, 80), tmp_path / "p.png")
    np.testing.assert_array_equal(decode(p, draft=(8, 8)), decode(p))


@pytest.mark.parametrize("draft", [(0, 5), (5,), [5, 5], (5.0, 5), (-1, 2), (True, 3)])
def test_bad_draft(tmp_path, draft):
    p = save(_rgb_image(), tmp_path / "p.png")
    with pytest.raises(
        InvalidArgumentError, match=r"draft must be None or a pair \(min_h, min_w\)"
    ):
        decode(p, draft=draft)


@pytest.mark.parametrize("max_pixels", [0, -5, 2.5, True])
def test_bad_max_pixels(tmp_path, max_pixels):
    p = save(_rgb_image(), tmp_path / "p.png")
    with pytest.raises(InvalidArgumentError, match="max_pixels must be a positive int or None"):
        decode(p, max_pixels=max_pixels)


# ------------------------------------------------------------ failures


def _bomb_png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 10))
        + chunk(b"IEND", b"")
    )


def _reason(path, **kwargs) -> str:
    with pytest.raises(DecodeError) as e:
        decode(path, **kwargs)
    assert e.value.path == str(path)
    assert str(e.value) == f"{path}: {e.value.reason}"
    return e.value.reason


def test_decompression_bomb_above_twice_pillows_limit(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(_bomb_png(20000, 10000))
    assert _reason(p) == "decompression bomb: 200000000 pixels > limit 89478485"
    assert os.path.getsize(p) < 200


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_between_one_and_two_times_pillows_limit_is_an_error(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(_bomb_png(12000, 10000))  # Pillow only warns for this one
    assert _reason(p) == "decompression bomb: 120000000 pixels > limit 89478485"


def test_bomb_limit_is_configurable_and_strict(tmp_path):
    p = save(_rgb_image(0, 50, 40), tmp_path / "x.png")
    assert _reason(p, max_pixels=1999) == "decompression bomb: 2000 pixels > limit 1999"
    assert decode(p, max_pixels=2000).shape == (50, 40, 3)  # = limit is fine
    assert decode(p, max_pixels=None).shape == (50, 40, 3)
    with pytest.raises(DecodeError, match="decompression bomb: 2000 pixels > limit 100"):
        decode_histogram(p, max_pixels=100)


def test_larger_limit_than_pillows_is_honoured(tmp_path):
    p = tmp_path / "big.png"
    p.write_bytes(_bomb_png(20000, 10000))
    # allowed by the limit: Pillow must not refuse it; the tiny data is then truncated
    reason = _reason(p, max_pixels=200_000_000)
    assert not reason.startswith("decompression bomb"), reason


def test_every_failure_has_a_reason(tmp_path):
    good = io.BytesIO()
    Image.fromarray(random_rgb(np.random.default_rng(0), 60, 80)).save(good, "JPEG", quality=90)
    jpeg = good.getvalue()
    cases = {}
    (tmp_path / "trunc.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    cases["trunc.jpg"] = "truncated image: image file is truncated"
    png = png_bytes(random_rgb(np.random.default_rng(1), 30, 30))
    (tmp_path / "trunc.png").write_bytes(png[: len(png) // 2])
    cases["trunc.png"] = "truncated image: "
    (tmp_path / "empty.png").write_bytes(b"")
    cases["empty.png"] = "empty file"
    (tmp_path / "text.jpg").write_bytes(b"hello, I am text\n" * 3)
    cases["text.jpg"] = "not an image: cannot identify image file"
    bad = bytearray(png)
    i = bad.find(b"IDAT") + 4
    bad[i : i + 2] = b"\xff\xff"
    (tmp_path / "corrupt.png").write_bytes(bytes(bad))
    cases["corrupt.png"] = "corrupt image: "
    hdr = bytearray(png)
    hdr[20] ^= 0xFF  # IHDR bytes no longer match their CRC
    (tmp_path / "header.png").write_bytes(bytes(hdr))
    cases["header.png"] = "corrupt image: cannot read the PNG header"
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
    (tmp_path / "eps.jpg").write_bytes(eps)  # a format Pillow knows but we do not try
    cases["eps.jpg"] = "not an image: "
    (tmp_path / "dir.png").mkdir()
    cases["dir.png"] = "unreadable: is a directory"
    cases["missing.png"] = "file not found"
    for name, prefix in cases.items():
        assert _reason(tmp_path / name).startswith(prefix), name
        with pytest.raises(DecodeError, match="^" + str(tmp_path / name)):
            decode_histogram(tmp_path / name)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file: chmod cannot deny")
def test_permission_denied_with_chmod(tmp_path):
    p = save(_rgb_image(), tmp_path / "x.png")
    p.chmod(0)
    assert _reason(p) == "permission denied"


def test_permission_denied_simulated(tmp_path, monkeypatch):
    import pipeline.decode as decode_module

    p = save(_rgb_image(), tmp_path / "x.png")

    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(decode_module, "open", deny, raising=False)
    assert _reason(p) == "permission denied"


def test_open_image_keeps_mode_and_orientation_flag(tmp_path):
    rgb = random_rgb(np.random.default_rng(3), 10, 30)
    p = _jpeg_with_orientation(tmp_path / "o.jpg", rgb, 8)
    assert open_image(p).size == (10, 30)
    assert open_image(p, orient=False).size == (30, 10)
    q = save(Image.fromarray(rgb).convert("CMYK"), tmp_path / "c.tif")
    assert open_image(q).mode == "CMYK"


# --------------------------------------------------- decode_for_size: exact and bounded


def _mode_file(tmp_path, mode: str, fmt: str, orientation: int, seed: int):
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(20, 90, size=2))
    if mode == "I;16":
        im = Image.fromarray(rng.integers(0, 65536, (h, w)).astype(np.uint16))
    elif mode == "F":
        im = Image.fromarray(rng.random((h, w)).astype(np.float32))
    else:
        im = Image.fromarray(random_rgb(rng, h, w)).convert(mode)
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = tmp_path / f"{mode.replace(';', '')}-{orientation}.{fmt}"
    im.save(p, exif=exif.tobytes())
    return p


FOR_SIZE_CASES = [
    ("RGB", "jpg"),
    ("L", "png"),
    ("P", "png"),
    ("1", "png"),
    ("I;16", "png"),
    ("F", "tif"),
    ("RGBA", "webp"),
    ("CMYK", "tif"),
]


@pytest.fixture(params=["one band", "many bands"])
def bands(request, monkeypatch):
    """Images resized whole (one call), or in bands of a few rows (as huge images are)."""
    import pipeline.decode as decode_module

    if request.param == "many bands":
        monkeypatch.setattr(decode_module, "_BAND_VALUES", 3 * 40 * 3)
    return request.param


@pytest.mark.usefixtures("bands")
@pytest.mark.parametrize(("mode", "fmt"), FOR_SIZE_CASES)
@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
def test_decode_for_size_equals_decode_then_resize(tmp_path, mode, fmt, orientation):
    from ops import resize_to, resized_crop
    from ops.geometry import RESIZE_MODES
    from pipeline.decode import decode_for_size
    from pipeline.transforms import to_tensor

    p = _mode_file(tmp_path, mode, fmt, orientation, seed=orientation)
    h, w = decode(p).shape[:2]
    for size in [(17, 23), (64, 64), (h, w), (150, 9)]:  # down, up, same, mixed
        for resize in RESIZE_MODES:
            for draft in (True, False):
                expected = resize_to(
                    to_tensor(decode(p, draft=size if draft else None)), size, mode=resize
                )
                got, bits = decode_for_size(p, size, mode=resize, draft=draft)
                assert got.dtype == expected.dtype
                assert bits == (16 if mode in ("I;16", "F") else 8)
                assert torch.equal(got, expected), (size, resize, draft)
    rng = np.random.default_rng(orientation)
    for _ in range(4):
        x1, x2 = sorted(int(v) for v in rng.choice(w + 1, 2, replace=False))
        y1, y2 = sorted(int(v) for v in rng.choice(h + 1, 2, replace=False))
        got, _ = decode_for_size(p, (20, 30), box=lambda hh, ww, b=(x1, y1, x2, y2): b)
        assert torch.equal(got, resized_crop(to_tensor(decode(p)), (x1, y1, x2, y2), (20, 30)))


def test_rgb_pixels_are_read_in_place_and_resize_to_the_copys_values(tmp_path, monkeypatch):
    import gc

    import pipeline.decode as decode_module
    from ops import resize_to
    from pipeline.decode import _rgbx_view, decode_for_size, decode_measured
    from pipeline.transforms import to_tensor

    # the view is Pillow's memory: it outlives the image, and equals a copy
    im = Image.fromarray(random_rgb(np.random.default_rng(3), 37, 53))
    expected = np.array(im)
    view = _rgbx_view(im)
    assert view is not None
    assert view.shape == (37, 53, 4)
    del im
    gc.collect()
    filler = [Image.new("RGB", (53, 37), (9, 9, 9)) for _ in range(20)]  # reuse freed memory
    assert np.array_equal(view[..., :3], expected)
    del filler

    # not RGB, or rows in several blocks (over 16 MB): no view, the copy is resized
    assert _rgbx_view(Image.new("L", (8, 8))) is None
    assert _rgbx_view(Image.new("RGBA", (8, 8))) is None
    assert _rgbx_view(Image.new("RGB", (3000, 2000))) is None

    views = []
    monkeypatch.setattr(
        decode_module, "_rgbx_view", lambda im: views.append(_rgbx_view(im)) or views[-1]
    )
    p = tmp_path / "photo.jpg"
    Image.fromarray(random_rgb(np.random.default_rng(4), 120, 90)).save(p, quality=90)
    reference = resize_to(to_tensor(decode(p)), (32, 32), mode="shorter-side-crop")
    got, _ = decode_for_size(p, (32, 32), draft=False)
    measured, _, _ = decode_measured(p, (32, 32))
    assert len(views) == 2
    assert all(v is not None for v in views)
    assert torch.equal(got, reference)
    assert torch.equal(measured, reference)

    big = tmp_path / "big.jpg"
    Image.fromarray(random_rgb(np.random.default_rng(5), 1100, 4000)).save(big, quality=90)
    got, _ = decode_for_size(big, (32, 32), draft=False)
    assert len(views) == 2  # 17.6 MB of RGBX: resized band by band, from copies
    assert torch.equal(got, resize_to(to_tensor(decode(big)), (32, 32)))


def test_decode_for_size_box_gets_the_displayed_size(tmp_path):
    from pipeline.decode import decode_for_size

    rgb = random_rgb(np.random.default_rng(0), 30, 50)
    p = _jpeg_with_orientation(tmp_path / "o.jpg", rgb, 6)
    seen = []

    def box(h, w):
        seen.append((h, w))
        return (0, 0, w, h)

    decode_for_size(p, (8, 8), box=box)
    assert seen == [(50, 30)]


def test_decode_for_size_bad_arguments(tmp_path):
    from pipeline.decode import decode_for_size

    p = save(_rgb_image(), tmp_path / "p.png")
    for size in [(0, 5), (5,), (5.0, 5), (True, 2), "ab"]:
        with pytest.raises(InvalidArgumentError, match=r"size must be a pair \(h, w\)"):
            decode_for_size(p, size)
    with pytest.raises(InvalidArgumentError, match="mode must be one of"):
        decode_for_size(p, (4, 4), mode="crop")
    with pytest.raises(InvalidArgumentError, match="huge_pixels must be a positive int or None"):
        decode_for_size(p, (4, 4), huge_pixels=0)
    with pytest.raises(InvalidArgumentError, match="box must select pixels"):
        decode_for_size(p, (4, 4), box=lambda h, w: (5, 5, 5, 9))
    (tmp_path / "t.png").write_bytes(b"text")
    with pytest.raises(DecodeError, match="not an image"):
        decode_for_size(tmp_path / "t.png", (4, 4))


def test_huge_images_are_decoded_one_at_a_time(tmp_path, monkeypatch):
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    import pipeline.decode as decode_module

    paths = [save(_rgb_image(i, 40, 40), tmp_path / f"{i}.png") for i in range(6)]
    active, peak, lock = [0], [0], threading.Lock()
    real = decode_module._region_resized

    def slow(*args, **kwargs):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        try:
            return real(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(decode_module, "_region_resized", slow)
    for huge_pixels, expected in [(40 * 40 - 1, 1), (40 * 40, len(paths))]:
        peak[0] = 0
        with ThreadPoolExecutor(len(paths)) as pool:
            list(
                pool.map(
                    lambda p, hp=huge_pixels: decode_module.decode_for_size(
                        p, (8, 8), huge_pixels=hp
                    ),
                    paths,
                )
            )
        if expected == 1:
            assert peak[0] == 1  # above the threshold: one at a time
        else:
            assert peak[0] > 1  # at or below it: in parallel


MEMORY_CHILD = r"""
import re, sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pipeline.decode import decode_for_size, decode_histogram

path, files = sys.argv[1], sys.argv[2:]


def status(key):
    return int(re.search(key + r":\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


if path == "stats":
    work = decode_histogram
else:
    def work(p):
        decode_for_size(p, (224, 224))
work(files[0] + ".small.png")  # warm up: lazy imports, torch kernels
Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to now
base = status("VmRSS")
if path == "stats":  # a stats chunk decodes its files one after the other
    for f in files:
        work(f)
else:  # the run decodes in a pool of threads
    with ThreadPoolExecutor(len(files)) as pool:
        list(pool.map(work, files))
print((status("VmHWM") - base) / 1024)
"""


@pytest.mark.slow
@pytest.mark.skipif(
    not os.path.exists("/proc/self/clear_refs"), reason="measures the peak RSS through Linux /proc"
)
def test_run_decode_peak_memory_within_twice_the_stats_decode(tmp_path):
    """Two 9000 x 9000 PNGs (legal: 81 MP < 89.5 MP; 100 KB each), two decode threads.

    Peak RSS growth of decode_for_size (the run's loader) must stay below twice
    that of decode_histogram (the statistics' decode) on the same files. The
    old path, decode + resize_image, needed about 11x (855 MB vs 77 MB).
    """
    files = []
    for i in range(2):
        a = np.zeros((9000, 9000), np.uint8)
        a[::97, :] = 200 + i
        a[:, ::89] = 50
        files.append(str(save(Image.fromarray(a), tmp_path / f"big{i}.png", compress_level=1)))
        del a
    Image.new("L", (300, 200), 9).save(files[0] + ".small.png")

    def growth_mb(path: str) -> float:
        cmd = [sys.executable, "-c", MEMORY_CHILD, path, *files]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=300)
        assert done.stderr == ""
        return float(done.stdout.strip().splitlines()[-1])

    stats, run = growth_mb("stats"), growth_mb("run")
    assert stats > 60  # the measurement sees Pillow's 81 MB image
    assert run < 2 * stats, (run, stats)


# ----------------------------------------------------------------- warnings


def _warning_files(tmp_path) -> dict[str, Path]:
    """Files on which Pillow or NumPy warn while decoding, and the expected outcome."""
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "maker"
    out = {}
    p = tmp_path / "corrupt-exif.jpg"
    Image.fromarray(random_rgb(np.random.default_rng(0), 8, 10)).save(
        p,
        "JPEG",
        exif=exif.tobytes()[:20],  # an IFD entry cut short: "Corrupt EXIF data"
    )
    out["corrupt-exif"] = p
    nan = tmp_path / "nan.tif"
    Image.fromarray(np.full((5, 4), np.nan, np.float32)).save(nan)
    out["all-nan"] = nan
    pal = tmp_path / "pal.png"
    Image.fromarray(random_rgb(np.random.default_rng(1), 6, 6)).convert("P").save(
        pal, transparency=b"\x00\x10" * 8
    )
    out["palette-bytes-trns"] = pal
    return out


def test_warnings_never_leak_and_are_logged(tmp_path, capfd, caplog):
    import logging

    files = _warning_files(tmp_path)
    bomb = save(_rgb_image(0, 20, 20), tmp_path / "bomb.png")
    capfd.readouterr()
    reasons = {}
    with caplog.at_level(logging.DEBUG, logger="pipeline.decode"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for name, p in files.items():
                for fn in (decode, decode_histogram):
                    try:
                        fn(p)
                    except DecodeError as e:
                        reasons[name] = e.reason
            Image.MAX_IMAGE_PIXELS = 300  # Pillow warns between 300 and 600 pixels
            with pytest.raises(DecodeError, match="decompression bomb: 400 pixels > limit 300"):
                decode(bomb, max_pixels=300)
        assert [str(w.message) for w in caught] == []
    assert capfd.readouterr().err == ""
    assert reasons == {
        "all-nan": "unsupported values: float image (mode F) with values outside [0, 1] or "
        "not finite (min nan, max nan)"
    }
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "decoder warning ignored: UserWarning: Corrupt EXIF data" in logged
    assert "DecompressionBombWarning" in logged
    # the EXIF block is unreadable: orientation 1, pixels kept
    assert decode(files["corrupt-exif"]).shape == (8, 10, 3)


def test_no_warning_output_in_a_fresh_process(tmp_path):
    files = _warning_files(tmp_path)
    code = (
        "import sys\n"
        "from pipeline.decode import decode, decode_for_size, decode_histogram\n"
        "from pipeline.errors import DecodeError\n"
        "for p in sys.argv[1:]:\n"
        "    for f in (decode, decode_histogram, lambda p: decode_for_size(p, (4, 4))):\n"
        "        try:\n"
        "            f(p)\n"
        "        except DecodeError as e:\n"
        "            print(e.reason)\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "always", "-c", code, *map(str, files.values())],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stderr == ""
    assert done.stdout.count("unsupported values") == 3  # the all-NaN float image, 3 ways


def test_warnings_of_other_threads_are_still_shown(tmp_path):
    import threading

    p = _warning_files(tmp_path)["corrupt-exif"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decode(p)  # installs the routing hook
        t = threading.Thread(
            target=lambda: warnings.warn("not from decoding", UserWarning, stacklevel=1)
        )
        t.start()
        t.join()
        warnings.warn("main thread", UserWarning, stacklevel=1)
    assert sorted(str(w.message) for w in caught) == ["main thread", "not from decoding"]


def test_reasons_of_data_errors_are_not_os_errors(tmp_path):
    # Pillow raises OSError (errno None) for malformed data: not "unreadable"
    buf = io.BytesIO()
    _rgb_image().save(buf, "BMP")
    bmp = bytearray(buf.getvalue())
    bmp[30:34] = b"\xff\xff\xff\x7f"  # compression field
    (tmp_path / "c.bmp").write_bytes(bytes(bmp))
    assert _reason(tmp_path / "c.bmp").startswith("corrupt image: Unsupported BMP compression")


def test_reasons_are_cleaned(tmp_path, monkeypatch):
    from pipeline import decode as decode_module

    p = save(_rgb_image(), tmp_path / "x.png")

    def boom(im, path):
        raise ValueError("bad \udcff byte\nand a very long story " + "x" * 1000)

    monkeypatch.setattr(
        decode_module, "_load", lambda im, path: decode_module._data_error(path, ValueError("x"))
    )
    monkeypatch.setattr(decode_module, "_check_mode", boom)
    reason = _reason(p)
    assert reason.startswith("corrupt image: ValueError: bad \\udcff byte and a very long")
    assert len(reason) == 300
    reason.encode("utf-8")
