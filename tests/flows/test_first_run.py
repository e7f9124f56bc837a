"""The first ``imageprep run`` on a fresh machine: an empty PREFECT_HOME, no server, a busy core.

Without ``PREFECT_API_URL`` a run starts a temporary Prefect server, which on
an empty ``PREFECT_HOME`` first migrates its database. Two such first runs
start at once, pinned to one core, sharing one fresh ``PREFECT_HOME`` (as two
jobs on one new machine share ``~/.prefect``): the migrations then take well
over Prefect's default 20 s wait (about a minute each here), and both servers
migrate one database. Both runs must succeed and their stores verify.

The subprocesses get an environment built from scratch: none of the
harness's settings (tests/flows/conftest.py sets PREFECT_HOME, a long
startup timeout and telemetry off for this session) nor a developer's
PREFECT_API_URL or profile reach them, and they run in an empty working
directory (Prefect reads ``prefect.toml`` and ``.env`` there).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.synthetic import make_dataset
from tests.flows.conftest import BIN

pytestmark = pytest.mark.slow

RUN_TIMEOUT_S = 540


def clean_env(home: Path, prefect_home: Path) -> dict[str, str]:
    """A new user's environment: PATH and HOME, an empty PREFECT_HOME, nothing else."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "PREFECT_HOME": str(prefect_home),
        "LANG": "C.UTF-8",
    }


def write_config(path: Path, *, src: Path, out: Path) -> Path:
    data = {
        "source": {"path": str(src)},
        "transform": {"size": [16, 16], "augment": []},
        "output": {"path": str(out), "shard_size": 4},
        "runtime": {"workers": 1, "batch_size": 4},
    }
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset (util-linux)")
def test_two_first_runs_at_once_on_one_core(tmp_path: Path):
    assert not {"PREFECT_API_URL", "PREFECT_PROFILE"} & set(clean_env(tmp_path, tmp_path))
    src = make_dataset(tmp_path / "images", n_per_class=2, sizes=(16, 24), broken=False).root
    home = tmp_path / "home"
    prefect_home = tmp_path / "prefect-home"  # empty: a machine that never ran Prefect
    home.mkdir()
    prefect_home.mkdir()
    env = clean_env(home, prefect_home)
    core = str(min(os.sched_getaffinity(0)))

    procs = []
    for name in ("a", "b"):
        config = write_config(tmp_path / f"{name}.yaml", src=src, out=tmp_path / f"{name}.zarr")
        log = open(tmp_path / f"{name}.log", "wb")
        cmd = ["taskset", "-c", core, str(BIN / "imageprep"), "run", str(config)]
        procs.append((name, subprocess.Popen(cmd, env=env, cwd=home, stdout=log, stderr=log)))
        log.close()
    t0 = time.monotonic()
    try:
        codes = {name: proc.wait(timeout=RUN_TIMEOUT_S) for name, proc in procs}
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    seconds = time.monotonic() - t0
    logs = {name: (tmp_path / f"{name}.log").read_text(errors="replace") for name, _ in procs}
    assert codes == {"a": 0, "b": 0}, {n: log[-3000:] for n, log in logs.items()}
    print(f"two first runs at once on core {core}: {seconds:.1f} s", file=sys.stderr)

    for name, _ in procs:
        out = subprocess.run(
            [str(BIN / "imageprep"), "verify", str(tmp_path / f"{name}.zarr")],
            env=env,
            cwd=home,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stdout + out.stderr
