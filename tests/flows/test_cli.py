"""``imageprep run``, ``serve`` and ``demo``: the commands that run the flows."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import flows.demo
import flows.prepare
import flows.tasks
import pipeline.run
from flows.cli import app
from flows.demo import demo_config, demo_config_data
from pipeline.stats import compute_stats
from pipeline.store import read_attrs, verify
from tests.flows.conftest import BIN, CONFIGS, read_store

runner = CliRunner()


def _run_args(src: Path, out: Path, *extra: str) -> list[str]:
    return [
        "run",
        str(CONFIGS / "demo.yaml"),
        "--set",
        f"source.path={src}",
        "--set",
        f"output.path={out}",
        "--set",
        "transform.size=[32, 32]",
        "--set",
        "output.shard_size=8",
        *extra,
    ]


@pytest.mark.usefixtures("prefect_api")
def test_run_through_the_flow_and_without_prefect(source, tmp_path: Path):
    r = runner.invoke(app, _run_args(source.root, tmp_path / "flow.zarr"))
    assert r.exit_code == 0, r.output
    assert f"store written: {tmp_path / 'flow.zarr'}" in r.stdout.replace("\n", " ")
    assert "statistic" in r.stdout
    assert f"{source.n_broken} inputs rejected" in r.stdout
    assert verify(tmp_path / "flow.zarr").ok

    r = runner.invoke(app, _run_args(source.root, tmp_path / "plain.zarr", "--no-prefect"))
    assert r.exit_code == 0, r.output
    assert read_store(tmp_path / "plain.zarr") == read_store(tmp_path / "flow.zarr")

    # a rerun resumes: nothing left to write
    r = runner.invoke(app, _run_args(source.root, tmp_path / "flow.zarr"))
    assert r.exit_code == 0, r.output
    assert "0 written now" in r.stdout.replace("\n", " ")


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize("no_prefect", [False, True])
def test_run_strict_exits_1_when_inputs_were_rejected(source, tmp_path: Path, no_prefect):
    extra = ["--strict", *(["--no-prefect"] if no_prefect else [])]
    r = runner.invoke(app, _run_args(source.root, tmp_path / "s.zarr", *extra))
    assert r.exit_code == 1, r.output
    assert verify(tmp_path / "s.zarr").ok  # the run finished; --strict only sets the status


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize("no_prefect", [False, True])
def test_run_exits_1_naming_the_failed_shard(source, tmp_path: Path, monkeypatch, no_prefect):
    real = pipeline.run.write_one_shard

    def broken(job, *args, **kwargs):
        if job.index == 1:
            raise OSError(28, "No space left on device (simulated)")
        return real(job, *args, **kwargs)

    monkeypatch.setattr(pipeline.run, "write_one_shard", broken)
    monkeypatch.setitem(
        flows.tasks.TASKS,
        pipeline.run.write_shards,
        flows.tasks.write_shards_task.with_options(retry_delay_seconds=0),
    )
    extra = ["--no-prefect"] if no_prefect else []
    r = runner.invoke(app, _run_args(source.root, tmp_path / "f.zarr", *extra))
    assert r.exit_code == 1, r.output
    assert "shard 1: OSError: [Errno 28] No space left on device (simulated)" in r.stderr
    assert "resumable" in r.stderr


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "output.shard_size=0"], "output.shard_size: must be >= 1, got 0"),
        (["--set", "output.nope=1"], "unknown key 'output.nope'"),
        (
            ["--set", "source.path=/nonexistent/imageprep-test"],
            "source.path: root must be an existing folder",
        ),
    ],
)
def test_run_bad_config_exits_2(source, tmp_path: Path, args, message):
    r = runner.invoke(app, [*_run_args(source.root, tmp_path / "b.zarr"), *args])
    assert r.exit_code == 2, r.output
    assert message in r.stderr.replace("\n", " ")


@pytest.mark.usefixtures("prefect_api")
def test_run_refuses_a_store_of_another_run(source, tmp_path: Path):
    out = tmp_path / "other.zarr"
    r = runner.invoke(app, _run_args(source.root, out, "--no-prefect"))
    assert r.exit_code == 0, r.output
    changed = [
        *_run_args(source.root, out),
        "--set",
        "output.overwrite=false",
        "--set",
        "runtime.seed=1",
    ]
    r = runner.invoke(app, changed)
    assert r.exit_code == 2, r.output
    assert "made by another run" in r.stderr.replace("\n", " ")


@pytest.mark.parametrize("no_prefect", [False, True])
def test_console_script_refuses_a_locked_store(source, tmp_path: Path, no_prefect, prefect_api):
    out = tmp_path / "locked.zarr"
    code = (
        "import sys\n"
        "from pipeline.store import StoreLock\n"
        f"lock = StoreLock({str(out)!r}).acquire()\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        extra = ["--no-prefect"] if no_prefect else []
        r = subprocess.run(
            [str(BIN / "imageprep"), *_run_args(source.root, out, *extra)],
            capture_output=True,
            text=True,
            timeout=180,
            env={**os.environ, "PREFECT_API_URL": prefect_api},
        )
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"in use by pid {holder.pid}" in r.stderr.replace("\n", " ")


def test_serve_rejects_a_bad_schedule(tmp_path: Path):
    r = runner.invoke(app, ["serve", str(CONFIGS / "demo.yaml"), "--cron", "0 25 * * *"])
    assert r.exit_code == 2, r.output
    assert "--cron must be a cron expression" in r.stderr
    r = runner.invoke(
        app, ["serve", str(CONFIGS / "demo.yaml"), "--cron", "0 3 * * *", "--timezone", "Mars/Base"]
    )
    assert r.exit_code == 2, r.output
    assert "--timezone must be an IANA time zone" in r.stderr
    r = runner.invoke(app, ["serve", str(CONFIGS / "demo.yaml")])
    assert r.exit_code == 2  # --cron is required
    assert "--cron" in r.output


def test_serve_needs_a_prefect_server(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "home")  # no profile with an API URL either
    r = subprocess.run(
        [str(BIN / "imageprep"), "serve", str(CONFIGS / "demo.yaml"), "--cron", "0 3 * * *"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 2, r.stdout + r.stderr
    message = re.sub(r"\s+", " ", r.stderr)
    assert "`prefect server start`" in message
    assert "PREFECT_API_URL" in message


def test_help_of_the_flow_commands():
    for command, options in {
        "run": ("--set", "--strict", "--no-prefect", "--no-verify", "--refresh-stats"),
        "serve": ("--cron", "--set", "--name", "--timezone"),
        "demo": ("--out", "--n-per-class", "--no-prefect"),
    }.items():
        r = runner.invoke(app, [command, "--help"])
        assert r.exit_code == 0
        text = re.sub(r"\s+", " ", r.stdout)
        for option in options:
            assert option in text, (command, option)


@pytest.mark.parametrize(("argv", "code"), [(["--help"], 0), (["run"], 2)])
def test_the_console_script_freezes_the_objects_once_the_command_is_over(monkeypatch, argv, code):
    """``main`` skips the shutdown's last full collection, whatever the command's outcome."""
    import gc

    import flows.cli

    calls: list[int] = []
    monkeypatch.setattr(gc, "freeze", lambda: calls.append(len(calls)))
    monkeypatch.setattr(sys, "argv", ["imageprep", *argv])
    with pytest.raises(SystemExit) as exit_:
        flows.cli.main()
    assert exit_.value.code == code
    assert calls == [0]


# ----------------------------------------------------------------------------- demo


def test_the_demo_config_is_configs_demo_yaml(tmp_path: Path):
    # one demo config: the installed package data is the checkout's configs/demo.yaml
    data, origin = demo_config_data()
    repo_file = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
    assert Path(origin).resolve() == repo_file
    assert data == yaml.safe_load(repo_file.read_text())
    cfg = demo_config(tmp_path)
    assert cfg.transform.size == (64, 64)
    assert cfg.source.path == tmp_path.resolve() / "images"


@pytest.mark.usefixtures("prefect_api")
def test_demo_runs_the_flow_and_prints_store_failures_and_preview(tmp_path: Path):
    out = tmp_path / "demo"
    r = runner.invoke(app, ["demo", "--out", str(out), "--workers", "2"])
    assert r.exit_code == 0, r.output
    text = r.stdout
    assert "statistic" in text
    assert "mean" in text
    assert f"store: {out / 'dataset.zarr'}" in text
    assert f"preview: {out / 'preview.png'}" in text
    assert (out / "preview.png").is_file()
    assert (out / "preview-stats.png").is_file()
    assert verify(out / "dataset.zarr").ok
    stats = json.loads((out / "stats.json").read_text())
    assert stats == compute_stats(out / "images").to_json()
    assert len(stats["failures"]) == 6
    for failure in stats["failures"]:  # every failure printed, not only the first few
        assert f"{failure['path']}: " in text
    attrs = read_attrs(out / "dataset.zarr")
    expected = demo_config(out, workers=2)
    assert attrs["config"] == expected.resolved_dict()
    assert attrs["layout"]["n_samples"] == 2 * stats["images"]

    # a second run rewrites its own dataset, and the store follows it (an update:
    # the files no longer there are retired)
    r = runner.invoke(app, ["demo", "--out", str(out), "--n-per-class", "3", "--no-prefect"])
    assert r.exit_code == 0, r.output
    from pipeline.reader import ShardDataset

    assert len(ShardDataset(out / "dataset.zarr")) == 2 * 3 * 4
    # but refuses a folder it did not write
    other = tmp_path / "other"
    (other / "images").mkdir(parents=True)
    (other / "images" / "keep.txt").write_text("mine")
    r = runner.invoke(app, ["demo", "--out", str(other)])
    assert r.exit_code == 2
    assert (other / "images" / "keep.txt").exists()


# ------------------------------------------------------------------- heartbeats, entry points


def test_run_foreground_turns_heartbeats_off_unless_asked(monkeypatch, tmp_path: Path):
    from prefect.settings import get_current_settings

    seen = []

    def fake_flow(config, *, verify, refresh_stats):
        seen.append((get_current_settings().flows.heartbeat_frequency, verify, refresh_stats))
        return "result"

    monkeypatch.setattr(flows.prepare, "prepare_flow", fake_flow)
    default = get_current_settings().flows.heartbeat_frequency
    assert default is not None
    assert flows.prepare.run_foreground("cfg", verify=False, refresh_stats=True) == "result"
    assert flows.prepare.run_foreground("cfg", heartbeat=True) == "result"
    assert seen == [(None, False, True), (default, True, False)]


@pytest.mark.parametrize(
    ("env", "expected"),
    [({}, False), ({"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "60"}, True)],
)
def test_cli_run_keeps_heartbeats_only_when_configured(
    monkeypatch, source, tmp_path: Path, env, expected
):
    calls = []
    monkeypatch.delenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", raising=False)
    monkeypatch.delenv("PREFECT_RUNNER_HEARTBEAT_FREQUENCY", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)

    def fake(cfg, **kwargs):
        calls.append(kwargs)
        return pipeline.run.prepare(cfg)

    monkeypatch.setattr(flows.prepare, "run_foreground", fake)
    r = runner.invoke(app, _run_args(source.root, tmp_path / "h.zarr", "--no-verify"))
    assert r.exit_code == 0, r.output
    assert calls == [{"verify": False, "refresh_stats": False, "heartbeat": expected}]


def test_flows_package_exports_lazily():
    import flows

    assert flows.prepare_flow is flows.prepare.prepare_flow
    assert flows.stats_flow.name == "imageprep-stats"
    assert callable(flows.serve_prepare)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = flows.nope


def test_module_runners(source, tmp_path: Path, prefect_api):
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    cfg = str(CONFIGS / "demo.yaml")
    r = subprocess.run(
        [sys.executable, "-m", "flows.stats", cfg, "--set", f"source.path={source.root}"],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == compute_stats(source.root).to_json()
    r = subprocess.run(
        [sys.executable, "-m", "flows.prepare", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert "--no-prefect" in r.stdout
