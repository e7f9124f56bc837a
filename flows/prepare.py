"""The prepare flow: scan, statistics (cached), store, shards, verify, finish.

:func:`prepare_flow` is :func:`pipeline.run.prepare` as a Prefect flow, step
for step, with the tasks of :mod:`flows.tasks`. The output store is locked
(:class:`pipeline.shards.StoreLock`) from the statistics to the end, so a
second run against the same output, from this machine or a schedule, is
refused with :class:`~pipeline.errors.StoreLockedError` instead of
interleaving. A run that fails leaves the store resumable: the next run
writes only the shards still missing.

Run it from Python, from the command line (``imageprep run CONFIG``), or as
a module::

    python -m flows.prepare configs/demo.yaml --set source.path=/data/images

Parameters are typed: ``config`` is a :class:`pipeline.config.RunConfig`
(Prefect validates it; a deployment passes it as the JSON of
``RunConfig.resolved_dict()``).
"""

# No ``from __future__ import annotations`` here: a served run receives the flow
# pickled by value (cloudpickle), without this module's globals, and Prefect
# validates the JSON parameters against the annotations, which must therefore
# be the classes themselves, not strings naming them.
import sys
import time
from collections.abc import Sequence

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.utilities.annotations import quote

from flows.artifacts import artifact_key, failed_run_markdown, run_markdown
from flows.tasks import (
    finish_task,
    open_store_task,
    scan_task,
    stats_task,
    verify_task,
    write_shards_task,
)
from pipeline.config import RunConfig
from pipeline.run import RunResult, ShardWriteError

__all__ = ["FLOW_NAME", "main", "prepare_flow", "run_foreground"]

#: Name of the flow in Prefect (deployments are ``imageprep-prepare/<name>``).
FLOW_NAME = "imageprep-prepare"


@flow(name=FLOW_NAME, description="Prepare a dataset: stats, transform, sharded Zarr store.")
def prepare_flow(config: RunConfig, verify: bool = True, refresh_stats: bool = False) -> RunResult:
    """Prepare the dataset described by ``config`` and return the run summary.

    Args:
        config: the validated run config (or its JSON, validated by Prefect).
        verify: recompute every shard's checksum after writing, before the
            store is marked complete.
        refresh_stats: recompute the statistics even when the cache holds
            them for this source.

    Returns:
        The :class:`~pipeline.run.RunResult` of :func:`pipeline.run.finish`.

    Raises:
        StoreLockedError: another run holds the output.
        StoreMismatchError: the output holds a store of another run and
            ``output.overwrite`` is false.
        ShardWriteError: shards still failed after the retries; the message
            names each shard and its cause.
        StoreError: verification found a shard that does not match its record.
    """
    from pipeline.run import check_runtime
    from pipeline.shards import StoreLock

    logger = get_run_logger()
    check_runtime(config)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    manifest = scan_task(config)
    timings["scan"] = time.perf_counter() - t0
    key = artifact_key("imageprep-run", config.output.path.name)
    with StoreLock(config.output.path):
        t0 = time.perf_counter()
        stats = stats_task.with_options(refresh_cache=True) if refresh_stats else stats_task
        # large values are passed quoted: Prefect would otherwise walk every
        # element of them (the manifest, the accepted files) for each task call
        stats_state = stats(config, quote(manifest), reuse_store=True, return_state=True)
        run_stats = stats_state.result()
        cached = stats_state.name == "Cached"
        if cached:
            logger.info("statistics reused from the cache: the source is unchanged")
        timings["stats"] = time.perf_counter() - t0
        state = open_store_task(config, quote(manifest), quote(run_stats))
        t0 = time.perf_counter()
        try:
            write = write_shards_task(
                config, quote(state), quote(run_stats), root=str(manifest.root)
            )
        except ShardWriteError as exc:
            create_markdown_artifact(
                failed_run_markdown(
                    store=str(config.output.path), source=str(manifest.root), error=str(exc)
                ),
                key=key,
                description="imageprep run (failed)",
            )
            raise
        timings["write"] = time.perf_counter() - t0
        if verify:
            t0 = time.perf_counter()
            verify_task(str(config.output.path), workers=config.runtime.workers)
            timings["verify"] = time.perf_counter() - t0
        result: RunResult = finish_task(
            config, quote(state), quote(run_stats), quote(write), timings=timings
        )
    create_markdown_artifact(
        run_markdown(
            result,
            source=str(manifest.root),
            stats_cached=cached,
            verified=True if verify else None,
            images_per_second=write.samples_per_second or None,
        ),
        key=key,
        description="imageprep run",
    )
    return result


def run_foreground(
    config: RunConfig,
    *,
    verify: bool = True,
    refresh_stats: bool = False,
    heartbeat: bool = False,
) -> RunResult:
    """Run :func:`prepare_flow` in this process, as ``imageprep run`` and ``demo`` do.

    Prefect 3.8 emits flow-run heartbeats from a thread that sleeps in one
    second steps and is joined when the run ends, which rounds every run's
    wall time up to the next whole second (0 to 1 s, 0.5 s on average;
    ``benchmarks/bench_flow.py`` measures it). Heartbeats let a server mark a
    run whose machine died as crashed; a foreground run's crash is seen by
    whoever started it, so here they are off unless ``heartbeat`` is true.
    Served and deployed runs keep Prefect's setting.

    Args:
        config: the validated run config.
        verify: as in :func:`prepare_flow`.
        refresh_stats: as in :func:`prepare_flow`.
        heartbeat: keep Prefect's flow-run heartbeat setting.

    Returns:
        The run summary; exceptions as in :func:`prepare_flow`.
    """
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    if heartbeat:
        return prepare_flow(config, verify=verify, refresh_stats=refresh_stats)
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        return prepare_flow(config, verify=verify, refresh_stats=refresh_stats)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m flows.prepare CONFIG [--set key=value ...]``: ``imageprep run`` (exits)."""
    from pipeline.cli import app

    args = list(sys.argv[1:] if argv is None else argv)
    app(["run", *args], prog_name="python -m flows.prepare")


if __name__ == "__main__":  # pragma: no cover
    main()
