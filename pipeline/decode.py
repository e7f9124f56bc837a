"""Safe image decoding with Pillow: bombs, truncation and odd modes become reasons.

Every source image becomes an ``(H, W, 3)`` array: ``uint8`` for 8-bit
sources, ``uint16`` for 16-bit ones, EXIF-oriented. Anything that cannot be
turned into such an array raises :class:`~pipeline.errors.DecodeError` with a
short human reason; callers record it as a :class:`~pipeline.errors.Failure`
and go on. The rules (also in ``docs/stats.md``):

- **Formats.** Only the formats of the scanned extensions are tried, whatever
  the extension of the file: JPEG (and MPO, multi-picture JPEG), PNG, WebP,
  BMP, TIFF and GIF. Other content (including formats Pillow could read, such
  as EPS, which would run Ghostscript) is ``not an image``.
- **Decompression bombs.** The pixel count ``width * height`` from the header
  is checked before any pixel is decoded; anything above ``max_pixels`` is an
  error (Pillow itself only warns between 1x and 2x its limit). ``None``
  disables the check. A ``max_pixels`` above Pillow's process-wide
  ``Image.MAX_IMAGE_PIXELS`` raises that limit to it (Pillow has no per-call
  limit), so that Pillow does not refuse what was allowed here.
- **Orientation.** The EXIF orientation tag is applied
  (``ImageOps.exif_transpose``).
- **Multi-frame files** (animated GIF, multi-page TIFF): the first frame only.
- **8-bit modes** ``1, L, LA, P, PA, RGB, RGBA, RGBX, RGBa, CMYK, YCbCr``: Pillow's
  ``convert("RGB")``; alpha is dropped, not composited (as ``convert`` does);
  ``L`` is replicated to three channels; ``uint8``.
- **16-bit grayscale** (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``; 16-bit
  PNGs and TIFFs open so in Pillow 13): values kept, replicated to three
  channels, ``uint16``.
- **32-bit integer** (``I``, e.g. a 32-bit or signed 16-bit TIFF): accepted
  as 16-bit when every value is within ``0..65535``, else rejected.
- **32-bit float** (``F``): accepted when every value is finite and within
  ``[0, 1]``, stored as ``uint16`` ``round(x * 65535)`` (half to even), else
  rejected.
- **Pillow's limits** (verified with Pillow 13, tested): 16-bit RGB and RGBA
  PNGs and TIFFs, and 16-bit gray+alpha PNGs, come out as 8-bit ``RGB``/``RGBA``
  keeping the high byte of each sample (``v >> 8``), so they are measured as
  8-bit images: 16-bit color cannot be read with Pillow. Float64 and
  multi-channel float TIFFs are not readable at all (``corrupt image: cannot
  read the TIFF header``).
- Any other mode (``LAB``, ``HSV``, ...) is an ``unsupported mode``.

Failure reasons start with one of: ``empty file``, ``permission denied``,
``file not found``, ``unreadable``, ``not an image``, ``corrupt image``,
``truncated image``, ``decompression bomb``, ``unsupported mode``,
``unsupported values``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from pipeline.errors import DecodeError, InvalidArgumentError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "EIGHT_BIT_MODES",
    "SIXTEEN_BIT_MODES",
    "ImageHistogram",
    "decode",
    "decode_histogram",
    "open_image",
]

DEFAULT_MAX_PIXELS: int = int(1024 * 1024 * 1024 // 4 // 3)
"""Pillow's default ``Image.MAX_IMAGE_PIXELS`` (89478485), the default bomb limit."""

EIGHT_BIT_MODES: frozenset[str] = frozenset(
    {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr"}
)
"""Pillow modes decoded to ``uint8`` RGB with ``convert("RGB")``."""

SIXTEEN_BIT_MODES: frozenset[str] = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
"""Pillow modes decoded to ``uint16`` (``I`` and ``F`` only for values in range)."""

_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")  # JPEG also opens MPO

# Leading bytes of the formats above: a file that starts like one of them but
# that Pillow cannot identify is a corrupt image rather than "not an image".
_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),
    (b"MM\x00+", "TIFF"),
)

