"""The Prefect-free commands of ``imageprep``: ``stats``, ``verify``, ``info``, ``preview``.

:data:`app` is a typer app holding the commands that need only the library;
:mod:`flows.cli` (the ``imageprep`` console script) adds ``run``, ``serve``
and ``demo``, which run the Prefect flows, on top of these. Heavy modules
(numpy, PIL, dask, torch, zarr) are imported inside the commands, never at
module level, so that ``imageprep --help`` answers at once, and nothing here
imports Prefect.

The helpers the commands share (:func:`print_stats`, :func:`print_run_result`,
:func:`usage_error`, :func:`load_run_config`) are public for :mod:`flows.cli`.

Sources and stores may be fsspec URLs (``s3://bucket/images``,
``s3://bucket/ds.zarr``, ``memory://...``): ``--storage-option KEY=VALUE``
(repeatable; ``-o``) passes fsspec options (``endpoint_url=http://host:9000``,
``anon=true``, ``client_kwargs.region_name=eu-west-1``); without them the
environment's credentials apply. A URL of an unknown or uninstalled scheme,
or one that lost a slash (``s3:/bucket``), is a usage error (exit 2).

Exit codes (the CLI contract): 0 success; 1 the run finished but some inputs
were rejected and ``--strict`` was given, shards could not be written (the
store stays resumable) or verification found a mismatch; 2 bad usage (missing
folder, bad option or config, a source without any image file, a store made or
held by another run).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from pipeline.config import RunConfig
    from pipeline.run import RunResult
    from pipeline.stats import Stats
    from pipeline.storage import Location

__all__ = [
    "APP_SETTINGS",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_REJECTED",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "Interrupted",
    "SetOverrides",
    "StorageOptions",
    "app",
    "cli_location",
    "make_console",
    "load_run_config",
    "print_run_result",
    "print_stats",
    "error_message",
    "guarded",
    "run_app",
    "set_resume_hint",
    "stats_drift",
    "usage_error",
]

EXIT_OK = 0
EXIT_REJECTED = 1
EXIT_USAGE = 2

PILLOW_MAX_PIXELS = 89478485
"""Pillow's default ``Image.MAX_IMAGE_PIXELS`` (= ``pipeline.decode.DEFAULT_MAX_PIXELS``;
repeated here so that ``--help`` does not import Pillow)."""

FAILURES_SHOWN = 5

#: The settings of the ``imageprep`` typer app (:mod:`flows.cli` builds the full one with them).
APP_SETTINGS: dict[str, Any] = {
    "name": "imageprep",
    "help": "Turn a folder of images into training-ready data: exact dataset statistics, "
    "chunked normalization and augmentation, sharded Zarr stores.",
    "no_args_is_help": True,
    "add_completion": False,
    "pretty_exceptions_enable": False,
}

app = typer.Typer(**APP_SETTINGS)


SetOverrides = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override a config key: --set key.path=value (YAML value; repeatable).",
        show_default=False,
    ),
]
"""The ``--set key.path=value`` option of the commands that take a config."""

StorageOptions = Annotated[
    list[str] | None,
    typer.Option(
        "--storage-option",
        "-o",
        metavar="KEY=VALUE",
        help="An fsspec option for a URL (endpoint_url=http://host:9000, anon=true, "
        "client_kwargs.region_name=eu-west-1); YAML value; repeatable.",
        show_default=False,
    ),
]
"""The ``--storage-option KEY=VALUE`` option of the commands that take a path or URL."""


def parse_storage_options(items: list[str] | None) -> dict[str, Any]:
    """``["a=1", "b.c=x"]`` -> ``{"a": 1, "b": {"c": "x"}}``: values are YAML, dots nest.

    Raises:
        ConfigError: an item has no ``=`` or an empty key, or a key is both a
            value and a mapping.

    Example:
        >>> parse_storage_options(["endpoint_url=http://h:9000", "anon=false",
        ...                        "client_kwargs.region_name=eu"])
        {'endpoint_url': 'http://h:9000', 'anon': False, 'client_kwargs': {'region_name': 'eu'}}
    """
    from pipeline.config.yamlsafe import load_yaml
    from pipeline.errors import ConfigError

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(p.strip() for p in parts):
            raise ConfigError(f"--storage-option {item}: expected KEY=VALUE")
        value = load_yaml(raw, source="", aliases=False) if raw.strip() else ""
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--storage-option {item}: {part!r} is already a value")
            node = child
        if isinstance(node.get(parts[-1]), dict):
            raise ConfigError(f"--storage-option {item}: {key!r} is already a mapping")
        node[parts[-1]] = value
    return out


def cli_location(value: str, options: list[str] | None, *, what: str) -> Location:
    """The location of a path or URL argument, with its ``--storage-option`` values.

    Commands pass a store on as :func:`pipeline.store.store_ref` of it (a ``Path``
    for a local folder).

    Raises:
        typer.Exit: (status 2) an unknown, unsupported or uninstalled scheme, a URL that
            lost a slash, a malformed option, or options given with a local path.
    """
    from pipeline.errors import ConfigError
    from pipeline.storage import resolve_location

    try:
        opts = parse_storage_options(options)
        location = resolve_location(value, key=what, storage_options=opts)
    except ConfigError as e:
        raise usage_error(str(e)) from e
    if opts and location.is_local:
        raise usage_error(
            f"--storage-option applies to a URL (s3://, gs://, az://, memory://), "
            f"but {what} is the local folder {location.path!r}"
        )
    return location


class StatsMethod(str, Enum):
    """Choices of ``--method``."""

    exact = "exact"
    chan = "chan"
    two_pass = "two-pass"


def make_console(*, stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr) that highlights nothing on its own."""
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


