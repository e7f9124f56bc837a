"""The ``imageprep`` command line (a typer app).

Commands are plain decorated functions on :data:`app`; adding one (``run``,
``serve``, ``verify``, ``info``, ``preview``) is one more ``@app.command()``.
Heavy modules (numpy, PIL, dask, torch, zarr, prefect) are imported inside the
commands, never at module level, so that ``imageprep --help`` answers at once.

``run``, ``serve`` and ``demo`` run the Prefect flows of :mod:`flows` (imported
inside those commands only: the CLI is the one entry point above ``flows/``).

Exit codes (the CLI contract): 0 success; 1 the run finished but some inputs
were rejected and ``--strict`` was given, shards could not be written (the
store stays resumable) or verification found a mismatch; 2 bad usage (missing
folder, bad option or config, a source without any image file, a store made or
held by another run).
"""

from __future__ import annotations

import sys
import time
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from pipeline.config import RunConfig
    from pipeline.run import RunResult
    from pipeline.stats import Stats

__all__ = ["app", "main"]

EXIT_OK = 0
EXIT_REJECTED = 1
EXIT_USAGE = 2

PILLOW_MAX_PIXELS = 89478485
"""Pillow's default ``Image.MAX_IMAGE_PIXELS`` (= ``pipeline.decode.DEFAULT_MAX_PIXELS``;
repeated here so that ``--help`` does not import Pillow)."""

FAILURES_SHOWN = 5

app = typer.Typer(
    name="imageprep",
    help="Turn a folder of images into training-ready data: exact dataset statistics, "
    "chunked normalization and augmentation, sharded Zarr stores.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


SetOverrides = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override a config key: --set key.path=value (YAML value; repeatable).",
        show_default=False,
    ),
]
"""The ``--set key.path=value`` option of the commands that take a config."""


class StatsMethod(str, Enum):
    """Choices of ``--method``."""

    exact = "exact"
    chan = "chan"
    two_pass = "two-pass"


