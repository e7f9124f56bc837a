from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from flows.cli import app
from pipeline.progress import BarProgress, counter
from pipeline.stats import compute_stats

HEAVY = ("numpy", "torch", "dask", "distributed", "zarr", "prefect", "PIL", "scipy", "pandas")


def _script() -> str:
    exe = Path(sys.executable).parent / "imageprep"
    found = str(exe) if exe.exists() else shutil.which("imageprep")
    assert found, "the imageprep console script is not installed"
    return found


def test_import_cli_does_not_import_heavy_modules():
    code = "import json, sys, pipeline.cli; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = {m.split(".")[0] for m in json.loads(out.stdout)}
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))


def test_console_script_help():
    out = subprocess.run([_script(), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "stats" in out.stdout
    assert "demo" in out.stdout
    out = subprocess.run([_script(), "stats", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for opt in ("--method", "--workers", "--json", "--strict", "--chunk-size", "--max-pixels"):
        assert opt in out.stdout


def test_every_option_has_help():
    group = typer.main.get_command(app)
    commands = group.commands  # type: ignore[attr-defined]
    assert {"stats", "demo"} <= set(commands)
    for name, cmd in commands.items():
        assert cmd.help, name
        for p in cmd.params:
            assert getattr(p, "help", None), f"{name} {p.name} has no help"


runner = CliRunner()


def test_stats_table_and_json(mixed_source, tmp_path):
    out = tmp_path / "stats.json"
    r = runner.invoke(app, ["stats", str(mixed_source.root), "--json", str(out), "--workers", "2"])
    assert r.exit_code == 0, r.output
    ref = compute_stats(mixed_source.root)
    d = json.loads(out.read_text())
    assert d == ref.to_json()
    for key in ("channels", "scale", "images", "count", "mean", "var", "std", "min", "max"):
        assert key in d
    for key in ("per_image_mean", "per_image_std", "method", "failures"):
        assert key in d
    # the table shows every channel and the values with 6 significant digits
    lines = r.stdout.splitlines()
    header = next(line for line in lines if "statistic" in line)
    assert header.replace("┃", " ").replace("│", " ").split() == ["statistic", "R", "G", "B"]
    for label, key in [("mean", "mean"), ("std", "std"), ("per-image mean", "per_image_mean")]:
        row = next(line for line in lines if line.strip("│┃ ").startswith(label + " "))
        for v in getattr(ref, key):
            assert f"{v:.6g}" in row
    assert f"{len(ref.failures)} inputs rejected" in r.stdout
    assert "(all in the stats JSON)" in r.stdout  # more than 5: the rest are in the JSON
    # no progress bar when the output is not a terminal
    assert "decoding" not in r.output


def test_stats_json_to_stdout_keeps_stdout_clean(bad_folder):
    r = runner.invoke(app, ["stats", str(bad_folder.root), "--json", "-", "--method", "chan"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["method"] == "chan"
    assert d["images"] == len(bad_folder.valid)
    assert "statistic" in r.stderr  # the table went to stderr


def test_exit_codes_strict(bad_folder):
    r = runner.invoke(app, ["stats", str(bad_folder.root)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["stats", str(bad_folder.root), "--strict"])
    assert r.exit_code == 1, r.output
    # the first five rejected inputs, in path order, each with its reason; then a count
    broken = sorted(bad_folder.broken.items())
    assert len(broken) > 5
    for path, prefix in broken[:5]:
        assert f"{path}: {prefix}" in r.stdout
    for path, _ in broken[5:]:
        assert f"{path}: " not in r.stdout
    assert f"... and {len(broken) - 5} more (all in the stats JSON)" in r.stdout
    assert f"{len(broken)} inputs rejected" in r.stdout


def test_strict_success_when_nothing_rejected(tmp_path, mixed_source):
    for p in mixed_source.valid[:3]:
        shutil.copy(p, tmp_path / p.name)
    r = runner.invoke(app, ["stats", str(tmp_path), "--strict", "--method", "two-pass"])
    assert r.exit_code == 0, r.output
    assert "rejected" not in r.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["stats", "MISSING"],
        ["stats", "SRC", "--method", "median"],
        ["stats", "SRC", "--workers", "0"],
        ["stats", "SRC", "--chunk-size", "0"],
        ["stats", "SRC", "--max-pixels", "-1"],
        ["stats", "SRC", "--json", "NOWHERE/stats.json"],
        ["stats", "FILE"],
        ["stats", "EMPTY"],
        ["stats"],
        ["nonsense"],
    ],
)
def test_bad_usage_exits_2(tmp_path, mixed_source, args):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.png").write_bytes(b"x")
    subst = {
        "MISSING": str(tmp_path / "missing"),
        "SRC": str(mixed_source.root),
        "NOWHERE/stats.json": str(tmp_path / "nowhere" / "stats.json"),
        "FILE": str(tmp_path / "file.png"),
        "EMPTY": str(tmp_path / "empty"),
    }
    r = runner.invoke(app, [subst.get(a, a) for a in args])
    assert r.exit_code == 2, r.output


def test_max_pixels_option(tmp_path, mixed_source):
    r = runner.invoke(app, ["stats", str(mixed_source.root), "--max-pixels", "100", "--json", "-"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    bombs = [f for f in d["failures"] if f["error"].startswith("decompression bomb")]
    assert len(bombs) > 1  # the synthetic bomb and every image above 100 pixels
    r = runner.invoke(app, ["stats", str(mixed_source.root), "--max-pixels", "0", "--json", "-"])
    assert r.exit_code == 0, r.output


def test_progress_bar_draws_on_a_terminal():
    from rich.console import Console

    buf = io.StringIO()
    con = Console(file=buf, force_terminal=True, width=80)
    with BarProgress(con) as bars:
        advance = counter(bars, "stats", 4)
        for _ in range(4):
            advance(1)
    assert "statistics (files)" in buf.getvalue()
    buf = io.StringIO()
    con = Console(file=buf, force_terminal=False)
    with BarProgress(con) as bars:
        counter(bars, "stats", 4)(4)
    assert buf.getvalue() == ""


def test_console_script_strict_exit_code(bad_folder):
    if os.geteuid() == 0:
        # the simulated permission error does not cross a process boundary
        (bad_folder.root / bad_folder.unreadable).unlink()
    r = subprocess.run(
        [_script(), "stats", str(bad_folder.root), "--strict", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert "inputs rejected" in r.stdout
