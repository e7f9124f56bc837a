from __future__ import annotations

import math
import time
import tracemalloc
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings

from pipeline.config.yamlsafe import MAX_NODES, load_yaml
from pipeline.errors import ConfigError, InvalidArgumentError
from tests.pipeline.strategies import (
    CONFIG_KEYS,
    config_dicts,
    config_texts,
    override_strings,
    yaml_values,
)

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))


def billion_laughs(levels: int = 9, width: int = 10) -> str:
    """The issue's document: 9 levels of 10 aliases (10**9 strings once expanded)."""
    lines = [f'lol0: &lol0 "{"lol" * 8}"']
    for i in range(1, levels + 1):
        refs = ", ".join([f"*lol{i - 1}"] * width)
        lines.append(f"lol{i}: &lol{i} [{refs}]")
    return "\n".join(lines) + "\n"


def same(a, b) -> bool:
    """Equality that treats NaN as equal to NaN (YAML's .nan)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def test_the_project_configs_load_as_with_safe_load():
    assert CONFIGS
    for path in CONFIGS:
        text = path.read_text(encoding="utf-8")
        assert load_yaml(text, source=str(path)) == yaml.safe_load(text), path


YAML_FEATURES = [
    "",
    "# only a comment\n",
    "a: 1\nb: [1, 2.5, -3e4, .inf, -.inf]\nc: {d: null, e: ~, f: yes, g: 'no', h: true}\n",
    "base: &base {op: gaussian_blur, sigma: [0.1, 1.0]}\n"
    "augment:\n  - *base\n  - <<: *base\n    p: 0.5\n",
    "text: |\n  two\n  lines\nfolded: >\n  one\n  line\n",
    "when: 2024-05-01\nstamp: 2024-05-01T10:00:00Z\nbin: !!binary aGVsbG8=\n",
    "n: !!int '12'\nf: !!float '1'\ns: !!str 12\nlist: !!seq [a]\n",
    "octal: 0o17\nhex: 0x1F\nsexagesimal: 1:30\nunderscore: 1_000\n",
    "empty_list: []\nempty_map: {}\nunicode: caf\u00e9 \U0001f600\n",
    "- a\n- b\n",
    "just a string",
]


@pytest.mark.parametrize("text", YAML_FEATURES)
def test_yaml_features_load_as_with_safe_load(text):
    assert same(load_yaml(text, source="f.yaml"), yaml.safe_load(text))


def test_billion_laughs_fails_fast_and_small():
    text = billion_laughs()
    assert 300 < len(text.encode()) < 2000
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        load_yaml(text, source="laughs.yaml")
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 1.0
    assert peak < 5 * 2**20
    assert str(e.value) == (
        "invalid config laughs.yaml: refused at line 5, column 7: the document expands to more "
        f"than {MAX_NODES} values (aliases repeat their anchor's whole content)"
    )


def test_aliases_within_the_bound_are_fine_and_shared_like_safe_load():
    text = "a: &a [1, 2, 3]\nb: [*a, *a]\n"
    out = load_yaml(text, source="x")
    assert out == yaml.safe_load(text)
    assert out["b"][0] is out["a"]
    # the bound counts the expansion: 4 scalars in a list, repeated
    wide = "a: &a [0, 1, 2, 3]\nb: [" + ", ".join(["*a"] * 30) + "]\n"
    assert len(load_yaml(wide, source="x", max_nodes=200)["b"]) == 30
    with pytest.raises(ConfigError, match="expands to more than 100 values"):
        load_yaml(wide, source="x", max_nodes=100)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a: &a [1, *a]\n", r"refused at line 1, column 11: recursive alias"),
        ("a: &a {b: *a}\n", "recursive alias"),
        ("[" * 100 + "]" * 100, "nested deeper than 64 levels"),
        ("a:\n" + "".join("  " * i + "- \n" for i in range(1, 80)), "nested deeper than 64"),
        ("a: 1\n---\nb: 2\n", "not valid YAML at line 2, column 1: but found another document"),
        ("a: [1, 2\n", r"not valid YAML at line 2, column 1: expected ',' or '\]'"),
        ("a: *nope\n", "found undefined alias 'nope'"),
        ("a: \x00\n", r"not valid YAML at character 3: special characters are not allowed"),
        ("n: " + "9" * 5000 + "\n", "cannot read a value: Exceeds the limit"),
        ("d: 2024-02-30\n", "cannot read a value: day is out of range for month"),
        ("a: !!python/name:os.system x\n", "could not determine a constructor"),
        ("{[1]: 2}\n", "found unhashable key"),
    ],
)
def test_refusals_and_errors_are_config_errors(text, match):
    with pytest.raises(ConfigError, match=match) as e:
        load_yaml(text, source="bad.yaml")
    assert str(e.value).startswith("invalid config bad.yaml: ")
    assert "\n" not in str(e.value)


def test_aliases_can_be_refused_entirely():
    assert load_yaml("[1, 2]", source="--set a=[1, 2]", aliases=False) == [1, 2]
    with pytest.raises(ConfigError, match=r"--set a=\[\*x\]: refused .*aliases are not allowed"):
        load_yaml("[&x 1, *x]", source="--set a=[*x]", aliases=False)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, None])
def test_bad_bounds(bad):
    with pytest.raises(InvalidArgumentError, match="must be a positive int"):
        load_yaml("a: 1", source="x", max_nodes=bad)
    with pytest.raises(InvalidArgumentError, match="must be a positive int"):
        load_yaml("a: 1", source="x", max_depth=bad)


# ---------------------------------------------- the config strategies (tests/pipeline/strategies)

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(data=config_dicts())
def test_config_dicts_round_trip_through_yaml(data):
    text = yaml.safe_dump(data, allow_unicode=True)
    assert same(load_yaml(text, source="fuzz.yaml"), yaml.safe_load(text))
    assert isinstance(data, dict)


@FUZZ
@given(text=config_texts())
def test_config_texts_load_or_fail_with_config_error(text):
    try:
        expected = yaml.safe_load(text)
    except Exception:
        with pytest.raises(ConfigError, match="^invalid config fuzz.yaml: "):
            load_yaml(text, source="fuzz.yaml")
    else:
        assert same(load_yaml(text, source="fuzz.yaml"), expected)


@FUZZ
@given(value=yaml_values(max_leaves=30))
def test_any_yaml_value_round_trips(value):
    text = yaml.safe_dump(value, allow_unicode=True)
    assert same(load_yaml(text, source="v.yaml"), yaml.safe_load(text))


def test_config_dicts_hit_every_real_key():
    seen: set[str] = set()

    @settings(max_examples=150, deadline=None, database=None)
    @given(data=config_dicts())
    def collect(data):
        for section, keys in data.items():
            if section in CONFIG_KEYS and isinstance(keys, dict):
                seen.update(f"{section}.{k}" for k in keys if k in CONFIG_KEYS[section])

    collect()
    expected = {f"{s}.{k}" for s, keys in CONFIG_KEYS.items() for k in keys}
    assert len(seen) >= 0.9 * len(expected), sorted(expected - seen)


@settings(max_examples=100, deadline=None)
@given(item=override_strings())
def test_override_strings_are_strings(item):
    assert isinstance(item, str)
