"""``imageprep run --no-prefect`` killed for real: SIGKILL, SIGINT and SIGTERM of the process.

The child is the console script itself. A ``sitecustomize`` module, put on the
child's ``PYTHONPATH`` by the test only, reads ``IMAGEPREP_TEST_HOOK`` and
wraps one function of the pipeline: at its k-th call the wrapper writes a
marker file and waits while the marker exists. The test waits for the marker,
sends the signal at that very moment, then removes the marker (a process that
survives the signal goes on and unwinds). After the kill a rerun must finish
the store to the bytes of an uninterrupted run, and leave no ``*.partial`` file.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.run import prepare
from tests.pipeline.test_faults import (
    _config,
    _make_source,
    _write_config,
    assert_same_store,
)

SITECUSTOMIZE = textwrap.dedent(
    """
    import os

    _spec = os.environ.get("IMAGEPREP_TEST_HOOK")
    if _spec:
        import importlib
        import pathlib
        import time

        _target, _k, _when, _only, _marker = _spec.split("|")
        _module, _attr = _target.split(":")
        _owner = importlib.import_module(_module)
        _real = getattr(_owner, _attr)
        _calls = [0]

        def _pause():
            marker = pathlib.Path(_marker)
            marker.write_text(str(os.getpid()))
            deadline = time.monotonic() + 120
            while marker.exists() and time.monotonic() < deadline:
                time.sleep(0.02)

        def _hooked(*args, **kwargs):
            if _only and (len(args) < 2 or args[1] != _only):
                return _real(*args, **kwargs)
            _calls[0] += 1
            if _calls[0] != int(_k):
                return _real(*args, **kwargs)
            if _when == "after":
                result = _real(*args, **kwargs)
                _pause()
                return result
            _pause()
            return _real(*args, **kwargs)

        setattr(_owner, _attr, _hooked)
    """
)

HANG_S = 120  # generous bounds for a hang, not speed requirements


def _script() -> str:
    exe = Path(sys.executable).parent / "imageprep"
    found = str(exe) if exe.exists() else shutil.which("imageprep")
    assert found, "the imageprep console script is not installed"
    return found


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A source, a stats file, and the stores of uninterrupted runs."""
    import json

    from pipeline.stats import compute_stats

    root = tmp_path_factory.mktemp("cli-faults")
    src = _make_source(root / "src")
    stats_file = root / "stats.json"
    stats = compute_stats(src).to_json()
    stats["mean"], stats["std"] = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    stats_file.write_text(json.dumps(stats))
    new, known = root / "new.zarr", root / "known.zarr"
    prepare(_config(src, new))
    prepare(_config(src, known, stats={"file": str(stats_file)}))
    hooks = root / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return {"src": src, "stats_file": stats_file, "new": new, "known": known, "hooks": hooks}


def _start(made: dict[str, Path], config: Path, hook: str, marker: Path) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(made["hooks"]), env.get("PYTHONPATH", "")])
    env["IMAGEPREP_TEST_HOOK"] = f"{hook}|{marker}"
    return subprocess.Popen(
        [_script(), "run", str(config), "--no-prefect"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(marker: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + HANG_S
    while not marker.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended ({proc.returncode}) before the hook:\n{out}\n{err}")
        assert time.monotonic() < deadline, "the hook was never reached"
        time.sleep(0.02)


@pytest.mark.parametrize(
    ("hook", "stats_file"),
    [
        ("pipeline.stats.compute:decode_histogram|4|before|", False),
        ("pipeline.store.writer:get_array|2|before|records/rows", False),
        ("pipeline.run:record_files|2|before|", True),
        ("pipeline.store:finalize|1|before|", False),
    ],
    ids=[
        "stats pass",
        "inside write_shard: images written, no record",
        "measure-in-write: shard written, files not recorded",
        "finish: before finalize",
    ],
)
def test_sigkill_then_rerun_equals_an_uninterrupted_run(made, tmp_path, hook, stats_file):
    out = tmp_path / "o.zarr"
    sections: dict[str, Any] = {"stats": {"file": str(made["stats_file"])}} if stats_file else {}
    config = _write_config(tmp_path / "run.yaml", made["src"], out, **sections)
    marker = tmp_path / "marker"
    proc = _start(made, config, hook, marker)
    try:
        _wait_for(marker, proc)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.communicate(timeout=HANG_S)
    assert proc.returncode == -signal.SIGKILL
    prepare(_config(made["src"], out, **sections))
    assert_same_store(out, made["known" if stats_file else "new"], what=hook)


@pytest.mark.parametrize(
    ("signum", "code", "name"),
    [(signal.SIGINT, 130, "SIGINT"), (signal.SIGTERM, 143, "SIGTERM")],
    ids=["SIGINT", "SIGTERM"],
)
def test_a_signal_mid_write_exits_with_its_code_and_says_how_to_resume(
    made, tmp_path, signum, code, name
):
    out = tmp_path / "o.zarr"
    config = _write_config(tmp_path / "run.yaml", made["src"], out)
    marker = tmp_path / "marker"
    proc = _start(made, config, "pipeline.store:write_shard|2|before|", marker)
    try:
        _wait_for(marker, proc)
        os.kill(proc.pid, signum)
        time.sleep(0.5)  # the signal lands while the shard task is held
        marker.unlink()
        _, err = proc.communicate(timeout=HANG_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == code, err
    assert "Traceback" not in err, err
    assert f"Interrupted ({name})" in err, err
    assert "resumes where it stopped" in err, err
    assert f"imageprep run {config} --no-prefect" in err, err
    rerun = subprocess.run(
        [_script(), "run", str(config), "--no-prefect"],
        capture_output=True,
        text=True,
        timeout=HANG_S,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert_same_store(out, made["new"], what=name)
