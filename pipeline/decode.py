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
``unsupported values``, ``out of memory``.

**Hostile bytes.** Whatever a file holds, decoding it ends in pixels or in a
:class:`~pipeline.errors.DecodeError`: the exceptions Pillow's plugins raise on
malformed data (``SyntaxError``, ``struct.error``, ``EOFError``,
``ZeroDivisionError``, ``IndexError``, ``TypeError``, ``ValueError``, ``zlib``
errors, ...) become ``corrupt image: <type>: <message>``, a ``MemoryError``
becomes ``out of memory``; reasons are made valid Unicode and cut to 300
characters. A property-based fuzz (``tests/pipeline/test_decode_fuzz.py``)
keeps this true for mutated JPEG, PNG, WebP, TIFF and GIF files.

**Warnings.** Python warnings raised while a file is decoded never reach
stderr: they are routed, per thread, away from ``warnings.showwarning`` and
logged at ``DEBUG`` level on the ``pipeline.decode`` logger with the path.
The verdict on a file comes from exceptions and the checks above, never from a
warning; the ones Pillow 13 can raise here, and why each is safe to ignore:

- ``DecompressionBombWarning`` (between 1x and 2x Pillow's limit): the
  ``max_pixels`` check rejects such a file itself, or ``max_pixels`` allows it.
- ``Possibly corrupt EXIF data``, ``Corrupt EXIF data``, ``Metadata Warning``,
  ``Tag offset too large``, ``Tag data larger than file`` and a TIFF
  directory that cannot be read to its end: metadata only; the orientation
  falls back to 1 when the EXIF block is unreadable, the pixels are checked by
  decoding them.
- ``Image appears to be a malformed MPO file`` and ``Invalid APNG``: Pillow
  decodes the base JPEG / the default PNG image, the first frame this module
  wants anyway.
- ``Palette images with Transparency expressed in bytes``: alpha is dropped.
- ``Truncated File Read`` (a TIFF directory cut short): the pixels are then
  decoded or rejected on their own.

libtiff prints its own messages (``Using code not yet in table.``) to stderr,
below Python: its handlers are switched off in every process that decodes
(:func:`_quiet_libtiff`); a TIFF it cannot decode still fails with a reason.

NumPy's ``All-NaN slice encountered`` (``np.nanmin`` over a float image of
NaNs) is no longer raised at all: the value check of mode ``F`` uses
``np.fmin``/``np.fmax``, which ignore NaNs silently.

**Memory.** :func:`decode` returns the whole image as an array, which for a
9000x9000 source is 243 MB on top of Pillow's own copy. The run calls
:func:`decode_for_size` instead: it resizes band by band straight from
Pillow's image (the same values bit for bit as :func:`decode` followed by
``ops.resize_to``), so a decode never holds more than
Pillow's image plus a few small buffers: what the statistics' decode holds.
Images larger than :data:`HUGE_PIXELS` are decoded one at a time per process
(a lock), so N decode threads meeting N huge files do not multiply the peak.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from pipeline.errors import DecodeError, InvalidArgumentError

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "EIGHT_BIT_MODES",
    "HUGE_PIXELS",
    "SIXTEEN_BIT_MODES",
    "ImageHistogram",
    "decode",
    "decode_for_size",
    "decode_measured",
    "decode_histogram",
    "open_image",
    "read_with_digest",
]

_log = logging.getLogger(__name__)

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

HUGE_PIXELS: int = 1 << 24
"""Pixels (after JPEG draft) above which an image is decoded one at a time per process.

16.8 MP (4096 x 4096): 64 MB in Pillow's RGB layout. Smaller images decode in
parallel as before; only larger ones wait for each other.
"""

"""The resize modes of :func:`decode_for_size` (``transform.resize``)."""

_HUGE_LOCK = threading.Lock()


def _reset_huge_lock() -> None:  # a forked child must not inherit a lock held by a thread
    global _HUGE_LOCK
    _HUGE_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_huge_lock)