def _console(*, stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _fmt(v: float) -> str:
    return "-" if v != v else f"{v:.6g}"


def print_stats(
    stats: Stats,
    *,
    console: Console,
    title: str,
    seconds: float | None = None,
    max_failures: int | None = FAILURES_SHOWN,
) -> None:
    """Print the statistics as a table, and a summary of the rejected inputs.

    ``max_failures`` rejected inputs are listed (``None``: all of them).
    """
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("statistic")
    for ch in stats.channels:
        table.add_column(ch, justify="right")
    rows = [
        ("mean", "mean"),
        ("std", "std"),
        ("var", "var"),
        ("min", "min"),
        ("max", "max"),
        ("per-image mean", "per_image_mean"),
        ("per-image std", "per_image_std"),
    ]
    for label, key in rows:
        style = "dim" if key.startswith("per_image") else None
        table.add_row(label, *(_fmt(v) for v in getattr(stats, key)), style=style)
    console.print(table)
    took = f" in {seconds:.1f} s" if seconds is not None else ""
    console.print(
        f"{stats.images} images, {stats.count:,} pixels per channel, method {stats.method}{took}."
    )
    console.print("Pooled over every pixel, 0-1 scale; per-image rows average per-image values.")
    if stats.images == 0:
        console.print("[bold red]No image could be decoded: there are no statistics.[/]")
    if stats.failures:
        n = len(stats.failures)
        console.print(f"[yellow]{n} input{'s' if n != 1 else ''} rejected[/]:")
        shown = n if max_failures is None else max_failures
        for f in stats.failures[:shown]:
            console.print(f"  {f.path}: {f.error}", markup=False, soft_wrap=True)
        if n > shown:
            console.print(f"  ... and {n - shown} more (all in the stats JSON)")


def _usage_error(message: str) -> typer.Exit:
    from rich.markup import escape

    _console(stderr=True).print(f"[red]Error:[/] {escape(message)}")
    return typer.Exit(EXIT_USAGE)


def _run_stats(
    src: Path,
    *,
    method: str,
    workers: int | None,
    chunk_size: int,
    max_pixels: int | None,
) -> Stats:
    """Scan ``src`` and compute its statistics with a progress bar on a terminal."""
    import warnings

    from PIL import Image

    from pipeline.errors import ImageprepError
    from pipeline.progress import progress_bar
    from pipeline.sources import scan
    from pipeline.stats import compute_stats

    # Pillow warns for images between 1x and 2x its limit; decode reports them as
    # errors (decompression bomb), so the warning is noise here.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    try:
        manifest = scan(src)
    except ImageprepError as e:
        raise _usage_error(str(e)) from e
    if not manifest.files and not manifest.rejected:
        raise _usage_error(
            f"no image files under {src} (extensions: jpg jpeg png webp bmp tif tiff gif)"
        )
    progress_console = _console(stderr=True)
    with progress_bar(len(manifest.files), description="decoding", console=progress_console) as adv:
        try:
            return compute_stats(
                manifest,
                method=method,  # type: ignore[arg-type]  # validated by typer's Enum
                workers=workers,
                chunk_size=chunk_size,
                max_pixels=max_pixels,
                progress=adv,
            )
        except ImageprepError as e:
            raise _usage_error(str(e)) from e


@app.command()
def stats(
    src: Annotated[
        Path,
        typer.Argument(
            help="Folder of images, scanned recursively (first-level subfolders are classes).",
            exists=True,
            file_okay=False,
            dir_okay=True,
            show_default=False,
        ),
    ],
    method: Annotated[
        StatsMethod,
        typer.Option(
            help="exact: integer sums, exact rational result (bit-identical whatever the "
            "chunking); chan: per-chunk float64 two-pass merged pairwise (Chan et al.); "
            "two-pass: global float64 mean then squared deviations.",
        ),
    ] = StatsMethod.exact,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="Decoding threads (default: all cores).", show_default=False),
    ] = None,
    json_path: Annotated[
        str | None,
        typer.Option(
            "--json",
            metavar="PATH",
            help="Write the stats JSON to PATH; '-' writes it to stdout (the table then goes "
            "to stderr).",
            show_default=False,
        ),
    ] = None,
    strict: Annotated[
        bool,
        typer.Option("--strict", help="Exit with status 1 when any input was rejected."),
    ] = False,
    chunk_size: Annotated[
        int, typer.Option(min=1, help="Files per Dask task (memory is bounded by a chunk).")
    ] = 64,
    max_pixels: Annotated[
        int,
        typer.Option(
            min=0,
            help="Reject images whose header claims more pixels than this (decompression "
            "bombs); 0 disables the check.",
        ),
    ] = PILLOW_MAX_PIXELS,
) -> None:
    """Exact per-channel statistics (mean, std, var, min, max) of a folder of images.

    Pooled over every pixel of every image on the 0-1 scale (8-bit / 255, 16-bit /
    65535); per-image averages are reported beside. Unreadable files are listed,
    not fatal.
    """
    out = None
    if json_path is not None and json_path != "-":
        out = Path(json_path)
        if not out.parent.is_dir():
            raise _usage_error(f"--json: folder {str(out.parent)!r} does not exist")
    console = _console(stderr=json_path == "-")
    t0 = time.perf_counter()
    result = _run_stats(
        src,
        method=method.value,
        workers=workers,
        chunk_size=chunk_size,
        max_pixels=max_pixels or None,
    )
    seconds = time.perf_counter() - t0
    print_stats(result, console=console, title=f"imageprep stats: {src}", seconds=seconds)
    if json_path == "-":
        import json

        sys.stdout.write(json.dumps(result.to_json(), indent=2) + "\n")
        sys.stdout.flush()
    elif out is not None:
        result.save(out)
        console.print(f"stats JSON written to {out}")
    if strict and result.failures:
        raise typer.Exit(EXIT_REJECTED)


def _load_config(config: Path, overrides: list[str] | None) -> RunConfig:
    from pipeline.config import load_config
    from pipeline.errors import ConfigError

    try:
        return load_config(config, overrides or [])
    except ConfigError as e:
        raise _usage_error(str(e)) from e


