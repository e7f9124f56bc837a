"""A small procedural ImageFolder dataset, with deliberately broken files.

Used by the tests, ``imageprep demo`` and the benchmarks. Each class has its own
texture family (rings, oriented gratings, smooth noise, checkers, ...) with
random colors, frequencies and phases; images have varied sizes, Pillow modes
(``L``, ``RGB``, ``RGBA``, ``P``, ``CMYK``, ``I;16``) and formats (JPEG, PNG,
WebP, BMP, TIFF, GIF); every third JPEG carries an EXIF orientation and some GIFs have two
frames. The broken files cover every rejection the decoder knows: a truncated
JPEG, an empty file, a text file named ``.jpg``, a PNG with corrupted bytes, a
decompression bomb (a small PNG whose header claims 20000 x 10000 pixels) and an
image in an unsupported mode (``LAB`` TIFF).

Everything is deterministic for a seed, including file modification times, so
the manifest fingerprint of a generated dataset is too.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.errors import InvalidArgumentError

__all__ = [
    "BROKEN_KINDS",
    "DEFAULT_CLASSES",
    "DEFAULT_MODES",
    "MARKER",
    "SyntheticDataset",
    "SyntheticFile",
    "make_dataset",
]

DEFAULT_CLASSES: tuple[str, ...] = ("checkers", "noise", "rings", "stripes")
DEFAULT_MODES: tuple[str, ...] = ("RGB", "L", "RGBA", "P", "CMYK", "I;16")
MARKER = ".imageprep-synthetic"
"""Hidden file that marks a folder written by :func:`make_dataset` (safe to rewrite)."""

# Formats each mode can be written to (and read back in the same mode).
_FORMATS_FOR_MODE: dict[str, tuple[str, ...]] = {
    "RGB": ("jpg", "png", "webp", "bmp", "tif"),
    "L": ("jpg", "png", "bmp", "tif", "gif"),
    "RGBA": ("png", "webp", "tif"),
    "P": ("png", "bmp", "gif", "tif"),
    "CMYK": ("jpg", "tif"),
    "I;16": ("png", "tif"),
    "LA": ("png", "tif"),
    "1": ("png", "bmp", "tif"),
}

BROKEN_KINDS: dict[str, str] = {
    "truncated.jpg": "truncated image",
    "empty.png": "empty file",
    "text.jpg": "not an image",
    "corrupt.png": "corrupt image",
    "bomb.png": "decompression bomb",
    "lab.tif": "unsupported mode",
}
"""Broken file name -> the prefix of the reason the decoder gives for it."""

_MTIME_BASE_NS = 1_700_000_000 * 10**9


@dataclass(frozen=True)
class SyntheticFile:
    """One written file.

    Attributes:
        path: relative to the dataset root, ``/`` separators.
        label: class index (``classes[label]`` is its folder).
        mode: the Pillow mode written (``None`` for a broken file).
        orientation: EXIF orientation tag written (1 when none).
        broken: ``None`` for a valid image, else the expected reason prefix.
    """

    path: str
    label: int
    mode: str | None
    orientation: int = 1
    broken: str | None = None


@dataclass(frozen=True)
class SyntheticDataset:
    """What :func:`make_dataset` wrote.

    Attributes:
        root: the dataset folder.
        classes: class folder names, sorted.
        files: every written file, sorted by path.
    """

    root: Path
    classes: tuple[str, ...]
    files: tuple[SyntheticFile, ...]

    @property
    def valid(self) -> tuple[SyntheticFile, ...]:
        """The files expected to decode."""
        return tuple(f for f in self.files if f.broken is None)

    @property
    def broken(self) -> tuple[SyntheticFile, ...]:
        """The files expected to be rejected."""
        return tuple(f for f in self.files if f.broken is not None)


def _texture(kind: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """An ``(h, w, 3)`` float64 texture in ``[0, 1]`` of family ``kind``."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    y /= max(h, w)
    x /= max(h, w)
    kind %= 4
    if kind == 0:  # checkers
        f = rng.uniform(3, 10)
        t = 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * f * x) * np.sin(2 * np.pi * f * y))
    elif kind == 1:  # smooth noise: low-passed white noise
        noise = rng.standard_normal((h, w))
        fy = np.fft.fftfreq(h)[:, None]
        fx = np.fft.fftfreq(w)[None, :]
        cut = rng.uniform(0.03, 0.15)
        t = np.real(np.fft.ifft2(np.fft.fft2(noise) * np.exp(-(fx**2 + fy**2) / (2 * cut**2))))
        t = (t - t.min()) / (np.ptp(t) + 1e-12)
    elif kind == 2:  # rings
        cy, cx = rng.uniform(0.2, 0.8, size=2)
        r = np.hypot(y - cy, x - cx)
        t = 0.5 + 0.5 * np.cos(2 * np.pi * rng.uniform(4, 16) * r + rng.uniform(0, 2 * np.pi))
    else:  # oriented stripes
        a = rng.uniform(0, np.pi)
        u = np.cos(a) * x + np.sin(a) * y
        t = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3, 12) * u + rng.uniform(0, 2 * np.pi))
    lo, hi = rng.uniform(0, 0.5, size=3), rng.uniform(0.5, 1, size=3)
    img = lo + (hi - lo) * t[:, :, None]
    img += rng.normal(0, 0.03, size=img.shape)
    return np.clip(img, 0.0, 1.0)