# ----------------------------------------------------------------------------- the boundary

EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived: raised in the main thread so that every ``with`` unwinds.

    A ``BaseException`` (as ``KeyboardInterrupt``), so that no ``except
    Exception`` on the way swallows it, and not a ``KeyboardInterrupt``, which
    typer turns into a silent exit 130.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_resume_hint: list[str] = []


def set_resume_hint(command: str) -> None:
    """The command that resumes what the running command leaves (said on an interruption)."""
    _resume_hint[:] = [command]


def error_message(exc: BaseException) -> tuple[str, int]:
    """One line that says what went wrong, and the exit status (the CLI contract).

    imageprep's own errors carry their message and status (2 for usage and
    configuration, 1 for data, I/O and corrupt stores); operating-system
    errors name the file and the cause; running out of memory names the keys
    that bound it. Anything else is a bug: its type and message, and how to see
    the traceback.
    """
    import errno

    from pipeline.errors import ImageprepError

    resume = f"; the store is resumable: `{_resume_hint[0]}` continues" if _resume_hint else ""
    if isinstance(exc, ImageprepError):
        return str(exc), exc.exit_code
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        cause = exc.strerror or str(exc) or type(exc).__name__
        if exc.errno == errno.ENOSPC:
            return f"{where}{cause} (free some space{resume or ' and run again'})", 1
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return f"{where}{cause} (check the permissions of the path)", 1
        return f"{where}{cause}{resume}", 1
    if isinstance(exc, MemoryError):
        return (
            "out of memory: lower runtime.workers, runtime.batch_size or output.shard_size "
            f"(memory in flight grows with each){resume}",
            1,
        )
    detail = str(exc).splitlines()[0] if str(exc) else ""
    return (
        f"internal error: {type(exc).__name__}{': ' + detail if detail else ''} "
        "(run again with --debug for the traceback, and please report it)",
        1,
    )


_debug: list[bool] = [False]


def _debugging() -> bool:
    import os

    return _debug[0] or os.environ.get("IMAGEPREP_DEBUG", "") not in ("", "0")