_BAND_VALUES = 1 << 20  # values per band buffer in decode_for_size (1M: 1-8 MB)
_MAX_REASON = 300


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


def _bad_data_reason(e: OSError) -> str:
    """The reason for an OSError Pillow raised on a file's bytes (truncated or corrupt)."""
    msg = str(e) or type(e).__name__
    if "truncated" in msg.lower():
        return f"truncated image: {msg}"
    return f"corrupt image: {msg}"


def _clean_reason(reason: str) -> str:
    """A reason that encodes to UTF-8 (JSON, Zarr) and fits on a line."""
    text = reason.encode("utf-8", "backslashreplace").decode("utf-8")
    text = " ".join(text.split())
    if len(text) > _MAX_REASON:
        text = text[: _MAX_REASON - 3] + "..."
    return text


def _data_error(path: str, e: BaseException) -> DecodeError:
    """The DecodeError for an exception Pillow or NumPy raised on a file's bytes."""
    if isinstance(e, MemoryError):
        return DecodeError(path, "out of memory: the image is too large to decode here")
    if isinstance(e, RecursionError):
        return DecodeError(path, "corrupt image: nested too deeply")
    msg = str(e)
    return DecodeError(
        path, _clean_reason(f"corrupt image: {type(e).__name__}: {msg}".rstrip(": "))
    )


# -- warnings: routed per thread while a file is decoded --------------------------------------

_tls = threading.local()
_hook_lock = threading.Lock()
_forward: list[Callable[..., Any]] = [warnings.showwarning]


def _route_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    sink: list[str] | None = getattr(_tls, "warnings", None)
    if sink is None:  # not decoding in this thread: show as before
        _forward[0](message, category, filename, lineno, file, line)
        return
    sink.append(f"{category.__name__}: {message}")


_libtiff_quiet = False


def _quiet_libtiff() -> None:
    """Switch off libtiff's own warning and error printers (they write to stderr).

    libtiff reports problems of a TIFF (``Using code not yet in table.``,
    unknown tags, ...) by printing them itself, below Python. With the
    handlers unset (``TIFFSetWarningHandler(NULL)``, ``TIFFSetErrorHandler(NULL)``
    on the libtiff Pillow is linked with) nothing is printed; a decoding error
    still fails Pillow's decoder, which raises. Process-wide, done once.
    """
    global _libtiff_quiet
    if _libtiff_quiet:
        return
    _libtiff_quiet = True
    try:
        import ctypes

        from PIL import _imaging

        core = ctypes.CDLL(_imaging.__file__)  # dlsym also searches its libtiff
        for name in ("TIFFSetWarningHandler", "TIFFSetErrorHandler"):
            setter = getattr(core, name)
            setter.restype = ctypes.c_void_p
            setter.argtypes = [ctypes.c_void_p]
            setter(None)
    except (OSError, AttributeError, ImportError):  # Pillow without libtiff, not ELF, ...
        _log.debug("libtiff's message handlers could not be switched off")


def _install_warning_hook() -> None:
    # Installed (again) whenever something else replaced warnings.showwarning,
    # e.g. warnings.catch_warnings() in a test; the replaced one gets the
    # warnings of threads that are not decoding.
    if warnings.showwarning is _route_warning:
        return
    with _hook_lock:
        current = warnings.showwarning
        if current is not _route_warning:
            _forward[0] = current
            warnings.showwarning = _route_warning


