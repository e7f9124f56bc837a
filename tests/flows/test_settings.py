"""flows._settings: Prefect defaults applied only where no settings source sets them.

Each case runs in a subprocess with an environment of its own: the function
changes ``os.environ`` and Prefect's global settings, which this session's
harness (tests/flows/conftest.py) has set for itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from flows._settings import DEFAULTS

TIMEOUT = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
ANALYTICS = "PREFECT_SERVER_ANALYTICS_ENABLED"

# Prefect is imported first, as `python -m flows.prepare` does: its settings
# are read at import, and the defaults must still take effect.
SCRIPT = (
    f"NAMES = ({TIMEOUT!r}, {ANALYTICS!r})\n"
    + """
import json, os
import prefect.settings as ps
from flows._settings import apply_prefect_defaults

first = apply_prefect_defaults()
second = apply_prefect_defaults()
s = ps.get_current_settings()
print(json.dumps({
    "first": first,
    "second": second,
    "timeout": s.server.ephemeral.startup_timeout_seconds,
    "analytics": s.server.analytics_enabled,
    "env": {k: os.environ.get(k) for k in NAMES},
}))
"""
)


def run_script(home: Path, **env: str) -> dict:
    clean = {"PATH": os.environ["PATH"], "HOME": str(home), "PREFECT_HOME": str(home), **env}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=clean,
        cwd=home,  # no prefect.toml or .env of a working directory
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_defaults_applied_when_unset_even_after_prefect_import(tmp_path: Path):
    got = run_script(tmp_path)
    assert got["first"] == DEFAULTS
    assert got["second"] == {}  # idempotent
    assert got["timeout"] == int(DEFAULTS[TIMEOUT]) > 20  # Prefect's default: 20 s
    assert got["analytics"] is False
    assert got["env"] == {TIMEOUT: DEFAULTS[TIMEOUT], ANALYTICS: "false"}


def test_user_settings_win_environment_and_profile(tmp_path: Path):
    (tmp_path / "profiles.toml").write_text(
        f'active = "mine"\n\n[profiles.mine]\n{TIMEOUT} = "7"\n', encoding="utf-8"
    )
    got = run_script(tmp_path, **{ANALYTICS: "true"})
    assert got["first"] == {}
    assert got["timeout"] == 7
    assert got["analytics"] is True
    # the profile's value is not copied into the environment either
    assert got["env"] == {TIMEOUT: None, ANALYTICS: "true"}
