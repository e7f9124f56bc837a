"""Statistics of a source: chunks of files decoded in parallel, partials merged in a fixed tree.

Files are decoded in chunks of ``chunk_size`` by Dask tasks (local threads, or
the workers of a Dask cluster, :func:`pipeline.execution.run_tasks`); each
task returns a small :class:`~pipeline.stats.exact.Partial` (histograms and
exact sums, a few kB), and the partials are merged as they arrive in the same
fixed tree whatever the worker count (:class:`pipeline.execution.TreeMerge`),
so memory is bounded by the chunks in flight, not the dataset.

A source in object storage (the manifest's ``root`` is a
:class:`~pipeline.storage.Location`) is read the same way: the location
travels to the tasks (it pickles without its filesystem), and each file is
read with one GET (:func:`pipeline.sources.open_source`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pipeline.decode import DEFAULT_MAX_PIXELS, ImageHistogram, decode_histogram
from pipeline.errors import DecodeError, Failure, ImageprepError, InvalidArgumentError
from pipeline.sources import Manifest, SourceRoot, read_source, scan, source_path
from pipeline.stats.exact import Partial, finish, hist_moments, merge
from pipeline.stats.files import FileMoments
from pipeline.stats.model import Stats
from pipeline.storage import Location

__all__ = ["DEFAULT_CHUNK_SIZE", "METHODS", "Method", "compute_stats", "measure"]

Method = Literal["exact", "chan", "two-pass"]
METHODS: tuple[str, ...] = ("exact", "chan", "two-pass")
DEFAULT_CHUNK_SIZE = 64
"""Files per Dask task in :func:`compute_stats`."""


def _chunk(
    root: SourceRoot,
    paths: tuple[str, ...],
    method: str,
    max_pixels: int | None,
    loader: Callable[[Any], ImageHistogram] | None = None,
    per_file: bool = False,
) -> Partial:
    part = Partial()
    kept: list[str] = []
    histograms: list[ImageHistogram] = []
    digests: list[bytes] = []
    local = None if isinstance(root, Location) else root  # else read through open_source
    for rel in paths:
        try:
            source: Any
            if per_file or local is None:  # read once: the digest and the decode see the same bytes
                source, digest = read_source(root, rel)
                if per_file:
                    digests.append(digest)
            else:
                source = source_path(local, rel)
            if loader is None:
                h = decode_histogram(source, max_pixels=max_pixels)
            else:
                h = loader(source)
        except DecodeError as e:
            if per_file and len(digests) > len(histograms):
                digests.pop()
            part.failures.append(Failure(rel, e.reason))
        else:
            part.add_image(h)
            if per_file:
                kept.append(rel)
                histograms.append(h)
    if per_file:
        part.files.append(FileMoments.of_histograms(kept, histograms, digests))
    if method == "chan":
        part.moments = hist_moments(part.hist8, part.hist16)
    return part


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(f"{name} must be a positive int, got {value!r}")


def compute_stats(
    source: SourceRoot | Manifest,
    *,
    method: Method = "exact",
    workers: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    progress: Callable[[int], None] | None = None,
    loader: Callable[[Any], ImageHistogram] | None = None,
    address: str | None = None,
) -> Stats:
    """Compute per-channel statistics of a folder of images (or of its manifest).

    See :mod:`pipeline.stats.exact` for what each method computes.

    Args:
        source: a folder or object-store URL (scanned with
            :func:`pipeline.sources.scan`), or a manifest.
        method: ``exact`` (default), ``chan`` or ``two-pass``.
        workers: threads; ``None`` for every core.
        chunk_size: files per task.
        max_pixels: decompression bomb limit per image (``None``: none).
        progress: called with the chunk's file count as each chunk ends.
        loader: per-file function returning the :class:`ImageHistogram` to
            count, instead of :func:`decode_histogram` (the prepare step
            passes decode + resize for ``stats.at: resized``); it gets a path
            or an open binary file and must raise :class:`DecodeError` for a
            bad file.
        address: run the chunk tasks on the ``dask.distributed`` scheduler
            at this address; the result equals a local run.

    Returns:
        The statistics; ``failures`` holds the scan's rejections and every file
        that could not be decoded, sorted by path; ``fingerprint`` the
        manifest's.

    Raises:
        InvalidArgumentError: an option is invalid or ``source`` is not a folder.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> d = Path(tempfile.mkdtemp())
        >>> Image.new("RGB", (4, 2), (0, 255, 51)).save(d / "a.png")
        >>> _ = (d / "b.jpg").write_bytes(b"not a jpeg")
        >>> s = compute_stats(d, workers=1)
        >>> s.images, s.count, s.mean, s.std
        (1, 8, [0.0, 1.0, 0.2], [0.0, 0.0, 0.0])
        >>> s.failures
        [Failure(path='b.jpg', error='not an image: cannot identify image file')]
    """
    stats, _ = measure(
        source,
        method=method,
        workers=workers,
        chunk_size=chunk_size,
        max_pixels=max_pixels,
        progress=progress,
        loader=loader,
        address=address,
        per_file=False,
    )
    return stats


def measure(
    source: SourceRoot | Manifest,
    *,
    method: Method = "exact",
    workers: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    progress: Callable[[int], None] | None = None,
    loader: Callable[[Any], ImageHistogram] | None = None,
    address: str | None = None,
    per_file: bool = True,
) -> tuple[Stats, FileMoments]:
    """:func:`compute_stats`, and in the same pass each file's exact moments and digest.

    Every file is read once: its SHA-256 is taken over the bytes the decoder
    reads. The moments (:class:`~pipeline.stats.files.FileMoments`, sorted by
    path) are what a store keeps so that its statistics stay exact when files
    come and go.

    Args:
        source: a folder or a manifest, as :func:`compute_stats`.
        method: ``exact``, ``chan`` or ``two-pass``.
        workers: threads; ``None`` for every core.
        chunk_size: files per task.
        max_pixels: decompression bomb limit per image.
        progress: called with the chunk's file count as each chunk ends.
        loader: per-file histogram function, as :func:`compute_stats`.
        address: a ``dask.distributed`` scheduler to run on.
        per_file: collect the per-file moments (an empty table otherwise).

    Returns:
        The statistics of the files, and their moments (accepted files only).
    """
    if method not in METHODS:
        raise InvalidArgumentError(f"method must be one of {list(METHODS)}, got {method!r}")
    if workers is not None:
        _check_positive_int("workers", workers)
    _check_positive_int("chunk_size", chunk_size)
    if max_pixels is not None:
        _check_positive_int("max_pixels", max_pixels)
    manifest = source if isinstance(source, Manifest) else scan(source)

    import dask

    from pipeline.execution import TaskError, TreeMerge, run_tasks

    root: SourceRoot = manifest.root if isinstance(manifest.root, Location) else str(manifest.root)
    paths = [f.path for f in manifest.files]
    chunks = [tuple(paths[i : i + chunk_size]) for i in range(0, len(paths), chunk_size)]
    tasks = [
        dask.delayed(_chunk, pure=False)(root, chunk, method, max_pixels, loader, per_file)
        for chunk in chunks
    ]
    tree: TreeMerge[Partial] = TreeMerge(len(chunks), merge)
    errors: list[TaskError] = []

    def on_done(position: int, part: Any) -> None:
        if isinstance(part, TaskError):
            errors.append(TaskError(f"{position}", part.error, part.traceback))
        else:
            tree.add(position, part)
        if progress is not None:
            progress(len(chunks[position]))

    run_tasks(tasks, workers=workers, address=address, on_done=on_done, keep=False)
    if errors:  # a worker died: the chunk's files were never measured
        raise ImageprepError(f"statistics could not be computed: chunk {errors[0]}")
    part = tree.result() or Partial()
    stats = finish(part, method)
    stats.failures = sorted([*manifest.rejected, *part.failures])
    stats.fingerprint = manifest.fingerprint
    return stats, FileMoments.concat(part.files).sorted()
