"""Config fuzz: whatever a config holds, the outcome is a config or an error naming a key.

Hypothesis draws config dicts and YAML texts (:mod:`tests.pipeline.strategies`:
the contract's keys with plausible, extreme and junk values, junk keys, damaged
YAML) and ``--set`` overrides; they go through :func:`validate_config`,
:func:`load_config` and ``imageprep run CONFIG --dry-run``. Every outcome must
be a valid config or a :class:`ConfigError` (an :class:`ImageprepError`) whose
message names a key path; never another exception, never a traceback on the
command line, and the exit status is 0 or 2.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app
from pipeline.config import RunConfig, load_config, validate_config
from pipeline.errors import ConfigError, ImageprepError
from tests.pipeline.strategies import (
    CONFIG_KEYS,
    config_dicts,
    config_texts,
    override_strings,
)

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

_SECTIONS = tuple(CONFIG_KEYS)
_KEY = re.compile(r"(?:^|[\s(])(?:" + "|".join(_SECTIONS) + r")(?:\.[A-Za-z_]+|\[\d+\])*(?::|\b)")


def names_a_key(message: str) -> bool:
    """The message names a key path of the config (``output.path``, ``transform``, ...)."""
    return _KEY.search(message) is not None or "(config)" in message


def _check_config(cfg: RunConfig) -> None:
    assert isinstance(cfg, RunConfig)
    h, w = cfg.transform.size
    assert h >= 1
    assert w >= 1
    assert cfg.output.shard_size >= 1
    assert cfg.transform.copies >= 1
    assert cfg.runtime.batch_size >= 1
    cfg.resolved_dict()  # a valid config can be written back


def _outcome(fn: Any, *args: Any, **kwargs: Any) -> RunConfig | ConfigError:
    """The config, or the ConfigError; anything else fails the test."""
    try:
        cfg = fn(*args, **kwargs)
    except ConfigError as exc:
        message = str(exc)
        assert message.strip(), "an empty message"
        assert "Traceback" not in message
        return exc
    _check_config(cfg)
    return cfg


@FUZZ
@given(data=config_dicts())
def test_validate_config_gives_a_config_or_an_error_naming_a_key(data):
    out = _outcome(validate_config, data, base_dir="/tmp")
    if isinstance(out, ConfigError):
        assert names_a_key(str(out)) or "expected a mapping of sections" in str(out), str(out)


@FUZZ
@given(text=config_texts())
def test_load_config_gives_a_config_or_an_error_naming_a_key_or_the_yaml(text):
    folder = Path(tempfile.mkdtemp(prefix="imageprep-fuzz-"))
    path = folder / "run.yaml"
    path.write_text(text, encoding="utf-8")
    out = _outcome(load_config, path)
    if isinstance(out, ConfigError):
        message = str(out)
        # a YAML that does not parse names the file and where; else the key
        assert names_a_key(message) or str(path) in message, message


@FUZZ
@given(overrides=st.lists(override_strings(), min_size=1, max_size=3))
@example(overrides=["source.path=~0"])  # an unknown ~user: Path.expanduser raised RuntimeError
def test_overrides_give_a_config_or_an_error_naming_a_key(overrides):
    folder = Path(tempfile.mkdtemp(prefix="imageprep-fuzz-"))
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump({"source": {"path": "imgs"}, "output": {"path": "o.zarr"}}))
    out = _outcome(load_config, path, overrides)
    if isinstance(out, ConfigError):
        message = str(out)
        assert names_a_key(message) or "--set" in message or "override" in message, message


# ----------------------------------------------------------------------------- the command line

runner = CliRunner()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real source, so that a valid drawn config can plan a dry run."""
    root = tmp_path_factory.mktemp("fuzz-src") / "imgs"
    rng = np.random.default_rng(0)
    for i in range(3):
        path = root / ("a" if i % 2 else "b") / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)).save(path)
    return root


def _dry_run(folder: Path, text: str) -> Any:
    path = folder / "run.yaml"
    path.write_text(text, encoding="utf-8")
    return runner.invoke(app, ["run", str(path), "--dry-run"])


def _check_cli(result: Any) -> None:
    assert result.exit_code in (0, 2), (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    if result.exit_code == 2:
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1, result.stderr
        assert "internal error" not in result.stderr, result.stderr
    else:
        assert "dry run: nothing is written" in result.stdout, result.output


@FUZZ
@given(text=config_texts(), real_source=st.booleans())
def test_run_dry_run_of_any_config_exits_0_or_2_without_a_traceback(images, text, real_source):
    folder = Path(tempfile.mkdtemp(prefix="imageprep-fuzz-"))
    if real_source:  # the real keys with a source that exists: more configs get to the plan
        data: Any = yaml.safe_load(text) if _parses(text) else None
        if isinstance(data, dict):
            source = data.get("source")
            data["source"] = {**(source if isinstance(source, dict) else {}), "path": str(images)}
            output = data.get("output")
            output = output if isinstance(output, dict) else {}
            data["output"] = {**output, "path": str(folder / "o.zarr")}
            text = yaml.safe_dump(data, allow_unicode=True)
    result = _dry_run(folder, text)
    _check_cli(result)
    assert not (folder / "o.zarr").exists()  # a dry run writes nothing


def _parses(text: str) -> bool:
    try:
        yaml.safe_load(text)
    # PyYAML's constructors also raise these on some scalars (e.g. a timestamp with a
    # line break: AttributeError), as pipeline.config.yamlsafe.load_yaml knows
    except (yaml.YAMLError, ValueError, OverflowError, RecursionError, AttributeError, TypeError):
        return False
    return True


def test_the_key_matcher_is_not_trivial():
    assert names_a_key("invalid config x: output.shard_size: must be >= 1, got 0")
    assert names_a_key("invalid config x (2 problems):\n  output.shard_size: must be >= 1, got 0")
    assert names_a_key("stats.file '/x': not a stats JSON (...)")
    assert not names_a_key("internal error: ValueError: bad")
    with pytest.raises(ImageprepError):
        validate_config({"source": {"path": "/s"}, "output": {"path": "/o", "shard_size": 0}})
