"""Image-making fixtures and an independent reference decoder for the pipeline tests."""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from pipeline.synthetic import make_dataset

ALL_MODES = ("RGB", "L", "RGBA", "P", "CMYK", "I;16", "LA", "1")


@pytest.fixture(autouse=True)
def _restore_pillow_limit():
    """decode(max_pixels=None or > limit) raises Pillow's process-wide limit: undo it."""
    saved = Image.MAX_IMAGE_PIXELS
    yield
    Image.MAX_IMAGE_PIXELS = saved


@pytest.fixture
def shard_decodes(monkeypatch) -> list[int]:
    """One entry per shard object decoded (``ShardFormat.decode``) from now on."""
    from pipeline.store import shardio

    calls: list[int] = []
    real = shardio.ShardFormat.decode

    def counted(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(shardio.ShardFormat, "decode", counted)
    return calls


def png_bytes(a: np.ndarray) -> bytes:
    """A PNG written by hand (any bit depth 8/16, gray/GA/RGB/RGBA), independent of Pillow."""
    h, w = a.shape[:2]
    c = 1 if a.ndim == 2 else a.shape[2]
    depth = 16 if a.dtype == np.uint16 else 8
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    be = a.astype(">u2") if depth == 16 else a.astype(np.uint8)
    raw = b"".join(b"\x00" + be[i].tobytes() for i in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def save(im: Image.Image, path: Path, fmt: str | None = None, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, fmt, **kwargs)
    return path


def random_rgb(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth-ish random 8-bit RGB (so JPEG keeps a wide value range)."""
    base = rng.integers(0, 256, size=(h, w, 3)).astype(np.float64)
    ramp = np.linspace(0, 255, w)[None, :, None]
    return np.clip(0.5 * base + 0.5 * ramp, 0, 255).astype(np.uint8)


def extra_mode_files(root: Path, seed: int = 7) -> list[Path]:
    """Files in modes make_dataset does not write: I, F, I;16B, 16-bit RGB PNG, PA, YCbCr, RGBX."""
    rng = np.random.default_rng(seed)
    out = []
    d = root / "extra"
    d.mkdir(parents=True, exist_ok=True)
    a = rng.integers(0, 65536, size=(21, 17)).astype(np.int32)
    out.append(save(Image.fromarray(a), d / "int32.tif"))
    f = rng.random((13, 29)).astype(np.float32)
    f[0, 0], f[0, 1] = 0.0, 1.0
    out.append(save(Image.fromarray(f), d / "float.tif"))
    u = rng.integers(0, 65536, size=(9, 31)).astype(np.uint16)
    tifffile.imwrite(d / "be16.tif", u, byteorder=">")  # Pillow opens it as I;16B
    out.append(d / "be16.tif")
    (d / "rgb16.png").write_bytes(png_bytes(rng.integers(0, 65536, (11, 8, 3)).astype(np.uint16)))
    out.append(d / "rgb16.png")
    (d / "gray16.png").write_bytes(png_bytes(rng.integers(0, 65536, (12, 19)).astype(np.uint16)))
    out.append(d / "gray16.png")
    rgb = Image.fromarray(random_rgb(rng, 15, 22))
    out.append(save(rgb.convert("P").convert("PA"), d / "pa.tif"))
    out.append(save(rgb.convert("YCbCr"), d / "ycbcr.tif"))
    out.append(save(rgb.convert("RGBX"), d / "rgbx.tif"))
    out.append(save(rgb, d / "rgb.JPEG", "JPEG", quality=85))
    return out


def reference_pixels(path: Path) -> np.ndarray:
    """``(N, 3)`` float64 values in [0, 1], decoded with Pillow and NumPy directly.

    Independent of pipeline.decode: 8-bit modes through ``convert("RGB")`` / 255;
    16-bit gray, I (in range) and F (rounded to 1/65535) as gray / 65535.
    """
    with Image.open(path) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
            g = np.asarray(im).astype(np.float64) / 65535.0
            return np.repeat(g.reshape(-1, 1), 3, axis=1)
        if im.mode == "F":
            g = np.round(np.asarray(im).astype(np.float64) * 65535.0) / 65535.0
            return np.repeat(g.reshape(-1, 1), 3, axis=1)
        return np.asarray(im.convert("RGB")).reshape(-1, 3).astype(np.float64) / 255.0


def reference_integers(path: Path) -> tuple[np.ndarray, int]:
    """``(N, 3)`` integer values and their scale (255 or 65535), for exact references."""
    with Image.open(path) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
            g = np.asarray(im).astype(np.int64).reshape(-1, 1)
            return np.repeat(g, 3, axis=1), 65535
        if im.mode == "F":
            g = np.round(np.asarray(im).astype(np.float64) * 65535.0).astype(np.int64)
            return np.repeat(g.reshape(-1, 1), 3, axis=1), 65535
        return np.asarray(im.convert("RGB")).reshape(-1, 3).astype(np.int64), 255


@dataclass
class MixedSource:
    root: Path
    valid: list[Path]
    broken: dict[str, str]  # relative path -> expected reason prefix


@pytest.fixture(scope="session")
def mixed_source(tmp_path_factory: pytest.TempPathFactory) -> MixedSource:
    """Mixed sizes, modes, formats and bit depths, plus the synthetic broken files."""
    root = tmp_path_factory.mktemp("mixed") / "src"
    ds = make_dataset(root, n_per_class=10, seed=3, sizes=(8, 70), modes=ALL_MODES)
    valid = [ds.root / f.path for f in ds.valid] + extra_mode_files(root)
    broken = {f.path: f.broken for f in ds.broken if f.broken is not None}
    return MixedSource(root, sorted(valid), broken)


@dataclass
class BadFolder:
    root: Path
    valid: list[str]
    broken: dict[str, str]  # relative path -> expected reason prefix
    unreadable: str  # relative path to make unreadable (chmod or simulated)


def make_bad_folder(root: Path, outside: Path) -> BadFolder:
    """Valid images plus every kind of bad input, in class folders."""
    rng = np.random.default_rng(11)
    valid = []
    for i, (cls, fmt) in enumerate([("a", "png"), ("a", "jpg"), ("b", "bmp"), ("b", "tif")]):
        rel = f"{cls}/ok_{i}.{fmt}"
        save(Image.fromarray(random_rgb(rng, 20 + i, 30 - i)), root / rel)
        valid.append(rel)
    good = io.BytesIO()
    Image.fromarray(random_rgb(rng, 40, 50)).save(good, "JPEG", quality=90)
    jpeg = good.getvalue()
    (root / "a" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "a" / "empty.jpg").write_bytes(b"")
    (root / "b" / "notes.png").write_bytes(b"just some text, not a PNG\n")
    png = bytearray(png_bytes(random_rgb(rng, 30, 30)))
    idat = png.find(b"IDAT") + 4
    png[idat : idat + 2] = b"\xff\xff"
    (root / "b" / "corrupt.png").write_bytes(bytes(png))
    bomb_hdr = struct.pack(">IIBBBBB", 20000, 10000, 8, 0, 0, 0, 0)
    bomb = bytearray(png_bytes(np.zeros((1, 1), np.uint8)))
    bomb[16:29] = bomb_hdr
    bomb[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + bomb_hdr))
    (root / "a" / "bomb.png").write_bytes(bytes(bomb))
    save(Image.new("LAB", (8, 8)), root / "b" / "lab.tif")
    save(Image.fromarray(np.full((6, 6), -5, np.int32)), root / "b" / "negative.tif")
    save(Image.fromarray(random_rgb(rng, 10, 10)), root / "a" / "unreadable.png")
    outside.mkdir(parents=True, exist_ok=True)
    save(Image.fromarray(random_rgb(rng, 10, 10)), outside / "secret.png")
    os.symlink(outside / "secret.png", root / "a" / "escape.png")
    os.symlink(outside, root / "b" / "escape_dir")
    os.symlink(root / "a" / "missing.png", root / "a" / "dangling.png")
    os.mkfifo(root / "b" / "fifo.jpg")
    os.symlink(root / "b", root / "b" / "loop")
    broken = {
        "a/truncated.jpg": "truncated image: ",
        "a/empty.jpg": "empty file",
        "b/notes.png": "not an image: ",
        "b/corrupt.png": "corrupt image: ",
        "a/bomb.png": "decompression bomb: 200000000 pixels > limit 89478485",
        "b/lab.tif": "unsupported mode: LAB",
        "b/negative.tif": "unsupported values: ",
        "a/escape.png": "symlink leaves the source root: ",
        "b/escape_dir": "symlink leaves the source root: ",
        "a/dangling.png": "broken symlink: ",
        "b/fifo.jpg": "not a regular file",
        "b/loop": "symlink loop: ",
        "a/unreadable.png": "permission denied",
    }
    # ignored, not reported: non-image extensions, hidden files
    (root / "a" / "README.txt").write_text("not an image, ignored")
    (root / "b" / ".hidden.png").write_bytes(b"hidden, ignored")
    return BadFolder(root, sorted(valid), broken, "a/unreadable.png")


@pytest.fixture
def bad_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> BadFolder:
    """Bad-input folder; ``a/unreadable.png`` is made unreadable.

    With chmod when that works (not root); as root, chmod does not stop reads, so
    the decoder's ``open`` is patched to raise PermissionError for that file.
    """
    bf = make_bad_folder(tmp_path / "src", tmp_path / "outside")
    target = bf.root / bf.unreadable
    if os.geteuid() != 0:
        target.chmod(0)
    else:
        import builtins

        import pipeline.decode as decode_module

        real_open = builtins.open

        def fake_open(file, *args, **kwargs):
            if os.fspath(file) == str(target):
                raise PermissionError(13, "Permission denied", os.fspath(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(decode_module, "open", fake_open, raising=False)
    return bf