def _to_image(rgb: np.ndarray, mode: str, rng: np.random.Generator) -> Image.Image:
    u8 = np.round(rgb * 255).astype(np.uint8)
    base = Image.fromarray(u8, "RGB")
    if mode == "RGB":
        return base
    if mode in ("L", "1", "CMYK"):
        return base.convert(mode)
    if mode == "LA":
        return base.convert("L").convert("LA")
    if mode == "RGBA":
        alpha = (rng.random(rgb.shape[:2]) * 255).astype(np.uint8)
        return Image.fromarray(np.dstack([u8, alpha]), "RGBA")
    if mode == "P":
        return base.quantize(colors=int(rng.integers(16, 200)))
    if mode == "I;16":
        lum = rgb @ np.array([0.299, 0.587, 0.114])
        return Image.fromarray(np.round(lum * 65535).astype(np.uint16))
    raise InvalidArgumentError(f"modes must be among {sorted(_FORMATS_FOR_MODE)}, got {mode!r}")


def _encode(im: Image.Image, fmt: str, orientation: int) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpg":
        kwargs: dict[str, object] = {"quality": 90}
        if orientation != 1:
            exif = Image.Exif()
            exif[0x0112] = orientation
            kwargs["exif"] = exif.tobytes()
        im.save(buf, "JPEG", **kwargs)
    elif fmt == "png":
        im.save(buf, "PNG")
    elif fmt == "webp":
        im.save(buf, "WEBP", quality=90)
    elif fmt == "bmp":
        im.save(buf, "BMP")
    elif fmt == "tif":
        im.save(buf, "TIFF", compression="tiff_deflate")
    elif fmt == "gif":
        im.save(buf, "GIF")
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png(width: int = 20000, height: int = 10000) -> bytes:
    """A valid-looking PNG header claiming ``width x height`` pixels, almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _png_chunk(b"IEND", b"")
    )


def _broken_bytes(name: str, rng: np.random.Generator) -> bytes:
    rgb = _texture(int(rng.integers(4)), 48, 64, rng)
    im = Image.fromarray(np.round(rgb * 255).astype(np.uint8), "RGB")
    if name == "truncated.jpg":
        data = _encode(im, "jpg", 1)
        return data[: len(data) * 6 // 10]
    if name == "empty.png":
        return b""
    if name == "text.jpg":
        return b"This is a text file with a .jpg extension.\n"
    if name == "corrupt.png":
        png = bytearray(_encode(im, "png", 1))
        idat = png.find(b"IDAT") + 4
        png[idat : idat + 2] = b"\xff\xff"  # an invalid zlib header: decoding fails
        return bytes(png)
    if name == "bomb.png":
        return _bomb_png()
    if name == "lab.tif":
        lab = im.convert("LAB")
        # the conversion attaches an ICC profile stamped with the current time:
        # without it the file is the same bytes for a seed
        lab.info.pop("icc_profile", None)
        return _encode(lab, "tif", 1)
    raise AssertionError(name)


def _prepare_root(root: Path) -> None:
    if root.exists():
        if not root.is_dir():
            raise InvalidArgumentError(f"root must be a folder, got the file {str(root)!r}")
        if any(root.iterdir()):
            if not (root / MARKER).is_file():
                raise InvalidArgumentError(
                    "root must be empty or a folder written by make_dataset "
                    f"(with {MARKER}), got non-empty {str(root)!r}"
                )
            shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("written by pipeline.synthetic.make_dataset\n")


def make_dataset(
    root: str | Path,
    *,
    n_per_class: int = 12,
    classes: Sequence[str] = DEFAULT_CLASSES,
    seed: int = 0,
    broken: bool = True,
    sizes: tuple[int, int] = (32, 96),
    modes: Sequence[str] = DEFAULT_MODES,
) -> SyntheticDataset:
    """Write a procedural ImageFolder dataset (and broken files) into ``root``.

    Image ``i`` of a class gets mode ``modes[i % len(modes)]`` and a random
    format among those that can store it; height and width are drawn
    uniformly from ``sizes``. Every third JPEG (from the second) carries an
    EXIF orientation (6, 3 or 8 in turn). The broken files (:data:`BROKEN_KINDS`) go into the class
    folders in turn.

    Args:
        root: output folder; must be empty, missing, or written by this
            function before (it is then cleared).
        n_per_class: images per class.
        classes: class folder names.
        seed: random seed; the same seed writes the same files.
        broken: also write the broken files.
        sizes: ``(lo, hi)`` inclusive range of heights and widths.
        modes: Pillow modes to cycle through (``RGB L RGBA P CMYK I;16 LA 1``).

    Returns:
        What was written.

    Raises:
        InvalidArgumentError: a bad option, or ``root`` holds other files.

    Example:
        >>> import tempfile
        >>> ds = make_dataset(Path(tempfile.mkdtemp()) / "d", n_per_class=2, classes=("a", "b"))
        >>> len(ds.valid), len(ds.broken), ds.classes
        (4, 6, ('a', 'b'))
    """
    if isinstance(n_per_class, bool) or not isinstance(n_per_class, int) or n_per_class < 0:
        raise InvalidArgumentError(f"n_per_class must be an int >= 0, got {n_per_class!r}")
    names = sorted(classes)
    if (
        not names
        or len(set(names)) != len(names)
        or any(not c or c.startswith(".") or "/" in c or "\\" in c for c in names)
    ):
        raise InvalidArgumentError(
            f"classes must be distinct non-empty, non-hidden folder names, got {list(classes)!r}"
        )
    lo, hi = sizes
    if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
        raise InvalidArgumentError(f"sizes must be (lo, hi) with 1 <= lo <= hi, got {sizes!r}")
    bad = [m for m in modes if m not in _FORMATS_FOR_MODE]
    if not modes or bad:
        raise InvalidArgumentError(
            f"modes must be a non-empty list among {sorted(_FORMATS_FOR_MODE)}, got {list(modes)!r}"
        )
    root = Path(root)
    _prepare_root(root)
    rng = np.random.default_rng(seed)
    written: list[SyntheticFile] = []
    stamp = 0

    def write(rel: str, data: bytes) -> None:
        nonlocal stamp
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        stamp += 1
        t = _MTIME_BASE_NS + stamp * 10**9
        os.utime(p, ns=(t, t))

    jpegs = 0
    for label, cls in enumerate(names):
        (root / cls).mkdir(exist_ok=True)
        for i in range(n_per_class):
            mode = modes[i % len(modes)]
            fmts = _FORMATS_FOR_MODE[mode]
            fmt = fmts[int(rng.integers(len(fmts)))]
            h, w = (int(v) for v in rng.integers(lo, hi + 1, size=2))
            rng.integers(2)  # an unused draw that keeps each seed's dataset as before
            rgb = _texture(label, h, w, rng)  # one texture family per class
            im = _to_image(rgb, mode, rng)
            orientation = 1
            if fmt == "jpg":
                jpegs += 1
                if jpegs % 3 == 2:
                    orientation = (6, 3, 8)[(jpegs // 3) % 3]
            if fmt == "gif" and i % 2 == 0:
                buf = io.BytesIO()
                second = Image.fromarray(
                    np.round(_texture(label + 1, h, w, rng) * 255).astype(np.uint8)
                ).convert(im.mode)
                im.save(buf, "GIF", save_all=True, append_images=[second])
                data = buf.getvalue()
            else:
                data = _encode(im, fmt, orientation)
            rel = f"{cls}/{cls}_{i:03d}.{fmt}"
            write(rel, data)
            written.append(SyntheticFile(rel, label, mode, orientation))
    if broken:
        for k, (name, reason) in enumerate(BROKEN_KINDS.items()):
            label = k % len(names)
            rel = f"{names[label]}/broken_{name}"
            write(rel, _broken_bytes(name, rng))
            written.append(SyntheticFile(rel, label, None, 1, reason))
    return SyntheticDataset(root, tuple(names), tuple(sorted(written, key=lambda f: f.path)))