_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")

_TRANSPOSED_ORIENTATIONS = frozenset({5, 6, 7, 8})


@dataclass(frozen=True)
class ImageHistogram:
    """Per-channel value counts of one decoded image: a sufficient statistic.

    Attributes:
        bits: 8 or 16, the bit depth of the decoded values.
        counts: ``(3, 2**bits)`` int64, ``counts[c, v]`` pixels of channel ``c``
            with value ``v`` (possibly a read-only broadcast view for gray
            images).
    """

    bits: int
    counts: np.ndarray

    @property
    def pixels(self) -> int:
        """Pixels per channel."""
        return int(self.counts[0].sum())


def _check_max_pixels(max_pixels: int | None) -> None:
    if max_pixels is None:
        if Image.MAX_IMAGE_PIXELS is not None:
            Image.MAX_IMAGE_PIXELS = None
        return
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise InvalidArgumentError(f"max_pixels must be a positive int or None, got {max_pixels!r}")
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels


def _check_draft(draft: tuple[int, int] | None) -> None:
    if draft is None:
        return
    ok = (
        isinstance(draft, tuple)
        and len(draft) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in draft)
    )
    if not ok:
        raise InvalidArgumentError(
            f"draft must be None or a pair (min_h, min_w) of positive ints, got {draft!r}"
        )


def _reason_from_os_error(e: OSError) -> str:
    if isinstance(e, PermissionError):
        return "permission denied"
    if isinstance(e, FileNotFoundError):
        return "file not found"
    if isinstance(e, IsADirectoryError):
        return "unreadable: is a directory"
    return f"unreadable: {e.strerror or e}"


def _sniff(fp: IO[bytes]) -> str | None:
    fp.seek(0)
    head = fp.read(16)
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # a malformed EXIF block is not a reason to reject the pixels
        return 1
    return value if isinstance(value, int) else 1


def _open_loaded(
    fp: IO[bytes], path: str, max_pixels: int | None, draft: tuple[int, int] | None, orient: bool
) -> tuple[Image.Image, int]:
    """Open, check and load ``fp``; return the image and its EXIF orientation (1 unless orient)."""
    try:
        im = Image.open(fp, formats=_FORMATS)
    except Image.DecompressionBombError as e:
        m = _BOMB_PIXELS.search(str(e))
        pixels = m.group(1) if m else "too many"
        raise DecodeError(path, f"decompression bomb: {pixels} pixels > limit {max_pixels}") from e
    except UnidentifiedImageError as e:
        fmt = _sniff(fp)
        if fmt is not None:
            raise DecodeError(
                path, f"corrupt image: cannot read the {fmt} header (corrupt, or unsupported)"
            ) from e
        raise DecodeError(path, "not an image: cannot identify image file") from e
    except OSError as e:
        raise DecodeError(path, _reason_from_os_error(e)) from e
    except Exception as e:  # a plugin failing on a malformed header
        raise DecodeError(path, f"corrupt image: {type(e).__name__}: {e}") from e
    w, h = im.size
    if w < 1 or h < 1:
        raise DecodeError(path, f"corrupt image: size {w}x{h}")
    if max_pixels is not None and w * h > max_pixels:
        raise DecodeError(path, f"decompression bomb: {w * h} pixels > limit {max_pixels}")
    orientation = 1
    if draft is not None and im.format in ("JPEG", "MPO"):
        orientation = _orientation(im)
        min_h, min_w = draft
        im.draft(
            im.mode,
            (min_h, min_w) if orientation in _TRANSPOSED_ORIENTATIONS else (min_w, min_h),
        )
    try:
        im.load()
    except Image.DecompressionBombError as e:
        raise DecodeError(path, f"decompression bomb: {e}") from e
    except OSError as e:
        msg = str(e) or type(e).__name__
        if "truncated" in msg:
            raise DecodeError(path, f"truncated image: {msg}") from e
        raise DecodeError(path, f"corrupt image: {msg}") from e
    except Exception as e:  # SyntaxError, ValueError, EOFError, zlib.error, ...
        raise DecodeError(path, f"corrupt image: {type(e).__name__}: {e}") from e
    if orient and draft is None:
        orientation = _orientation(im)
    return im, orientation