@contextmanager
def _guarded(path: str) -> Iterator[None]:
    """Decode ``path`` inside: warnings captured and logged, exceptions made DecodeErrors.

    DecodeError passes through with its reason cleaned; InvalidArgumentError (a
    bad argument, not bad data) passes through unchanged; any other exception
    raised while Pillow or NumPy work on the file's bytes is a data problem.
    """
    _install_warning_hook()
    _quiet_libtiff()
    outer = getattr(_tls, "warnings", None)
    sink: list[str] = []
    _tls.warnings = sink
    try:
        yield
    except DecodeError as e:
        reason = _clean_reason(e.reason)
        if reason == e.reason:
            raise
        raise DecodeError(e.path, reason) from e
    except InvalidArgumentError:
        raise
    except Exception as e:
        raise _data_error(path, e) from e
    finally:
        _tls.warnings = outer
        for text in sink:
            _log.debug("%r: decoder warning ignored: %s", path, text)


# -- open and load ---------------------------------------------------------------------------


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
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        import ctypes

        fn: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    return fn


_MALLOC_TRIM = _find_malloc_trim()


def _malloc_trim() -> None:
    """Give freed heap memory back to the OS (glibc's ``malloc_trim``; no-op elsewhere).

    Each decode thread has its own malloc arena, and glibc keeps a freed image
    (Pillow allocates 16 MB blocks, under glibc's 32 MB mmap threshold) inside
    the arena of the thread that freed it: without a trim, N threads meeting
    huge images one after the other would still hold N images' worth of memory.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


@contextmanager
def _loaded(
    path: str | Path | IO[bytes],
    max_pixels: int | None,
    draft: tuple[int, int] | None,
    orient: bool,
    huge_pixels: int | None,
) -> Iterator[tuple[Image.Image, int]]:
    """Open, check and load ``path``; yield the image and its EXIF orientation (1 unless orient).

    Images above ``huge_pixels`` (after draft) are loaded and used under the
    process-wide huge-image lock, held until the caller leaves the block; the
    image is then closed and the freed memory given back to the OS, so pass
    ``huge_pixels=None`` when the caller keeps the image.
    """
    name = _name(path)
    with _open_file(path) as fp:
        im = _open_checked(fp, name, max_pixels)
        orientation = 1
        if draft is not None and im.format in ("JPEG", "MPO"):
            orientation = _orientation(im)
            min_h, min_w = draft
            im.draft(
                im.mode,
                (min_h, min_w) if orientation in _TRANSPOSED_ORIENTATIONS else (min_w, min_h),
            )
        w, h = im.size
        huge = huge_pixels is not None and w * h > huge_pixels
        lock = _HUGE_LOCK
        if huge:
            lock.acquire()
        try:
            _load(im, name)
            if orient and (draft is None or im.format not in ("JPEG", "MPO")):
                orientation = _orientation(im)
            yield im, orientation
        finally:
            if huge:
                im.close()  # frees Pillow's pixels now, not when the caller's frame goes
                _malloc_trim()
                lock.release()


def _open_checked(fp: IO[bytes], path: str, max_pixels: int | None) -> Image.Image:
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
        if e.errno is None:  # raised by a plugin on the file's bytes, not by the OS
            raise DecodeError(path, _bad_data_reason(e)) from e
        raise DecodeError(path, _reason_from_os_error(e)) from e
    except Exception as e:  # a plugin failing on a malformed header
        raise _data_error(path, e) from e
    w, h = im.size
    if w < 1 or h < 1:
        raise DecodeError(path, f"corrupt image: size {w}x{h}")
    if max_pixels is not None and w * h > max_pixels:
        raise DecodeError(path, f"decompression bomb: {w * h} pixels > limit {max_pixels}")
    return im


def _load(im: Image.Image, path: str) -> None:
    try:
        im.load()
    except Image.DecompressionBombError as e:
        raise DecodeError(path, f"decompression bomb: {e}") from e
    except MemoryError as e:
        raise _data_error(path, e) from e
    except OSError as e:
        raise DecodeError(path, _bad_data_reason(e)) from e
    except Exception as e:  # SyntaxError, ValueError, EOFError, zlib.error, ...
        raise _data_error(path, e) from e


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


def _check_huge_pixels(huge_pixels: int | None) -> None:
    if huge_pixels is None:
        return
    if isinstance(huge_pixels, bool) or not isinstance(huge_pixels, int) or huge_pixels < 1:
        raise InvalidArgumentError(
            f"huge_pixels must be a positive int or None, got {huge_pixels!r}"
        )


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
    with _guarded(spath), _loaded(path, max_pixels, draft, orient, None) as (im, orientation):
        if orient and orientation != 1:
            try:
                im = ImageOps.exif_transpose(im)
            except Exception as e:
                raise DecodeError(
                    spath, f"corrupt image: cannot apply EXIF orientation: {e}"
                ) from e
        return im


# -- values ----------------------------------------------------------------------------------


def _bands(height: int, width: int, channels: int = 1) -> Iterator[tuple[int, int]]:
    """Row ranges ``[y0, y1)`` covering ``height`` rows of ``_BAND_VALUES`` values each."""
    rows = max(1, _BAND_VALUES // max(1, width * channels))
    for y0 in range(0, height, rows):
        yield y0, min(height, y0 + rows)


def _check_values(im: Image.Image, path: str) -> None:
    """Reject ``I`` images outside ``0..65535`` and ``F`` images outside ``[0, 1]`` or not finite.

    Works band by band, without a full-size copy of the image.
    """
    if im.mode == "I":
        lo, hi = im.getextrema()
        if not (isinstance(lo, int) and isinstance(hi, int)) or lo < 0 or hi > 65535:
            raise DecodeError(
                path,
                "unsupported values: integer image (mode I) with values outside 0..65535 "
                f"(min {lo}, max {hi})",
            )
        return
    if im.mode != "F":
        return
    w, h = im.size
    finite = True
    lo_f, hi_f = np.inf, -np.inf
    for y0, y1 in _bands(h, w):
        a = np.asarray(im.crop((0, y0, w, y1)), dtype=np.float32)
        finite = finite and bool(np.isfinite(a).all())
        # fmin/fmax skip NaNs without the "All-NaN slice" warning of nanmin/nanmax
        lo_f = float(np.fmin(lo_f, np.fmin.reduce(a, axis=None)))
        hi_f = float(np.fmax(hi_f, np.fmax.reduce(a, axis=None)))
    if not finite or lo_f < 0.0 or hi_f > 1.0:
        if lo_f > hi_f:  # every value is NaN
            lo_f = hi_f = float("nan")
        raise DecodeError(
            path,
            "unsupported values: float image (mode F) with values outside [0, 1] or not finite "
            f"(min {lo_f}, max {hi_f})",
        )


def _gray16(im: Image.Image) -> np.ndarray:
    """``(H, W)`` ``uint16`` values of a checked 16-bit, ``I`` or ``F`` image (a new array)."""
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float32)
        return np.rint(a.astype(np.float64) * 65535.0).astype(np.uint16)
    return np.asarray(im).astype(np.uint16)


def _as_uint16(im: Image.Image, path: str) -> np.ndarray:
    """Return the ``(H, W)`` ``uint16`` values of a 16-bit, ``I`` or ``F`` image."""
    _check_values(im, path)
    return _gray16(im)


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
    rules per mode. To resize the result, :func:`decode_for_size` gives the
    same values with far less memory.

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
    _check_max_pixels(max_pixels)
    _check_draft(draft)
    spath = _name(path)
    with _guarded(spath), _loaded(path, max_pixels, draft, True, HUGE_PIXELS) as (im, o):
        if o != 1:
            try:
                im = ImageOps.exif_transpose(im)
            except Exception as e:
                raise DecodeError(
                    spath, f"corrupt image: cannot apply EXIF orientation: {e}"
                ) from e
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
    _check_max_pixels(max_pixels)
    spath = _name(path)
    with _guarded(spath), _loaded(path, max_pixels, None, False, HUGE_PIXELS) as (im, _):
        _check_mode(im, spath)
        if im.mode in SIXTEEN_BIT_MODES:
            _check_values(im, spath)
        return _histogram_of(im)


def _histogram_of(im: Image.Image) -> ImageHistogram:
    """The value histogram of a loaded, checked image (orientation does not change it)."""
    if im.mode in SIXTEEN_BIT_MODES:
        w, h = im.size
        counts = np.zeros(65536, dtype=np.int64)
        for y0, y1 in _bands(h, w):
            counts += np.bincount(_gray16(im.crop((0, y0, w, y1))).ravel(), minlength=65536)
        return ImageHistogram(16, np.broadcast_to(counts, (3, 65536)))
    bands = _HIST_DIRECT.get(im.mode)
    if bands is None:
        im = _to_rgb(im)
        bands = 3
    hist = np.asarray(im.histogram(), dtype=np.int64).reshape(bands, 256)
    if bands < 3:
        return ImageHistogram(8, np.broadcast_to(hist[0], (3, 256)))
    return ImageHistogram(8, hist[:3])


# -- decode straight to a size -----------------------------------------------------------------

# Orientation o: the pixel (x, y) of the displayed image is the pixel
# _RAW_XY[o](x, y, W, H) of the stored one (W, H: stored size), as
# ImageOps.exif_transpose maps them (2: flip left-right, 3: rotate 180,
# 4: flip top-bottom, 5: transpose, 6: rotate 270, 7: transverse, 8: rotate 90).
_RAW_XY: dict[int, Callable[[int, int, int, int], tuple[int, int]]] = {
    1: lambda x, y, w, h: (x, y),
    2: lambda x, y, w, h: (w - 1 - x, y),
    3: lambda x, y, w, h: (w - 1 - x, h - 1 - y),
    4: lambda x, y, w, h: (x, h - 1 - y),
    5: lambda x, y, w, h: (y, x),
    6: lambda x, y, w, h: (y, h - 1 - x),
    7: lambda x, y, w, h: (w - 1 - y, h - 1 - x),
    8: lambda x, y, w, h: (w - 1 - y, x),
}


def _orient_array(a: np.ndarray, orientation: int) -> np.ndarray:
    """The displayed pixels of stored pixels ``a`` (``(h, w, ...)``), as exif_transpose."""
    if orientation == 2:
        return a[:, ::-1]
    if orientation == 3:
        return a[::-1, ::-1]
    if orientation == 4:
        return a[::-1]
    if orientation == 5:
        return a.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(a, -1)
    if orientation == 7:
        return a[::-1, ::-1].swapaxes(0, 1)
    if orientation == 8:
        return np.rot90(a, 1)
    return a


def _displayed_block(
    im: Image.Image, orientation: int, box: tuple[int, int, int, int], bits: int
) -> np.ndarray:
    """Pixels of ``box`` (x0, y0, x1, y1) of the displayed image, as :func:`decode` gives them.

    ``(h, w, 3)`` ``uint8`` for 8-bit images, ``(h, w)`` ``uint16`` for 16-bit
    ones (gray); C-contiguous and writable.
    """
    x0, y0, x1, y1 = box
    w, h = im.size
    to_raw = _RAW_XY[orientation]
    ax, ay = to_raw(x0, y0, w, h)
    bx, by = to_raw(x1 - 1, y1 - 1, w, h)
    crop = (min(ax, bx), min(ay, by), max(ax, bx) + 1, max(ay, by) + 1)
    raw = im if crop == (0, 0, w, h) else im.crop(crop)  # the whole image: no copy first
    if bits == 16:
        a = _gray16(raw)
    else:
        a = np.array(raw if raw.mode == "RGB" else _to_rgb(raw))
    # a fresh C-ordered copy: torch takes no negative strides (a flipped 1-pixel band
    # still counts as contiguous for NumPy)
    return _orient_array(a, orientation).copy() if orientation != 1 else a


def _rgbx_view(im: Image.Image) -> np.ndarray | None:
    """An ``RGB`` image's pixels in place, ``(h, w, 4)`` ``uint8`` (Pillow keeps RGB as RGBX).

    Read through Pillow's Arrow export (``nanoarrow``), without a copy. The
    array keeps the export, and so the image's memory, alive. ``None`` when
    the image is not ``RGB`` or Pillow cannot export it (an image whose rows
    lie in several blocks, over 16 MB; a Pillow before 11.2).
    ``np.array(im)`` instead copies the pixels through ``Image.tobytes``,
    holding the GIL: 0.3-0.4 ms for a 500x375 photo, and 3-4x that when two
    threads do it at once.
    """
    if im.mode != "RGB":
        return None
    import ctypes

    import nanoarrow as na

    try:
        exported = na.c_array(im)
    except (TypeError, ValueError):  # rows in several blocks, or a Pillow before 11.2
        return None
    w, h = im.size
    pixels = exported.child(0)
    if exported.offset or pixels.offset or pixels.length != 4 * w * h:
        return None
    buffer = (ctypes.c_uint8 * (4 * w * h)).from_address(pixels.buffers[1])
    buffer.export = exported  # type: ignore[attr-defined]  # released with the last view
    return np.frombuffer(memoryview(buffer), np.uint8).reshape(h, w, 4)


def _region_resized(
    im: Image.Image,
    orientation: int,
    region: tuple[int, int, int, int],
    shape: tuple[int, int],
    bits: int,
) -> torch.Tensor:
    """Resize ``region`` of the displayed image to ``shape``, band by band; ``(C, h, w)``.

    Torch's antialiased resize is separable: a horizontal pass (rounded to
    ``uint8`` for 8-bit data, kept in float64 for 16-bit data), then a
    vertical one. The horizontal pass is done here on bands of rows straight
    from Pillow's image, the vertical one on the narrow result: the values are
    those of one ``F.interpolate`` call on the whole region, bit for bit.
    """
    import torch

    from ops import resize

    x0, y0, x1, y1 = region
    width = x1 - x0
    oh, ow = shape
    channels = 1 if bits == 16 else 3
    # Buffers are made once and reused: per-band allocations of varying sizes
    # fragment the heap (measured: +1 MB per band on a 9000x9000 16-bit PNG).
    rows: torch.Tensor | None = None
    wide: torch.Tensor | None = None
    bands = list(_bands(y1 - y0, width, 3))
    if len(bands) == 1 and bits == 8 and orientation == 1 and region == (0, 0, *im.size):
        view = _rgbx_view(im)
        if view is not None:
            # Pillow's own pixels, read in place: (1, 4, h, w) channels-last, the
            # layout torch's uint8 kernel works in (it would pad RGB to it), one
            # call for both passes, the fourth band dropped after
            return resize(torch.from_numpy(view).permute(2, 0, 1)[None], (oh, ow))[0, :3]
    for b0, b1 in bands:
        block = _displayed_block(im, orientation, (x0, y0 + b0, x1, y0 + b1), bits)
        if bits == 16:  # gray, in float64 as the 16-bit resize is done
            if wide is None:
                wide = torch.empty((1, 1, b1 - b0, width), dtype=torch.float64)
            x = wide[:, :, : b1 - b0]
            x.copy_(torch.from_numpy(block)[None, None])
        else:  # (1, 3, h, w) in channels-last memory: torch's vectorized uint8 path
            x = torch.from_numpy(block).permute(2, 0, 1)[None]
        if len(bands) == 1 and bits == 8:
            # one band holds every row: one call does both passes (torch's kernel
            # is separable in the same way), ~4x cheaper than two calls, each of
            # which also runs an identity pass over the other axis
            return resize(x, (oh, ow))[0]
        band = resize(x, (b1 - b0, ow), contiguous=False)  # the horizontal pass
        if rows is None:
            rows = torch.empty((1, channels, y1 - y0, ow), dtype=band.dtype)
            if bits == 8:
                rows = rows.contiguous(memory_format=torch.channels_last)
        rows[:, :, b0:b1].copy_(band)
        del block, x, band
    assert rows is not None  # the region has at least one row
    out = resize(rows, (oh, ow))[0]  # the vertical pass
    if bits == 16:
        out = out.round().clamp_(0, 65535).to(torch.int32).expand(3, -1, -1)
    return out


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    ok = (
        isinstance(size, (tuple, list))
        and len(size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    )
    if not ok:
        raise InvalidArgumentError(f"size must be a pair (h, w) of positive ints, got {size!r}")
    return int(size[0]), int(size[1])


def decode_for_size(
    path: str | Path | IO[bytes],
    size: tuple[int, int],
    *,
    mode: str = "shorter-side-crop",
    box: Callable[[int, int], tuple[int, int, int, int]] | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft: bool = True,
    huge_pixels: int | None = HUGE_PIXELS,
) -> tuple[torch.Tensor, int]:
    """Decode an image straight to ``size``: the run's loader, memory-bounded.

    The result equals, bit for bit, ``ops.resize_to(to_tensor(decode(path, draft=d)), size,
    mode=mode)`` (``d = size`` when ``draft``, else ``None``;
    :func:`pipeline.transforms.to_tensor`), or with ``box``:
    ``ops.resized_crop(to_tensor(decode(path)), box(H, W), size)``. But no full-size array is
    made: Pillow's decoded image is converted and resized band by band (see
    :func:`_region_resized`), so the peak is Pillow's image plus a few buffers of ~4M values,
    where the two-step path holds three to six full-size copies (RGB array, channels-last copy,
    and for 16-bit sources int32 and float64 ones). Images of more than ``huge_pixels`` pixels
    (after draft) are decoded one at a time in this process.

    Convention: ``size`` is the target ``(H, W)``; ``box(H, W)`` gets the
    displayed (EXIF-oriented) height and width and returns ``(x1, y1, x2,
    y2)`` in pixel-edge coordinates, sliced as ``image[y1:y2, x1:x2]``.

    Args:
        path: the image file.
        size: target ``(H, W)``.
        mode: ``shorter-side-crop``, ``stretch`` or ``pad``
            (:func:`ops.resized_shape`); ignored with ``box``.
        box: draws the crop box from the image size (random resized crop); the
            box is resized to ``size`` directly and JPEG draft is not used.
        max_pixels: bomb limit, as in :func:`decode`.
        draft: JPEG draft decoding to the least DCT scale covering ``size``.
        huge_pixels: pixel count above which decodes are serialized; ``None``
            for no limit.

    Returns:
        ``((3, H, W) tensor, bits)``: ``uint8`` pixels and 8 for 8-bit
        sources, ``int32`` holding 0..65535 and 16 for 16-bit ones.

    Raises:
        DecodeError: the file cannot be decoded; ``reason`` says why.
        InvalidArgumentError: a bad argument, or ``box`` returned an empty box.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "x.png"
        >>> Image.new("RGB", (500, 375), (9, 8, 7)).save(p)
        >>> pixels, bits = decode_for_size(p, (224, 224))
        >>> tuple(pixels.shape), pixels.dtype, bits, pixels[:, 0, 0].tolist()
        ((3, 224, 224), torch.uint8, 8, [9, 8, 7])
    """
    pixels, bits, _ = _decode_for_size(
        path,
        size,
        mode=mode,
        box=box,
        max_pixels=max_pixels,
        draft=draft,
        huge_pixels=huge_pixels,
        measure=False,
    )
    return pixels, bits


class _NamedBytes(io.BytesIO):
    """A file's bytes in memory that carry its name (for the decoder's messages)."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.name = name