def guarded(command: Callable[..., Any]) -> Callable[..., Any]:
    """The exception boundary of one command: an error becomes one line and its exit status.

    Every ``@app.command()`` of ``imageprep`` carries it, so the command line
    and a ``CliRunner`` see the same behaviour: ``Error: <one line>`` on stderr
    (:func:`error_message`) and the exit status of the contract, never a
    traceback, unless ``--debug`` or ``IMAGEPREP_DEBUG=1``.
    """
    import functools

    @functools.wraps(command)
    def boundary(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except Exception as e:
            import click

            if isinstance(e, click.ClickException):
                raise
            if _debugging():
                import traceback

                traceback.print_exc()
            message, code = error_message(e)
            make_console(stderr=True).print(f"[red]Error:[/] {_escape(message)}", soft_wrap=True)
            raise typer.Exit(code) from None

    return boundary


def run_app(app: typer.Typer, argv: list[str] | None = None) -> None:
    """Run the ``imageprep`` app; exits the process with the command's status.

    Each command is :func:`guarded`; this adds ``--debug`` (anywhere on the
    command line: tracebacks are printed) and the signals: SIGINT and
    SIGTERM stop the command where it is (``with`` blocks unwind: locks are
    released), print that the store is resumable and how to resume, and exit
    130 and 143. Usage errors of the parser itself exit 2 (click's).
    """
    import signal

    args = list(sys.argv[1:] if argv is None else argv)
    _debug[0] = "--debug" in args
    args = [a for a in args if a != "--debug"]

    def interrupt(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    handlers = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        handlers[sig] = signal.signal(sig, interrupt)
    err = make_console(stderr=True)
    code = EXIT_OK
    try:
        app(args=args, prog_name="imageprep")
    except SystemExit as e:  # typer's own exit (success, typer.Exit, a usage error)
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except Interrupted as e:
        for sig, handler in handlers.items():  # a second signal ends the process at once
            signal.signal(sig, handler)
        name = "SIGINT" if e.signum == signal.SIGINT else "SIGTERM"
        what = (
            f"nothing written is lost: `{_resume_hint[0]}` resumes where it stopped"
            if _resume_hint
            else "nothing was changed"
        )
        err.print(f"Interrupted ({name}): {what}", markup=False, soft_wrap=True)
        code = EXIT_INTERRUPTED if e.signum == signal.SIGINT else EXIT_TERMINATED
    except Exception as e:  # outside any command (the commands are guarded)
        if _debugging():
            import traceback

            traceback.print_exc()
        message, code = error_message(e)
        err.print(f"[red]Error:[/] {_escape(message)}", soft_wrap=True)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    raise SystemExit(code)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def usage_error(message: str) -> typer.Exit:
    """Print ``Error: message`` on stderr and return the exit (status 2) to raise."""
    from rich.markup import escape

    make_console(stderr=True).print(f"[red]Error:[/] {escape(message)}", soft_wrap=True)
    return typer.Exit(EXIT_USAGE)


def _run_stats(
    src: Location,
    *,
    method: str,
    workers: int | None,
    chunk_size: int,
    max_pixels: int | None,
) -> Stats:
    """Scan ``src`` and compute its statistics with a progress bar on a terminal."""
    import warnings

    from PIL import Image

    from pipeline.progress import BarProgress, counter
    from pipeline.sources import scan
    from pipeline.stats import compute_stats

    # Pillow warns for images between 1x and 2x its limit; decode reports them as
    # errors (decompression bomb), so the warning is noise here.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    manifest = scan(src)
    if not manifest.files and not manifest.rejected:
        from pipeline.errors import SourceError

        raise SourceError(
            f"no image files under {src} (extensions: jpg jpeg png webp bmp tif tiff gif)"
        )
    progress_console = make_console(stderr=True)
    with BarProgress(progress_console) as bars:
        adv = counter(bars, "stats", len(manifest.files))
        return compute_stats(
            manifest,
            method=method,  # type: ignore[arg-type]  # validated by typer's Enum
            workers=workers,
            chunk_size=chunk_size,
            max_pixels=max_pixels,
            progress=adv,
        )


@app.command()
@guarded
def stats(
    src: Annotated[
        str,
        typer.Argument(
            help="Folder of images or an fsspec URL (s3://bucket/prefix, ...), scanned "
            "recursively (first-level subfolders are classes).",
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
    storage_option: StorageOptions = None,
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
            raise usage_error(f"--json: folder {str(out.parent)!r} does not exist")
    location = cli_location(src, storage_option, what="SRC")
    if location.is_local and not Path(location.path).is_dir():
        raise usage_error(f"SRC: folder {src!r} does not exist (or is not a folder)")
    console = make_console(stderr=json_path == "-")
    t0 = time.perf_counter()
    result = _run_stats(
        location,
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


def load_run_config(config: Path, overrides: list[str] | None) -> RunConfig:
    """Load a run config with its ``--set`` overrides; a bad one is a usage error (exit 2)."""
    from pipeline.config import load_config
    from pipeline.errors import ConfigError

    try:
        return load_config(config, overrides or [])
    except ConfigError as e:
        raise usage_error(str(e)) from e


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
    verb = "updated" if result.resumed else "written"
    console.print(
        f"store {verb}: {result.store} ({result.samples} samples in {result.shards} shards; "
        f"{result.shards_written} written now, {result.shards_skipped} already done) "
        f"in {result.seconds:.1f} s",
        soft_wrap=True,
    )
    if result.diff is not None and result.diff.is_update:
        console.print(f"source since the last run: {result.diff.summary()}", soft_wrap=True)
        if result.retired:
            console.print(
                f"{result.retired} rows retired or unused (imageprep compact {result.store} "
                "drops them)",
                soft_wrap=True,
            )
    drift = stats_drift(result.stats, result.current_stats)
    if drift:
        console.print(f"normalization statistics vs the live rows now: {drift}", soft_wrap=True)


def stats_drift(stats: dict[str, Any] | None, current: dict[str, Any] | None) -> str:
    """``"mean +0.0012/..., std ..."``: how the live rows' statistics moved from the frozen ones.

    Empty when either is missing or nothing moved.

    Example:
        >>> stats_drift({"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]},
        ...             {"mean": [0.5, 0.51, 0.5], "std": [0.2, 0.2, 0.19]})
        'mean +0/+0.01/+0, std +0/+0/-0.01'
    """
    if not stats or not current:
        return ""
    parts = []
    for key in ("mean", "std"):
        old, new = stats.get(key), current.get(key)
        if not (isinstance(old, list) and isinstance(new, list)) or None in old + new:
            return ""
        parts.append(key + " " + "/".join(f"{b - a:+.4g}" for a, b in zip(old, new, strict=True)))
    if all(
        a == b for key in ("mean", "std") for a, b in zip(stats[key], current[key], strict=True)
    ):
        return ""
    return ", ".join(parts)


_STORE_HELP = "The Zarr store written by imageprep run: a folder or a URL (s3://bucket/ds.zarr)."


@app.command()
@guarded
def verify(
    store: Annotated[str, typer.Argument(help=_STORE_HELP, show_default=False)],
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="Threads reading shards (default: up to 8).", show_default=False),
    ] = None,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Un-mark the shards that do not match and rewrite them from the source "
            "with the store's own config (the source must still be there).",
        ),
    ] = False,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help="Compare each shard's stored bytes with the CRC32C recorded when they were "
            "written, without decoding them; a shard without one, or whose bytes differ, "
            "gets the SHA-256 check.",
        ),
    ] = False,
    storage_option: StorageOptions = None,
) -> None:
    """Recompute every shard's SHA-256 and the manifest's, compare with the records (exit 1).

    The manifest covers what gives the rows their meaning: the source paths,
    the file table, the live mask, the classes, the statistics, the config
    and the layout. With --quick, the shards' stored bytes are checked
    against their CRC32C instead (what a run does after writing). With
    --repair, corrupt shards are rewritten (exit 0 when the store verifies
    afterwards).
    """
    from pipeline.store import store_ref
    from pipeline.store import verify as verify_store

    target = store_ref(cli_location(store, storage_option, what="STORE"))
    console = make_console()
    if not repair:
        report = verify_store(target, workers=workers, deep=not quick)
        console.print(report.summary(), markup=False, soft_wrap=True)
        if not report.ok:
            raise typer.Exit(EXIT_REJECTED)
        return
    from pipeline.progress import BarProgress
    from pipeline.run import repair as repair_store

    with BarProgress(make_console(stderr=True)) as bars:
        result = repair_store(target, workers=workers, progress=bars)
    console.print(result.before.summary(), markup=False, soft_wrap=True)
    if result.run is None:
        console.print("nothing to repair", markup=False)
        return
    console.print(
        f"repaired: {len(result.unmarked)} shard(s) un-marked, "
        f"{result.run.shards_written} rewritten from the source; "
        + result.after.summary().splitlines()[0],
        markup=False,
        soft_wrap=True,
    )