def _name(path: str | Path | IO[bytes]) -> str:
    """The path, or an open file's ``name`` (a URL from ``storage.open_file``), for messages."""
    if isinstance(path, (str, os.PathLike)):
        return os.fspath(path)
    return str(getattr(path, "name", "<stream>"))


def _open_file(path: str | Path | IO[bytes]) -> IO[bytes]:
    if not isinstance(path, (str, os.PathLike)):  # already open (e.g. an object's bytes)
        try:
            size = path.seek(0, os.SEEK_END)
            path.seek(0)
        except OSError as e:
            raise DecodeError(_name(path), _reason_from_os_error(e)) from e
        if size == 0:
            path.close()
            raise DecodeError(_name(path), "empty file")
        return path
    p = os.fspath(path)
    try:
        fp = open(p, "rb")
        size = os.fstat(fp.fileno()).st_size
    except OSError as e:
        raise DecodeError(str(p), _reason_from_os_error(e)) from e
    if size == 0:
        fp.close()
        raise DecodeError(str(p), "empty file")
    return fp


def open_image(
    path: str | Path | IO[bytes],
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft: tuple[int, int] | None = None,
    orient: bool = True,
) -> Image.Image:
    """Open, check and load an image with the rules of this module, mode untouched.

    Args:
        path: the image file: a path, or a seekable binary file open for
            reading (read from its start and closed; e.g. the object that
            :func:`pipeline.storage.open_file` returns).
        max_pixels: bomb limit on ``width * height`` from the header; ``None``
            for none.
        draft: ``(min_h, min_w)``: see :func:`decode`.
        orient: apply the EXIF orientation (skip it when only the pixel
            values matter, e.g. for histograms).

    Returns:
        The loaded PIL image in its file's mode (first frame).

    Raises:
        DecodeError: the file cannot be read or decoded (``reason`` says why).
        InvalidArgumentError: ``max_pixels`` or ``draft`` is invalid.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "x.tif"
        >>> Image.new("CMYK", (6, 4)).save(p)
        >>> im = open_image(p)
        >>> im.mode, im.size
        ('CMYK', (6, 4))
    """
    _check_max_pixels(max_pixels)
    _check_draft(draft)
    spath = _name(path)
    with _open_file(path) as fp:
        im, orientation = _open_loaded(fp, spath, max_pixels, draft, orient)
    if orient and orientation != 1:
        try:
            im = ImageOps.exif_transpose(im)
        except Exception as e:
            raise DecodeError(spath, f"corrupt image: cannot apply EXIF orientation: {e}") from e
    return im


def _as_uint16(im: Image.Image, path: str) -> np.ndarray:
    """Return the ``(H, W)`` ``uint16`` values of a 16-bit, ``I`` or ``F`` image."""
    a = np.asarray(im)
    mode = im.mode
    if mode == "I":
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 65535:
            raise DecodeError(
                path,
                "unsupported values: integer image (mode I) with values outside 0..65535 "
                f"(min {lo}, max {hi})",
            )
        return a.astype(np.uint16)
    if mode == "F":
        finite = bool(np.isfinite(a).all())
        lo_f, hi_f = float(np.nanmin(a)), float(np.nanmax(a))
        if not finite or lo_f < 0.0 or hi_f > 1.0:
            raise DecodeError(
                path,
                "unsupported values: float image (mode F) with values outside [0, 1] or not finite "
                f"(min {lo_f}, max {hi_f})",
            )
        return np.rint(a.astype(np.float64) * 65535.0).astype(np.uint16)
    return a.astype(np.uint16, copy=False)


def _to_rgb(im: Image.Image) -> Image.Image:
    """``convert("RGB")``; a transparency entry is dropped first (alpha is dropped anyway).

    This only silences Pillow's warning about palette transparency given as bytes;
    the RGB values are those of ``convert("RGB")``.
    """
    im.info.pop("transparency", None)
    return im.convert("RGB")