def read_with_digest(path: str | Path) -> tuple[IO[bytes], bytes]:
    """Read a file once: its bytes as an open binary file for the decoder, and their SHA-256.

    Raises:
        DecodeError: the file cannot be read (``unreadable: ...``) or is empty.
    """
    spath = os.fspath(path)
    try:
        with open(spath, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise DecodeError(spath, _reason_from_os_error(exc)) from None
    if not data:
        raise DecodeError(spath, "empty file")
    return _NamedBytes(data, spath), hashlib.sha256(data).digest()


def decode_measured(
    path: str | Path | IO[bytes],
    size: tuple[int, int],
    *,
    mode: str = "shorter-side-crop",
    box: Callable[[int, int], tuple[int, int, int, int]] | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    huge_pixels: int | None = HUGE_PIXELS,
) -> tuple[torch.Tensor, int, ImageHistogram]:
    """:func:`decode_for_size` at full resolution, and the image's value histogram, in one decode.

    The histogram is exactly :func:`decode_histogram`'s (the full-resolution
    pixels: no JPEG draft), so a run whose statistics are known before it
    writes measures each file (its exact moments) in the same decode that
    makes its samples.

    Returns:
        ``((3, H, W) tensor, bits, histogram)``.

    Raises:
        DecodeError: as :func:`decode_for_size`.
    """
    pixels, bits, histogram = _decode_for_size(
        path,
        size,
        mode=mode,
        box=box,
        max_pixels=max_pixels,
        draft=False,
        huge_pixels=huge_pixels,
        measure=True,
    )
    assert histogram is not None  # measure=True always makes one
    return pixels, bits, histogram


def _decode_for_size(
    path: str | Path | IO[bytes],
    size: tuple[int, int],
    *,
    mode: str,
    box: Callable[[int, int], tuple[int, int, int, int]] | None,
    max_pixels: int | None,
    draft: bool,
    huge_pixels: int | None,
    measure: bool,
) -> tuple[torch.Tensor, int, ImageHistogram | None]:
    import torch

    from ops.geometry import RESIZE_MODES, resized_shape

    _check_max_pixels(max_pixels)
    _check_huge_pixels(huge_pixels)
    th, tw = _check_size(size)
    if mode not in RESIZE_MODES:
        raise InvalidArgumentError(f"mode must be one of {RESIZE_MODES}, got {mode!r}")
    spath = _name(path)
    min_size = (th, tw) if draft and box is None and not measure else None
    histogram: ImageHistogram | None = None
    with _guarded(spath):
        with _loaded(path, max_pixels, min_size, True, huge_pixels) as (im, orientation):
            _check_mode(im, spath)
            bits = 16 if im.mode in SIXTEEN_BIT_MODES else 8
            if bits == 16:
                _check_values(im, spath)
            if measure:
                histogram = _histogram_of(im)
            w, h = im.size
            if orientation in _TRANSPOSED_ORIENTATIONS:
                w, h = h, w
            if box is not None:
                x1, y1, x2, y2 = box(h, w)
                xs, ys = range(w)[x1:x2], range(h)[y1:y2]  # the slice image[y1:y2, x1:x2]
                if not xs or not ys or xs.step != 1 or ys.step != 1:
                    raise InvalidArgumentError(
                        f"box must select pixels of the {h}x{w} image, got {(x1, y1, x2, y2)}"
                    )
                region = (xs.start, ys.start, xs.stop, ys.stop)
                out = _region_resized(im, orientation, region, (th, tw), bits).contiguous()
                return out, bits, histogram
            rh, rw = resized_shape(h, w, (th, tw), mode)
            resized = _region_resized(im, orientation, (0, 0, w, h), (rh, rw), bits)
    if mode == "pad":
        out = torch.zeros((3, th, tw), dtype=resized.dtype)
        top, left = (th - rh) // 2, (tw - rw) // 2
        out[:, top : top + rh, left : left + rw] = resized
        return out, bits, histogram
    top, left = (rh - th) // 2, (rw - tw) // 2
    return resized[:, top : top + th, left : left + tw].contiguous(), bits, histogram
