"""The prepare flow for ``prefect deploy``: a run config file as the deployment's parameter.

``prefect.yaml`` (at the repository root) deploys :func:`prepare_from_file`
on a ``process`` work pool: each run loads the YAML config named by
``config_path`` on the machine that runs it, applies ``overrides`` (the CLI's
``--set key.path=value``), validates it, and runs
:func:`flows.prepare.prepare_flow` as a subflow (its tasks, statistics cache,
artifact and store lock). A config file is what imageprep's users already
write and version; the deployment keeps its name, not a copy of its resolved
JSON, so editing the file changes the next run without redeploying. Where a
fixed config is wanted instead, deploy :func:`flows.prepare.prepare_flow`
itself with ``config`` as the JSON of ``RunConfig.resolved_dict()`` (what
``imageprep serve`` does).

The entrypoint is the module path ``flows.deploy.prepare_from_file``: it
resolves wherever imageprep is installed, whatever folder ``prefect deploy``
or the worker runs in. The pull step :func:`enter_checkout` sets the run's
working directory (the process worker starts each run in a new temporary
folder), so that a relative ``config_path`` (``configs/demo.yaml``) names a
file of the checkout on the worker's machine. See docs/flows.md, "Running at
scale".
"""

# No ``from __future__ import annotations``: Prefect validates the JSON
# parameters against the annotations (see flows/prepare.py).
import os
from pathlib import Path

from prefect import flow, get_run_logger

from flows.prepare import prepare_flow
from pipeline.config import load_config
from pipeline.run import RunResult

__all__ = ["FLOW_NAME", "checkout_root", "enter_checkout", "prepare_from_file"]

#: Name of the flow in Prefect (deployments are ``imageprep-prepare-file/<name>``).
FLOW_NAME = "imageprep-prepare-file"


@flow(
    name=FLOW_NAME,
    description="Prepare a dataset from a run config file (YAML) and --set style overrides.",
)
def prepare_from_file(
    config_path: str,
    overrides: list[str] | None = None,
    verify: bool = True,
    refresh_stats: bool = False,
) -> RunResult:
    """Load ``config_path`` with ``overrides``, validate it, and run :func:`prepare_flow`.

    Args:
        config_path: the YAML run config on the machine that runs the flow;
            a relative path resolves against the run's working directory (the
            checkout, see :func:`enter_checkout`), and relative paths inside
            the file against the file's folder, as for ``imageprep run``.
        overrides: ``key.path=value`` strings applied in order on top of the
            file (``["output.path=/data/ds.zarr", "transform.size=[128,128]"]``).
        verify: as in :func:`flows.prepare.prepare_flow`.
        refresh_stats: as in :func:`flows.prepare.prepare_flow`.

    Returns:
        The run summary of :func:`flows.prepare.prepare_flow`.

    Raises:
        ConfigError: the file cannot be read, or the config is invalid (every
            problem listed with its key path); the run fails before any work.
    """
    logger = get_run_logger()
    config = load_config(config_path, overrides or ())
    logger.info(
        "config %s%s: %s -> %s",
        Path(config_path).resolve(),
        f" with {len(overrides)} override(s)" if overrides else "",
        config.source.path,
        config.output.path,
    )
    return prepare_flow(config, verify=verify, refresh_stats=refresh_stats)


def checkout_root() -> Path | None:
    """The source checkout imageprep runs from (it holds ``prefect.yaml``), or ``None``.

    ``None`` for an installed wheel: the package then has no checkout around it.
    """
    root = Path(__file__).resolve().parents[1]
    return root if (root / "prefect.yaml").is_file() else None


def enter_checkout(directory: str | None = None) -> dict[str, str]:
    """Prefect pull step: work in ``directory``, or else in this machine's imageprep checkout.

    ``prefect.yaml`` runs it before each flow run, on the worker's machine:
    ``flows.deploy.enter_checkout: {}``. Like Prefect's own
    ``set_working_directory`` it returns ``{"directory": ...}``, and Prefect
    changes into that folder before it loads the flow. Without ``directory``
    it is the checkout that the worker's environment has installed (editable
    install, ``make .venv``), found on the worker's machine, so the deployment
    does not depend on the folder ``prefect deploy`` ran in; for an installed
    wheel, with no checkout, the working directory stays as it is.

    Args:
        directory: a folder to work in instead (``~`` is expanded).

    Returns:
        ``{"directory": the absolute working directory}``.
    """
    target = Path(directory).expanduser() if directory else checkout_root()
    if target is not None:
        os.chdir(target)
    return {"directory": os.getcwd()}
