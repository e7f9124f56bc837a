"""What is in a store: a summary (``imageprep info``), a sample grid and a stats plot (``preview``).

- :func:`store_info` returns a JSON-safe summary: shape, dtype, classes and
  their counts, stats, sizes on disk and compression ratio, shards done,
  failures. :func:`render_info` turns it into a ``rich`` renderable.
- :func:`write_preview` draws a grid of samples, de-normalized to the [0, 1]
  pixel scale, each titled with its class. :func:`write_stats_plot` draws one
  panel per channel: the pixel histogram (the stats JSON's ``histogram`` field
  when present, else a histogram of stored samples) with the mean and the
  mean ± std band marked. :func:`write_previews` writes both, ``grid.png`` and
  ``grid-stats.png`` (see :func:`stats_plot_path`).

Plots use Matplotlib's object API with the Agg canvas (no pyplot state, no
display needed); a PNG's pixel size is exactly what the docstring says.

Example:
    >>> import tempfile, numpy as np
    >>> from pipeline.store import StoreLayout, create_store, write_shard
    >>> path = tempfile.mkdtemp() + "/ds.zarr"
    >>> create_store(path, StoreLayout(n_samples=4, channels=3, height=8, width=8,
    ...              dtype="float32", shard_size=4), attrs={"classes": ["a", "b"]}, paths=["x"])
    >>> _ = write_shard(path, 0, images=np.random.default_rng(0).random((4, 3, 8, 8)),
    ...                 labels=np.array([0, 1, 1, 1]), source_index=np.zeros(4, int),
    ...                 copy_index=np.zeros(4, int))
    >>> info = store_info(path)
    >>> info["shape"], info["class_counts"], info["shards"]
    ([4, 3, 8, 8], {'a': 1, 'b': 3}, {'done': 1, 'total': 1})
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import InvalidArgumentError, StoreError
from pipeline.reader import ShardDataset
from pipeline.storage import Location
from pipeline.store import (
    done_shards,
    get_array,
    open_group,
    read_array,
    read_attrs,
    read_layout,
    store_location,
)
from pipeline.store.group import PathLike as _StorePath

__all__ = [
    "render_info",
    "stats_figure",
    "stats_plot_path",
    "store_info",
    "write_preview",
    "write_previews",
    "write_stats_plot",
]

_PathLike = str | os.PathLike[str]
_NO_CLASS = "(no class)"


def _class_name(label: int, classes: list[str]) -> str:
    if 0 <= label < len(classes):
        return classes[label]
    return _NO_CLASS if label == -1 else f"label {label}"


def _folder_bytes(location: Location) -> int:
    """Bytes of every file under a folder, or of every object under a prefix (a listing)."""
    if not location.is_local:
        fs = location.fs
        fs.invalidate_cache(location.path)
        try:
            return int(fs.du(location.path, total=True))
        except FileNotFoundError:
            return 0
    total = 0
    for root, _dirs, files in os.walk(location.path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:  # a temporary file renamed away meanwhile
                continue
    return total


def _for_reader(path: _StorePath) -> Any:
    """The store as :class:`~pipeline.reader.ShardDataset` takes it (a path, a URL, a location).

    The reader opens it with :func:`pipeline.store.open_group`, which takes all three; its
    annotation says ``str | os.PathLike`` only.
    """
    return path


def store_info(path: _StorePath) -> dict[str, Any]:
    """Summarize a store (complete or not) as a JSON-safe dict.

    Keys: ``path``, ``shape`` ``[N, C, H, W]``, ``dtype``, ``chunks``,
    ``shard_size``, ``compression``, ``normalized``, ``classes``,
    ``class_counts`` (over written rows; ``"(no class)"`` counts label -1),
    ``samples_written``, ``sources`` (files in the manifest), ``stats``,
    ``shards`` (``done``/``total``), ``complete`` (all shards done),
    ``finalized``, ``bytes_on_disk`` (whole store), ``images_bytes_on_disk``,
    ``images_bytes_raw`` (written rows, uncompressed), ``compression_ratio``
    (raw / on disk, images only; null before anything is written),
    ``failures``, ``config_identity``, ``source_fingerprint``, ``seed``,
    ``versions``, ``created``.

    A store in object storage is measured with a listing of its objects
    (``bytes_on_disk`` is then bytes stored).

    Raises:
        StoreError: not an imageprep store.
    """
    root = store_location(path)
    group = open_group(root)
    meta = read_attrs(group)
    layout = read_layout(group)
    done = sorted(done_shards(group))
    labels = read_array(get_array(group, "labels"))
    written = np.zeros(layout.n_samples, dtype=bool)
    for i in done:
        rows = layout.shard_rows(i)
        written[rows.start : rows.stop] = True
    classes = [str(c) for c in meta.get("classes") or []]
    counts: dict[str, int] = {name: 0 for name in classes}
    values, numbers = np.unique(labels[written], return_counts=True)
    for value, number in zip(values.tolist(), numbers.tolist(), strict=True):
        name = _class_name(value, classes)
        counts[name] = counts.get(name, 0) + int(number)
    itemsize = np.dtype(layout.dtype).itemsize
    raw = int(written.sum()) * layout.channels * layout.height * layout.width * itemsize
    images_disk = _folder_bytes(root.joinpath("images"))
    config = meta.get("config") or {}
    normalized = layout.dtype != "uint8" and (config.get("transform") or {}).get(
        "normalize", False
    ) in (True, "dataset", "per-image")
    failures = list(meta.get("failures") or [])
    return {
        "path": str(path),
        "shape": [layout.n_samples, *layout.sample_shape],
        "dtype": layout.dtype,
        "chunks": [1, *layout.sample_shape],
        "shard_size": layout.shard_size,
        "compression": layout.compression.to_json(),
        "normalized": normalized,
        "classes": classes,
        "class_counts": counts,
        "samples_written": int(written.sum()),
        "sources": int(get_array(group, "paths").shape[0]),
        "stats": meta.get("stats") or {},
        "shards": {"done": len(done), "total": layout.n_shards},
        "complete": len(done) == layout.n_shards,
        "finalized": bool(meta.get("complete", False)),
        "bytes_on_disk": _folder_bytes(root),
        "images_bytes_on_disk": images_disk,
        "images_bytes_raw": raw,
        "compression_ratio": (raw / images_disk) if raw and images_disk else None,
        "failures": failures,
        "config_identity": meta.get("config_identity"),
        "source_fingerprint": meta.get("source_fingerprint"),
        "seed": meta.get("seed"),
        "versions": meta.get("versions") or {},
        "created": meta.get("created"),
    }


def _bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def render_info(info: Mapping[str, Any]) -> Any:
    """Return a ``rich`` renderable of :func:`store_info`'s dict (print it with a Console).

    Example:
        >>> import io
        >>> from rich.console import Console
        >>> console = Console(file=io.StringIO(), width=100)
        >>> console.print(render_info({"path": "x.zarr", "shape": [2, 3, 4, 4], "dtype": "uint8",
        ...     "shards": {"done": 1, "total": 1}, "class_counts": {"a": 2}}))
        >>> "x.zarr" in console.file.getvalue()
        True
    """
    from rich.console import Group
    from rich.table import Table

    summary = Table(show_header=False, title=f"imageprep store {info.get('path', '')}")
    summary.add_column("key", style="bold")
    summary.add_column("value")
    compression = info.get("compression") or {}
    ratio = info.get("compression_ratio")
    shards = info.get("shards") or {}
    rows: list[tuple[str, str]] = [
        ("samples", " x ".join(str(v) for v in info.get("shape", [])) + "  (N x C x H x W)"),
        ("dtype", f"{info.get('dtype')}{'  (normalized)' if info.get('normalized') else ''}"),
        (
            "shards",
            f"{shards.get('done', '?')} / {shards.get('total', '?')} written"
            f" (shard size {info.get('shard_size', '?')})",
        ),
        ("complete", "yes" if info.get("complete") else "NO"),
        ("sources", str(info.get("sources", "?"))),
        ("compression", f"{compression.get('codec', '?')} level {compression.get('level')}"),
    ]
    if "bytes_on_disk" in info:
        rows.append(("on disk", _bytes(int(info["bytes_on_disk"]))))
    if ratio:
        rows.append(("compression ratio", f"{ratio:.2f}x (images)"))
    rows.append(("failures", str(len(info.get("failures") or []))))
    if info.get("config_identity"):
        rows.append(("config identity", str(info["config_identity"])[:16]))
    for key, value in rows:
        summary.add_row(key, value)
    parts: list[Any] = [summary]

    counts = info.get("class_counts") or {}
    if counts:
        table = Table(title="samples per class")
        table.add_column("class")
        table.add_column("samples", justify="right")
        for name, count in counts.items():
            table.add_row(str(name), str(count))
        parts.append(table)

    stats = info.get("stats") or {}
    if stats.get("mean") is not None:
        table = Table(
            title=f"dataset stats ({stats.get('method', '?')}, {stats.get('images', '?')} images)"
        )
        table.add_column("channel")
        for key in ("mean", "std", "min", "max"):
            table.add_column(key, justify="right")
        channels = stats.get("channels") or [str(i) for i in range(len(stats["mean"]))]
        for c, name in enumerate(channels):
            cells = []
            for key in ("mean", "std", "min", "max"):
                values = stats.get(key)
                cells.append(
                    f"{values[c]:.4f}" if isinstance(values, list) and c < len(values) else "-"
                )
            table.add_row(str(name), *cells)
        parts.append(table)
    failures = info.get("failures") or []
    if failures:
        table = Table(title=f"rejected inputs ({len(failures)})")
        table.add_column("path")
        table.add_column("error")
        for failure in failures[:20]:
            table.add_row(str(failure.get("path")), str(failure.get("error")))
        if len(failures) > 20:
            table.add_row("...", f"{len(failures) - 20} more")
        parts.append(table)
    return Group(*parts)


# --------------------------------------------------------------------------- plots


def _figure(width: int, height: int, dpi: int = 100) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _display(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """``(C, H, W)`` in [0, 1] -> what imshow takes: RGB for C >= 3, else channel 0 in gray."""
    image = np.clip(image, 0.0, 1.0)
    if image.shape[0] >= 3:
        return np.moveaxis(image[:3], 0, -1), None
    return image[0], "gray"


def write_preview(
    path: _StorePath,
    out_png: _PathLike,
    *,
    n: int = 16,
    columns: int = 4,
    seed: int = 0,
    cell: int = 160,
) -> Path:
    """Write a PNG grid of ``n`` random samples, de-normalized, titled with their class.

    Samples come from the written shards (a partial store works). Images are
    clipped to [0, 1]; C >= 3 shows the first three channels as RGB, fewer
    channels show channel 0 in gray. The PNG is ``columns * cell`` pixels wide
    and ``ceil(n' / columns) * cell`` high, ``n' = min(n, samples)``; each cell
    holds a title line above the image.

    Args:
        path: the store.
        out_png: the PNG to write (its folder is created).
        n: samples to show (>= 1).
        columns: grid columns (>= 1).
        seed: which samples (a fixed seed gives the same grid).
        cell: size of one grid cell in pixels (>= 32).

    Returns:
        ``out_png`` as a Path.

    Raises:
        StoreError: not a store, or nothing written yet.
        InvalidArgumentError: bad ``n``, ``columns`` or ``cell``.
    """
    for name, value, low in (("n", n, 1), ("columns", columns, 1), ("cell", cell, 32)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise InvalidArgumentError(f"{name} must be an integer >= {low}, got {value!r}")
    dataset = ShardDataset(_for_reader(path), denormalize=True, allow_partial=True)
    if len(dataset) == 0:
        raise StoreError(f"{path}: no samples written yet, nothing to preview")
    count = min(n, len(dataset))
    picks = np.sort(np.random.default_rng(seed).choice(len(dataset), size=count, replace=False))
    batch = dataset.__getitems__(picks.tolist())
    store_rows = dataset.rows(picks)
    classes = dataset.classes
    rows = math.ceil(count / columns)
    fig = _figure(columns * cell, rows * cell)
    title_px = max(14, cell // 8)
    pad = 2
    for k, (image, label) in enumerate(batch):
        r, c = divmod(k, columns)
        left = (c * cell + pad) / (columns * cell)
        bottom = ((rows - r - 1) * cell + pad) / (rows * cell)
        ax = fig.add_axes(
            (
                left,
                bottom,
                (cell - 2 * pad) / (columns * cell),
                (cell - title_px - 2 * pad) / (rows * cell),
            )
        )
        pixels, cmap = _display(image.float().numpy())
        ax.imshow(pixels, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_axis_off()
        name = _class_name(label, classes)
        ax.set_title(f"{name} #{int(store_rows[k])}", fontsize=max(6, title_px * 0.55), pad=2)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=fig.dpi, facecolor="white")
    return out


def _load_stats(stats: Mapping[str, Any] | _PathLike) -> dict[str, Any]:
    if isinstance(stats, Mapping):
        return dict(stats)
    try:
        data = json.loads(Path(stats).read_text())
    except (OSError, ValueError) as exc:
        raise InvalidArgumentError(
            f"stats must be a stats JSON mapping or file, got {stats!r} ({exc})"
        ) from exc
    if not isinstance(data, dict):
        raise InvalidArgumentError(f"stats must hold a JSON object, got {type(data).__name__}")
    return data


def _sample_histograms(
    store: _StorePath, *, samples: int, seed: int, bins: int
) -> tuple[np.ndarray, str]:
    dataset = ShardDataset(_for_reader(store), denormalize=True, allow_partial=True)
    if len(dataset) == 0:
        raise StoreError(f"{store}: no samples written yet, nothing to plot")
    count = min(samples, len(dataset))
    picks = np.sort(np.random.default_rng(seed).choice(len(dataset), size=count, replace=False))
    block = np.stack([x.double().numpy() for x, _ in dataset.__getitems__(picks.tolist())])
    channels = block.shape[1]
    counts = np.stack(
        [np.histogram(block[:, c], bins=bins, range=(0.0, 1.0))[0] for c in range(channels)]
    )
    outside = int(((block < 0.0) | (block > 1.0)).sum())
    note = f"{count} stored samples, de-normalized"
    if outside:
        note += f"; {outside / block.size:.1%} of values outside [0, 1] not shown"
    return counts, note


def write_stats_plot(
    stats: Mapping[str, Any] | _PathLike,
    out_png: _PathLike,
    *,
    store: _StorePath | None = None,
    samples: int = 256,
    seed: int = 0,
    size: tuple[int, int] = (1200, 400),
) -> Path:
    """Write :func:`stats_figure` as a PNG of ``size`` pixels; return ``out_png`` as a Path.

    Raises:
        InvalidArgumentError: as :func:`stats_figure`.
    """
    fig = stats_figure(stats, store=store, samples=samples, seed=seed, size=size)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=fig.dpi, facecolor="white")
    return out


def stats_figure(
    stats: Mapping[str, Any] | _PathLike,
    *,
    store: _StorePath | None = None,
    samples: int = 256,
    seed: int = 0,
    size: tuple[int, int] = (1200, 400),
) -> Any:
    """A per-channel Matplotlib figure: pixel histogram, mean and mean ± std.

    The histogram is the stats JSON's ``histogram`` field when present (one
    list of counts per channel, equal bins over [0, 1]); otherwise a
    256-bin histogram of ``samples`` random stored samples of ``store``,
    de-normalized (these are augmented, so they need not match the source
    stats). The mean and std lines always come from ``stats``.

    Args:
        stats: the stats JSON (a mapping or a file).
        out_png: the PNG to write (``size`` pixels).
        store: a store to sample when ``stats`` has no histogram.
        samples: stored samples to draw from ``store``.
        seed: which samples.
        size: ``(width, height)`` in pixels.

    Returns:
        The figure (Agg canvas): one axes per channel, the histogram as a
        density (``stairs``), the mean as a solid vertical line, mean ± std as
        a shaded band and two dashed lines.

    Raises:
        InvalidArgumentError: no histogram and no ``store``, malformed stats,
            or a bad ``size``.
    """
    data = _load_stats(stats)
    mean, std = data.get("mean"), data.get("std")
    if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) and mean):
        raise InvalidArgumentError(
            f"stats must have per-channel 'mean' and 'std' lists, got {mean!r}, {std!r}"
        )
    if not (
        isinstance(size, tuple | list)
        and len(size) == 2
        and all(isinstance(v, int) and v >= 100 for v in size)
    ):
        raise InvalidArgumentError(
            f"size must be (width, height) in pixels, each >= 100, got {size!r}"
        )
    histogram = data.get("histogram")
    if histogram is not None:
        counts = np.asarray(histogram, dtype=np.float64)
        if counts.ndim != 2 or counts.shape[0] != len(mean) or counts.shape[1] < 1:
            raise InvalidArgumentError(
                f"stats histogram must be one list of bin counts per channel ({len(mean)}), "
                f"got shape {counts.shape}"
            )
        note = f"histogram of {data.get('images', '?')} source images"
    elif store is not None:
        raw, note = _sample_histograms(store, samples=samples, seed=seed, bins=256)
        if raw.shape[0] != len(mean):
            raise InvalidArgumentError(
                f"stats has {len(mean)} channels, the store has {raw.shape[0]}"
            )
        counts = raw.astype(np.float64)
    else:
        raise InvalidArgumentError(
            "stats has no 'histogram' field; pass store= to plot a histogram of stored samples"
        )
    names = data.get("channels") or [f"channel {c}" for c in range(len(mean))]
    colors = {"R": "tab:red", "G": "tab:green", "B": "tab:blue"}
    fig = _figure(int(size[0]), int(size[1]))
    channels = len(mean)
    bins = counts.shape[1]
    edges = np.linspace(0.0, 1.0, bins + 1)
    fig.suptitle(f"pixel distribution per channel ({note})", fontsize=10)
    for c in range(channels):
        ax = fig.add_subplot(1, channels, c + 1)
        total = counts[c].sum()
        density = counts[c] / (total * (1.0 / bins)) if total > 0 else counts[c]
        color = colors.get(str(names[c]), "tab:gray")
        ax.stairs(density, edges, fill=True, color=color, alpha=0.45)
        m, s = float(mean[c]), float(std[c])
        ax.axvspan(m - s, m + s, color="black", alpha=0.08, label="mean ± std")
        ax.axvline(m, color="black", linewidth=1.2, label="mean")
        ax.axvline(m - s, color="black", linewidth=0.8, linestyle="--")
        ax.axvline(m + s, color="black", linewidth=0.8, linestyle="--")
        ax.set_xlim(0.0, 1.0)
        ax.set_title(f"{names[c]}: {m:.4f} ± {s:.4f}", fontsize=9)
        ax.set_xlabel("value (0-1 scale)", fontsize=8)
        ax.tick_params(labelsize=7)
        if c == 0:
            ax.set_ylabel("density", fontsize=8)
            ax.legend(fontsize=7, loc="upper right")
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.15, top=0.82, wspace=0.25)
    return fig


def stats_plot_path(out_png: _PathLike) -> Path:
    """Return where :func:`write_previews` puts the stats plot: ``grid.png`` -> ``grid-stats.png``.

    Example:
        >>> stats_plot_path("out/grid.png").as_posix()
        'out/grid-stats.png'
    """
    out = Path(out_png)
    return out.with_name(f"{out.stem}-stats{out.suffix or '.png'}")


def write_previews(
    path: _StorePath, out_png: _PathLike, *, n: int = 16, columns: int = 4, seed: int = 0
) -> tuple[Path, Path]:
    """Write the sample grid to ``out_png`` and the stats plot next to it (``imageprep preview``).

    Returns:
        ``(grid, stats_plot)`` paths.
    """
    grid = write_preview(path, out_png, n=n, columns=columns, seed=seed)
    stats = read_attrs(path).get("stats") or {}
    plot = write_stats_plot(stats, stats_plot_path(out_png), store=path, seed=seed)
    return grid, plot
