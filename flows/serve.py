"""Serve the prepare flow on a cron schedule (``imageprep serve CONFIG --cron EXPR``).

:func:`serve_prepare` creates (or updates) the deployment
``imageprep-prepare/<name>`` on the Prefect server at ``PREFECT_API_URL``,
with the resolved config as its default ``config`` parameter (JSON) and a
cron schedule, then runs in the foreground: it polls the server and executes
each scheduled or manually triggered run in a subprocess of this machine.
Stopping it (Ctrl-C) pauses the schedule. At most one run executes at a time
(``limit=1``): a run due while another is in progress waits for it (and the
store lock refuses a second writer from anywhere else).

A schedule needs a long-lived Prefect server (``prefect server start``; the
temporary server Prefect starts for a single run has no scheduler that
outlives the process), so :func:`serve_prepare` refuses to start without an
API URL.
"""

from __future__ import annotations

import zoneinfo
from typing import Any

from pipeline.config import RunConfig
from pipeline.errors import ConfigError

__all__ = ["api_url", "check_schedule", "serve_prepare"]


def api_url() -> str | None:
    """Return the Prefect API URL in effect (environment or profile), or ``None``."""
    from prefect.settings import PREFECT_API_URL

    value = PREFECT_API_URL.value()
    return str(value) if value else None


def check_schedule(cron: str, *, timezone: str | None = None) -> Any:
    """Return the Prefect cron schedule for ``cron`` in ``timezone`` (default UTC).

    Raises:
        ConfigError: the cron expression or the time zone is invalid.

    Example:
        >>> check_schedule("0 3 * * *").cron
        '0 3 * * *'
        >>> check_schedule("0 25 * * *")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        pipeline.errors.ConfigError: --cron must be a cron expression ..., got '0 25 * * *'
    """
    from prefect.schedules import Cron

    if timezone is not None:
        try:
            zoneinfo.ZoneInfo(timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                f"--timezone must be an IANA time zone (e.g. Europe/Paris), got {timezone!r}"
            ) from None
    try:
        return Cron(cron, timezone=timezone)
    except ValueError:
        raise ConfigError(
            f"--cron must be a cron expression (minute hour day month weekday), got {cron!r}"
        ) from None


def serve_prepare(
    config: RunConfig,
    *,
    cron: str,
    name: str,
    timezone: str | None = None,
    verify: bool = True,
) -> None:
    """Serve :func:`flows.prepare.prepare_flow` for ``config`` on a cron schedule (blocks).

    Args:
        config: the run config; its resolved JSON (absolute paths) becomes the
            deployment's default ``config`` parameter.
        cron: the schedule, a cron expression.
        name: the deployment name (``imageprep-prepare/<name>``).
        timezone: IANA time zone of the schedule (default UTC).
        verify: the deployment's default ``verify`` parameter.

    Raises:
        ConfigError: bad cron expression or time zone, or no Prefect API URL.
    """
    from prefect.types.entrypoint import EntrypointType

    from flows.prepare import prepare_flow

    schedule = check_schedule(cron, timezone=timezone)
    if api_url() is None:
        raise ConfigError(
            "serving on a schedule needs a Prefect server: start one with "
            "`prefect server start` and set PREFECT_API_URL=http://127.0.0.1:4200/api "
            "(or `prefect config set PREFECT_API_URL=...`)"
        )
    prepare_flow.serve(
        name=name,
        schedule=schedule,
        parameters={"config": config.resolved_dict(), "verify": verify},
        description=f"imageprep prepare: {config.source.path} -> {config.output.path}",
        tags=["imageprep"],
        limit=1,
        pause_on_shutdown=True,
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