class _RunProgress:
    """Rich progress bars for the two phases of a run (files decoded, shards written)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress: Progress | None = None
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> _RunProgress:
        if self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

            self.progress = Progress(
                "{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
            )
            self.progress.start()
        return self

    def __call__(self, phase: str, done: int, total: int) -> None:
        if self.progress is None:
            return
        if phase not in self.tasks:
            label = {"stats": "statistics (files)", "shards": "writing (shards)"}.get(phase, phase)
            self.tasks[phase] = self.progress.add_task(label, total=total)
        self.progress.update(self.tasks[phase], completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()


def print_run_result(
    result: RunResult, *, console: Console, max_failures: int | None = FAILURES_SHOWN
) -> None:
    """Print the outcome of a prepare run: statistics, store, shards, failures."""
    from pipeline.stats import Stats

    print_stats(
        Stats.from_json(result.stats),
        console=console,
        title="dataset statistics",
        max_failures=max_failures,
    )
    verb = "resumed" if result.resumed else "written"
    console.print(
        f"store {verb}: {result.store} ({result.samples} samples in {result.shards} shards; "
        f"{result.shards_written} written now, {result.shards_skipped} already done) "
        f"in {result.seconds:.1f} s",
        soft_wrap=True,
    )


def _prefect_defaults() -> None:
    """Defaults for the temporary Prefect server a run starts without ``PREFECT_API_URL``.

    Its anonymous usage telemetry is off unless the environment says
    otherwise (a throwaway server has nothing to report, and on a fresh
    ``PREFECT_HOME`` its first write races the database set-up).
    """
    import os

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _prepare(cfg: RunConfig, *, use_prefect: bool, verify: bool, refresh_stats: bool) -> RunResult:
    """Run the prepare job (the flow, or the plain function) and map errors to exit codes.

    Exit 1: shards failed (the store stays resumable) or a shard does not
    match its checksum; exit 2: bad config, a store of another run, a store
    held by another run.
    """
    from pipeline.errors import ImageprepError
    from pipeline.run import ShardWriteError

    err = _console(stderr=True)
    try:
        if use_prefect:
            _prefect_defaults()
            import os

            from flows.prepare import run_foreground

            # heartbeats only when asked for in the environment (see run_foreground)
            heartbeat = any(
                name in os.environ
                for name in (
                    "PREFECT_FLOWS_HEARTBEAT_FREQUENCY",
                    "PREFECT_RUNNER_HEARTBEAT_FREQUENCY",
                )
            )
            result: RunResult = run_foreground(
                cfg, verify=verify, refresh_stats=refresh_stats, heartbeat=heartbeat
            )
        else:
            from pipeline.run import prepare

            with _RunProgress(err) as progress:
                result = prepare(cfg, progress=progress)
            if verify:
                from pipeline.shards import verify as verify_store

                report = verify_store(cfg.output.path, workers=cfg.runtime.workers)
                if not report.ok:
                    err.print(f"verification failed: {report.summary()}", markup=False)
                    raise typer.Exit(EXIT_REJECTED)
    except ShardWriteError as e:
        err.print(str(e), markup=False, soft_wrap=True)
        raise typer.Exit(EXIT_REJECTED) from e
    except ImageprepError as e:
        from flows.tasks import StoreVerificationError

        if isinstance(e, StoreVerificationError):
            err.print(str(e), markup=False, soft_wrap=True)
            raise typer.Exit(EXIT_REJECTED) from e
        raise _usage_error(str(e)) from e
    return result


_PREFECT_HELP = (
    "Run the plain pipeline function without Prefect (no server, no retries, cache or artifacts)."
)


def make_demo_source(out: Path, *, seed: int = 0, n_per_class: int = 12) -> Path:
    """Write the synthetic demo dataset into ``out/images`` and return that folder."""
    from pipeline.synthetic import make_dataset

    ds = make_dataset(out / "images", seed=seed, n_per_class=n_per_class)
    return ds.root


@app.command()
def demo(
    out: Annotated[
        Path,
        typer.Option(
            help="Output folder: synthetic images in OUT/images, the store in OUT/dataset.zarr, "
            "the preview in OUT/preview.png.",
            file_okay=False,
        ),
    ] = Path("demo-output"),
    seed: Annotated[int, typer.Option(help="Seed of the synthetic dataset.")] = 0,
    n_per_class: Annotated[
        int, typer.Option(min=1, help="Synthetic images per class (4 classes).")
    ] = 12,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="Worker threads (default: all cores).", show_default=False),
    ] = None,
    no_prefect: Annotated[bool, typer.Option("--no-prefect", help=_PREFECT_HELP)] = False,
) -> None:
    """Make a synthetic dataset (with broken files) and prepare it with configs/demo.yaml.

    Runs the prepare flow (statistics, augmentation, sharded Zarr store), then
    prints the statistics, the store, the rejected inputs and the preview.
    """
    from pipeline.errors import ImageprepError

    console = _console()
    out = out.expanduser().resolve()
    try:
        src = make_demo_source(out, seed=seed, n_per_class=n_per_class)
        from flows.demo import demo_config

        cfg = demo_config(out, workers=workers)
    except ImageprepError as e:
        raise _usage_error(str(e)) from e
    console.print(f"synthetic dataset written to {src}", soft_wrap=True)
    result = _prepare(cfg, use_prefect=not no_prefect, verify=True, refresh_stats=False)
    print_run_result(result, console=console, max_failures=None)
    from pipeline.report import write_previews
    from pipeline.stats import Stats

    stats_json = out / "stats.json"
    Stats.from_json(result.stats).save(stats_json)
    grid, plot = write_previews(result.store, out / "preview.png")
    console.print(f"store: {result.store}", soft_wrap=True)
    console.print(f"stats JSON: {stats_json}", soft_wrap=True)
    console.print(f"preview: {grid}", soft_wrap=True)
    console.print(f"stats plot: {plot}", soft_wrap=True)


@app.command()
def run(
    config: Annotated[
        Path,
        typer.Argument(
            help="Run config (YAML); see configs/ and the README's reference.",
            exists=False,
            dir_okay=False,
        ),
    ],
    set_: SetOverrides = None,
    strict: Annotated[
        bool,
        typer.Option("--strict", help="Exit with status 1 when any input was rejected."),
    ] = False,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify/--no-verify",
            help="Recompute every shard's SHA-256 after writing (exit 1 on a mismatch).",
        ),
    ] = True,
    refresh_stats: Annotated[
        bool,
        typer.Option(
            "--refresh-stats", help="Recompute the statistics even when cached for this source."
        ),
    ] = False,
    no_prefect: Annotated[bool, typer.Option("--no-prefect", help=_PREFECT_HELP)] = False,
) -> None:
    """Prepare a dataset with the Prefect flow: statistics, augment, normalize, Zarr shards.

    Without PREFECT_API_URL Prefect starts a temporary local server for the
    run. Resumable: rerunning the same config on the same source writes only
    the shards still missing. Rejected inputs are listed, not fatal. Exit 1
    when shards failed (or --strict and inputs were rejected), 2 on a bad
    config or a store in use by another run.
    """
    cfg = _load_config(config, set_)
    result = _prepare(cfg, use_prefect=not no_prefect, verify=verify, refresh_stats=refresh_stats)
    print_run_result(result, console=_console())
    if strict and result.failures:
        raise typer.Exit(EXIT_REJECTED)


@app.command()
def serve(
    config: Annotated[
        Path,
        typer.Argument(help="Run config (YAML) of the scheduled runs.", dir_okay=False),
    ],
    cron: Annotated[
        str,
        typer.Option(
            "--cron",
            help='Cron schedule, e.g. "0 3 * * *" (every day at 03:00).',
            show_default=False,
        ),
    ],
    set_: SetOverrides = None,
    name: Annotated[
        str | None,
        typer.Option(
            help="Deployment name (imageprep-prepare/NAME); default: the config file's stem.",
            show_default=False,
        ),
    ] = None,
    timezone: Annotated[
        str | None,
        typer.Option(help="IANA time zone of the schedule (default UTC).", show_default=False),
    ] = None,
    verify: Annotated[
        bool,
        typer.Option("--verify/--no-verify", help="Verify the shards' checksums in each run."),
    ] = True,
) -> None:
    """Serve the prepare flow on a cron schedule (needs a Prefect server, see the README).

    Creates the deployment imageprep-prepare/NAME on the server at
    PREFECT_API_URL and executes its scheduled and triggered runs until
    stopped (Ctrl-C pauses the schedule).
    """
    from pipeline.errors import ImageprepError

    cfg = _load_config(config, set_)
    from flows.serve import serve_prepare

    try:
        serve_prepare(cfg, cron=cron, name=name or config.stem, timezone=timezone, verify=verify)
    except ImageprepError as e:
        raise _usage_error(str(e)) from e


@app.command()
def verify(
    store: Annotated[Path, typer.Argument(help="The Zarr store written by imageprep run.")],
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="Threads reading shards (default: up to 8).", show_default=False),
    ] = None,
) -> None:
    """Recompute every shard's SHA-256 and compare it with its record (exit 1 on mismatch)."""
    from pipeline.errors import ImageprepError
    from pipeline.shards import verify as verify_store

    try:
        report = verify_store(store, workers=workers)
    except ImageprepError as e:
        raise _usage_error(str(e)) from e
    _console().print(report.summary(), markup=False)
    if not report.ok:
        raise typer.Exit(EXIT_REJECTED)