@app.command()
@guarded
def compact(
    store: Annotated[
        str, typer.Argument(help="The Zarr store written by imageprep run (a local folder).")
    ],
    workers: Annotated[
        int | None,
        typer.Option(
            min=1, help="Threads copying shards (default: all cores).", show_default=False
        ),
    ] = None,
    storage_option: StorageOptions = None,
) -> None:
    """Rewrite a store without its retired rows (resumable, checksummed, verified, then swapped).

    Local folders only: an object store has no atomic rename for the swap (exit 2).
    """
    from pipeline.progress import BarProgress
    from pipeline.store import compact as compact_store
    from pipeline.store import store_ref

    location = cli_location(store, storage_option, what="STORE")
    err = make_console(stderr=True)
    with BarProgress(err) as bars:
        result = compact_store(
            store_ref(location),
            workers=workers,
            progress=lambda done, total: bars.update("shards", done, total),
        )
    console = make_console()
    if not result.dropped:
        console.print(f"{store}: nothing to drop ({result.rows_after} live rows)", markup=False)
        return
    console.print(
        f"{store}: {result.rows_before} rows -> {result.rows_after} ({result.dropped} dropped), "
        f"{result.shards_written} shards written, {result.bytes_before / 2**20:.1f} MiB -> "
        f"{result.bytes_after / 2**20:.1f} MiB",
        markup=False,
        soft_wrap=True,
    )