def _check_mode(im: Image.Image, path: str) -> None:
    if im.mode not in EIGHT_BIT_MODES and im.mode not in SIXTEEN_BIT_MODES:
        raise DecodeError(path, f"unsupported mode: {im.mode}")


def decode(
    path: str | Path | IO[bytes],
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft: tuple[int, int] | None = None,
) -> np.ndarray:
    """Decode an image file to an ``(H, W, 3)`` array, EXIF-oriented.

    Convention: ``H, W`` are the displayed height and width (after the EXIF
    orientation); the channels are R, G, B. See the module docstring for the
    rules per mode.

    Args:
        path: the image file: a path, or a seekable binary file open for
            reading (read from its start and closed; e.g. the object that
            :func:`pipeline.storage.open_file` returns).
        max_pixels: bomb limit on ``width * height`` from the header; ``None``
            disables the check.
        draft: ``(min_h, min_w)``: for JPEGs, decode the smallest DCT-scaled
            version (1/2, 1/4 or 1/8, Pillow's ``Image.draft``) that is still at
            least ``min_h x min_w`` after the EXIF orientation. No effect for
            other formats.

    Returns:
        ``(H, W, 3)`` ``uint8`` for 8-bit sources, ``uint16`` for 16-bit ones
        (writable, C-contiguous).

    Raises:
        DecodeError: the file cannot be decoded; ``reason`` says why.
        InvalidArgumentError: ``max_pixels`` or ``draft`` is invalid.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "x.png"
        >>> Image.new("L", (5, 3), 7).save(p)
        >>> a = decode(p)
        >>> a.shape, a.dtype, int(a[0, 0, 2])
        ((3, 5, 3), dtype('uint8'), 7)
    """
    spath = _name(path)
    im = open_image(path, max_pixels=max_pixels, draft=draft)
    _check_mode(im, spath)
    if im.mode in SIXTEEN_BIT_MODES:
        gray = _as_uint16(im, spath)
        return np.repeat(gray[:, :, None], 3, axis=2)
    rgb = im if im.mode == "RGB" else _to_rgb(im)
    return np.array(rgb)


_HIST_DIRECT = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "RGBX": 4}


def decode_histogram(
    path: str | Path | IO[bytes], *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> ImageHistogram:
    """Decode an image and return its per-channel value histogram.

    The values are exactly those of :func:`decode` (orientation does not change
    a histogram, so it is not applied). For 8-bit images the counts come from
    Pillow's ``Image.histogram`` (one pass in C, no array copy); for 16-bit ones
    from ``numpy.bincount``.

    Args:
        path: the image file: a path, or a seekable binary file open for
            reading (read from its start and closed; e.g. the object that
            :func:`pipeline.storage.open_file` returns).
        max_pixels: bomb limit, as in :func:`decode`.

    Returns:
        The histogram; ``bits`` is 8 or 16.

    Raises:
        DecodeError: as :func:`decode`.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "x.png"
        >>> Image.new("RGB", (4, 2), (1, 2, 255)).save(p)
        >>> h = decode_histogram(p)
        >>> h.bits, h.counts.shape, int(h.counts[2, 255])
        (8, (3, 256), 8)
    """
    spath = _name(path)
    im = open_image(path, max_pixels=max_pixels, orient=False)
    _check_mode(im, spath)
    if im.mode in SIXTEEN_BIT_MODES:
        gray = _as_uint16(im, spath)
        counts = np.bincount(gray.ravel(), minlength=65536).astype(np.int64, copy=False)
        return ImageHistogram(16, np.broadcast_to(counts, (3, 65536)))
    bands = _HIST_DIRECT.get(im.mode)
    if bands is None:
        im = _to_rgb(im)
        bands = 3
    h = np.asarray(im.histogram(), dtype=np.int64).reshape(bands, 256)
    if bands < 3:
        return ImageHistogram(8, np.broadcast_to(h[0], (3, 256)))
    return ImageHistogram(8, h[:3])