@app.command()
def info(
    store: Annotated[Path, typer.Argument(help="The Zarr store written by imageprep run.")],
) -> None:
    """Show a store's shape, dtype, classes, statistics, sizes and rejected inputs."""
    from pipeline.errors import ImageprepError
    from pipeline.report import render_info, store_info

    try:
        data = store_info(store)
    except ImageprepError as e:
        raise _usage_error(str(e)) from e
    _console().print(render_info(data))


@app.command()
def preview(
    store: Annotated[Path, typer.Argument(help="The Zarr store written by imageprep run.")],
    out: Annotated[
        Path, typer.Option("--out", help="PNG of the sample grid; the stats plot goes beside it.")
    ] = Path("grid.png"),
    n: Annotated[int, typer.Option(min=1, help="Samples in the grid.")] = 16,
    columns: Annotated[int, typer.Option(min=1, help="Columns of the grid.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of the sample choice.")] = 0,
) -> None:
    """Write a grid of de-normalized samples with labels, and a per-channel stats plot."""
    from pipeline.errors import ImageprepError
    from pipeline.report import write_previews

    try:
        grid, plot = write_previews(store, out, n=n, columns=columns, seed=seed)
    except ImageprepError as e:
        raise _usage_error(str(e)) from e
    console = _console()
    console.print(f"sample grid written to {grid}")
    console.print(f"stats plot written to {plot}")


def main() -> None:
    """Entry point of the ``imageprep`` console script."""
    app()


if __name__ == "__main__":
    main()