@app.command()
@guarded
def info(
    store: Annotated[str, typer.Argument(help=_STORE_HELP, show_default=False)],
    storage_option: StorageOptions = None,
) -> None:
    """Show a store's shape, dtype, classes, statistics, sizes and rejected inputs."""
    from pipeline.report import render_info, store_info
    from pipeline.store import store_ref

    data = store_info(store_ref(cli_location(store, storage_option, what="STORE")))
    make_console().print(render_info(data))


@app.command()
@guarded
def preview(
    store: Annotated[str, typer.Argument(help=_STORE_HELP, show_default=False)],
    out: Annotated[
        Path, typer.Option("--out", help="PNG of the sample grid; the stats plot goes beside it.")
    ] = Path("grid.png"),
    n: Annotated[int, typer.Option(min=1, help="Samples in the grid.")] = 16,
    columns: Annotated[int, typer.Option(min=1, help="Columns of the grid.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of the sample choice.")] = 0,
    storage_option: StorageOptions = None,
) -> None:
    """Write a grid of de-normalized samples with labels, and a per-channel stats plot."""
    from pipeline.report import write_previews
    from pipeline.store import store_ref

    location = cli_location(store, storage_option, what="STORE")
    grid, plot = write_previews(store_ref(location), out, n=n, columns=columns, seed=seed)
    console = make_console()
    console.print(f"sample grid written to {grid}")
    console.print(f"stats plot written to {plot}")
