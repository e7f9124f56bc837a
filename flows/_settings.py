"""Prefect settings that imageprep's runs rely on, applied only where the user set nothing.

A run without ``PREFECT_API_URL`` (``imageprep run``, ``imageprep demo``,
``python -m flows.prepare``) makes Prefect start a temporary local server. On
a fresh machine (an empty ``PREFECT_HOME``) that server first creates and
migrates its SQLite database, which took 17 s here with two cores and 50 to
70 s with two first runs sharing one core, while Prefect 3.8 waits 20 s for
it by default and then fails the run ("Timed out while attempting to connect to
ephemeral Prefect API server"). :func:`apply_prefect_defaults` raises that
wait to :data:`EPHEMERAL_STARTUP_TIMEOUT_S` and turns the throwaway server's
telemetry off, unless the environment or the active Prefect profile (or a
``prefect.toml``, ``.env`` or ``pyproject.toml`` Prefect reads) sets them.
"""

from __future__ import annotations

import os

__all__ = ["DEFAULTS", "EPHEMERAL_STARTUP_TIMEOUT_S", "apply_prefect_defaults"]

EPHEMERAL_STARTUP_TIMEOUT_S = 300
"""Seconds a run waits for its temporary Prefect server (Prefect's default: 20).

Generous on purpose: the first start on a fresh ``PREFECT_HOME`` runs every
database migration, several times slower when the core is shared (two first
runs at once on one core: 50 to 70 s each here). A server that never answers
still fails the run, after this long."""

DEFAULTS: dict[str, str] = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": str(EPHEMERAL_STARTUP_TIMEOUT_S),
    # A throwaway server has nothing to report, and on a fresh PREFECT_HOME its
    # first telemetry write races the database set-up.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}
"""Prefect setting (environment variable name) -> the value imageprep uses by default."""


def _user_set(settings: object, accessor: str) -> bool:
    """Whether a settings source (environment, profile, toml, .env) gave ``accessor`` a value."""
    *parents, field = accessor.split(".")
    model = settings
    for name in parents:
        model = getattr(model, name)
    return field in getattr(model, "model_fields_set", ())


def apply_prefect_defaults() -> dict[str, str]:
    """Set the :data:`DEFAULTS` that no Prefect settings source sets; return what was set.

    The values go into ``os.environ``, so the temporary server (a subprocess)
    and the runs' subprocesses see them too. Prefect reads its settings once,
    at import: when it is already imported, its global settings are reloaded
    so that the new values take effect. Idempotent: a second call finds them
    set and changes nothing.

    Returns:
        The settings this call set (name -> value); empty when the user, or an
        earlier call, had set them all.
    """
    import prefect.context
    import prefect.settings

    current = prefect.settings.get_current_settings()
    applied: dict[str, str] = {}
    for name, value in DEFAULTS.items():
        setting = getattr(prefect.settings, name)
        if name in os.environ or _user_set(current, setting.accessor):
            continue
        os.environ[name] = value
        applied[name] = value
    if applied:
        prefect.context.refresh_global_settings_context()
    return applied
