"""The ``imageprep`` command line: the library's commands plus ``run``, ``serve`` and ``demo``.

:data:`app` holds every command: the Prefect-free ones of :mod:`pipeline.cli`
(``stats``, ``verify``, ``info``, ``preview``) and the ones defined here, which
run the Prefect flows (``run``, ``serve``, ``demo``; ``run --no-prefect`` runs
:func:`pipeline.run.prepare` without Prefect). Prefect is imported inside those
commands only, so ``imageprep --help`` and the library's commands never load it.

Exit codes: as :mod:`pipeline.cli` says.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from flows._settings import apply_prefect_defaults
from pipeline.cli import (
    APP_SETTINGS,
    EXIT_REJECTED,
    SetOverrides,
    guarded,
    load_run_config,
    make_console,
    print_run_result,
    run_app,
    set_resume_hint,
)
from pipeline.cli import app as library_app

if TYPE_CHECKING:
    from pipeline.config import RunConfig
    from pipeline.run import RunResult

__all__ = ["app", "main"]

app = typer.Typer(**APP_SETTINGS)
app.registered_commands.extend(library_app.registered_commands)

_PREFECT_HELP = (
    "Run the plain pipeline function without Prefect (no server, no retries, cache or artifacts)."
)


def _prepare(cfg: RunConfig, *, use_prefect: bool, verify: bool, refresh_stats: bool) -> RunResult:
    """Run the prepare job: the Prefect flow, or the plain function with progress bars.

    Errors reach the command's boundary (:func:`pipeline.cli.guarded`),
    which prints them as one line with their exit status.
    """
    if use_prefect:
        from flows.prepare import run_foreground

        apply_prefect_defaults()  # before the flow starts a temporary server

        # heartbeats only when asked for in the environment (see run_foreground)
        heartbeat = any(
            name in os.environ
            for name in ("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "PREFECT_RUNNER_HEARTBEAT_FREQUENCY")
        )
        result: RunResult = run_foreground(
            cfg, verify=verify, refresh_stats=refresh_stats, heartbeat=heartbeat
        )
        return result
    from flows._logs import to_console
    from pipeline.progress import BarProgress
    from pipeline.run import prepare

    # the Dask cluster's dashboard link (runtime.dask_address) is printed on stderr
    err = make_console(stderr=True)
    with BarProgress(err) as progress, to_console(err):
        return prepare(cfg, progress=progress, verify=verify, refresh_stats=refresh_stats)


@app.command()
@guarded
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
    console = make_console()
    out = out.expanduser().resolve()
    from flows.demo import demo_config, make_demo_source

    src = make_demo_source(out, seed=seed, n_per_class=n_per_class)

    cfg = demo_config(out, workers=workers)
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
@guarded
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
            help="Recompute the SHA-256 of the shards written (since the last verified run) "
            "before the store counts as complete (exit 1 on a mismatch).",
        ),
    ] = True,
    refresh_stats: Annotated[
        bool,
        typer.Option(
            "--refresh-stats",
            help="Do not take the statistics from Prefect's cache (the flow's; "
            "the plain run has none).",
        ),
    ] = False,
    no_prefect: Annotated[bool, typer.Option("--no-prefect", help=_PREFECT_HELP)] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print what the run would do (files new/changed/removed, rows, shards) and "
            "write nothing.",
        ),
    ] = False,
) -> None:
    """Prepare a dataset with the Prefect flow: statistics, augment, normalize, Zarr shards.

    Without PREFECT_API_URL Prefect starts a temporary local server for the
    run. A rerun over a changed source updates the store: new files are
    appended, removed or changed ones retired; an interrupted run resumes.
    Rejected inputs are listed, not fatal. Exit 1 when shards failed (or
    --strict and inputs were rejected), 2 on a bad config or a store in use by
    another run.
    """
    cfg = load_run_config(config, set_)
    if dry_run:
        from pipeline.run import plan_run

        plan = plan_run(cfg)
        console = make_console()
        console.print("dry run: nothing is written", markup=False)
        for line in plan.lines():
            console.print(f"  {line}", markup=False, soft_wrap=True)
        return
    import shlex

    resume = ["imageprep", "run", str(config), *(f"--set={o}" for o in set_ or [])]
    set_resume_hint(" ".join(shlex.quote(a) for a in resume + ["--no-prefect"] * no_prefect))
    result = _prepare(cfg, use_prefect=not no_prefect, verify=verify, refresh_stats=refresh_stats)
    print_run_result(result, console=make_console())
    if strict and result.failures:
        raise typer.Exit(EXIT_REJECTED)


@app.command()
@guarded
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
    cfg = load_run_config(config, set_)
    from flows.serve import serve_prepare

    serve_prepare(cfg, cron=cron, name=name or config.stem, timezone=timezone, verify=verify)


def main() -> None:
    """Entry point of the ``imageprep`` console script (behind :func:`pipeline.cli.run_app`).

    When the command is over, every object alive is frozen (``gc.freeze``),
    so the interpreter's shutdown does not walk torch's, zarr's and Prefect's
    object graphs in one last full collection; the process is about to end
    and the kernel frees its memory. Every file and store is closed by then
    (``with`` blocks, atexit handlers run afterwards as usual).
    """
    import gc

    try:
        run_app(app)
    finally:
        gc.freeze()


if __name__ == "__main__":
    main()
