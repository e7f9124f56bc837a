"""The README stays true: its config reference and command list match the code."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.config import config_reference

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _table_rows(section: str) -> dict[str, tuple[str, str]]:
    start = README.index(section)
    end = README.index("\n## ", start + 1)
    rows = {}
    for line in README[start:end].splitlines():
        m = re.match(r"\| `([^`]+)` \| `([^`]*)` \| (.*) \|$", line)
        if m:
            rows[m.group(1)] = (m.group(2), m.group(3).replace("\\|", "|"))
    return rows


def test_config_reference_matches_the_models():
    documented = _table_rows("## Config reference")
    expected = {k.key: (k.default, k.description) for k in config_reference()}
    assert documented == expected


def test_every_command_is_documented():
    from flows.cli import app

    names = {c.name or c.callback.__name__ for c in app.registered_commands}
    assert names == {"demo", "stats", "run", "serve", "verify", "compact", "info", "preview"}
    for name in names:
        assert f"| `imageprep {name}" in README, name


def test_the_two_setup_commands():
    assert "make demo" in README
    assert "make test" in README
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert "make test" in ci
