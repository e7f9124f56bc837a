"""The prepare flow: :func:`pipeline.run.prepare` with its steps as Prefect tasks.

:func:`prepare_flow` is the plain run, step for step: it calls
:func:`pipeline.run.prepare` with :class:`flows.tasks.TaskRunner`, so each step
runs as a task (retries, the statistics cache, logs) and the order lives in
one place. The flow adds the run's Markdown artifact (statistics table,
rejected inputs, store) and, when shards fail, an artifact saying so. The
output store is locked from the statistics to the end
(:class:`pipeline.store.StoreLock`), so a second run against the same output,
from this machine or a schedule, is refused with
:class:`~pipeline.errors.StoreLockedError` instead of interleaving. A run that
fails leaves the store resumable: the next run writes only the shards still
missing.

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

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows._logs import LOCAL_DASHBOARD_HINT, to_run_log
from flows.artifacts import artifact_key, failed_run_markdown, run_markdown
from flows.tasks import TaskRunner
from pipeline.config import RunConfig
from pipeline.errors import ShardWriteError
from pipeline.progress import LogProgress
from pipeline.run import RunResult, prepare

__all__ = ["FLOW_NAME", "prepare_flow", "run_foreground"]

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
        The :class:`~pipeline.run.RunResult` of :func:`pipeline.run.prepare`.

    Raises:
        StoreLockedError: another run holds the output.
        StoreMismatchError: the output holds a store of another run and
            ``output.overwrite`` is false.
        ShardWriteError: shards still failed after the retries; the message
            names each shard and its cause.
        StoreVerificationError: a shard does not match its record.
    """
    runner = TaskRunner(refresh_stats=refresh_stats)
    key = artifact_key("imageprep-run", config.output.location.name)
    logger = get_run_logger()
    if config.runtime.dask_address is None:
        logger.info(LOCAL_DASHBOARD_HINT)
    try:
        # the Dask cluster and its dashboard link (pipeline.execution) go to the run's log
        with to_run_log(logger):
            result = prepare(
                config,
                progress=LogProgress(logger),
                verify=verify,
                refresh_stats=refresh_stats,
                runner=runner,
            )
    except ShardWriteError as exc:
        create_markdown_artifact(
            failed_run_markdown(
                store=str(config.output.path), source=str(config.source.path), error=str(exc)
            ),
            key=key,
            description="imageprep run (failed)",
        )
        raise
    create_markdown_artifact(
        run_markdown(
            result,
            source=str(config.source.path),
            stats_cached=runner.states.get("stats") == "Cached",
            verified=True if verify else None,
            images_per_second=result.samples_per_second or None,
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


if __name__ == "__main__":  # pragma: no cover - ``python -m flows.prepare`` is ``imageprep run``
    from flows.cli import app

    app(["run", *sys.argv[1:]], prog_name="python -m flows.prepare")
