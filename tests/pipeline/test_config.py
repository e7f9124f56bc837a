from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import (
    RunConfig,
    config_reference,
    default_config_dict,
    load_config,
    parse_override,
    validate_config,
)
from pipeline.errors import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))

# The contract's defaults, typed out from docs/architecture.md ("Contract: the run
# config"), independently of the models. Paths are filled in by the tests.
CONTRACT_DEFAULTS = {
    "source": {"labels": "folders", "storage_options": {}},
    "stats": {"method": "exact", "at": "source", "file": None, "update": "freeze"},
    "transform": {
        "size": [224, 224],
        "resize": "shorter-side-crop",
        "normalize": "dataset",  # dataset | per-image | none
        "copies": 1,
        "augment": [],  # default: none
    },
    "output": {
        "storage_options": {},
        "dtype": "float16",
        "shard_size": 256,
        "compression": {"codec": "blosc", "level": 5, "shuffle": "bit"},  # chosen by measurement
        "overwrite": False,
    },
    "runtime": {
        "seed": 0,
        "device": "auto",
        "workers": None,
        "batch_size": 64,
        "dask_address": None,
    },
}


def _minimal(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "run.yaml"
    path.write_text("source: {path: imgs}\noutput: {path: out/ds.zarr}\n" + extra)
    return path


def _problems(exc: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    problems = exc.value.problems
    if len(problems) == 1:  # one problem is one line: the message ends with it
        assert str(exc.value).endswith(f": {problems[0]}")
    else:
        assert [line.strip() for line in str(exc.value).splitlines()[1:]] == problems
    return problems


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.source.path.is_absolute()
    # relative paths in the file resolve against the file's folder
    raw = __import__("yaml").safe_load(path.read_text())
    assert cfg.output.path == (path.parent / raw["output"]["path"]).resolve()
    assert RunConfig.model_validate(cfg.resolved_dict()) == cfg


def test_shipped_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"demo.yaml", "imagenet-style.yaml", "augmented.yaml"} <= names
    demo = load_config(CONFIGS[[p.name for p in CONFIGS].index("demo.yaml")])
    assert demo.transform.size == (64, 64)
    assert {s.op for s in demo.transform.augment} == {
        "invert",
        "dog_noise",
        "shadows_highlights",
        "gaussian_blur",
        "random_resized_crop",
    }
    imagenet = load_config(CONFIGS[[p.name for p in CONFIGS].index("imagenet-style.yaml")])
    assert imagenet.transform.size == (224, 224)
    assert imagenet.output.dtype == "float16"
    assert imagenet.output.shard_size == 256
    # the clean preparation: centre crop, normalized, nothing random baked in
    assert imagenet.transform.augment == ()
    assert imagenet.transform.resize == "shorter-side-crop"
    assert imagenet.transform.copies == 1
    augmented = load_config(CONFIGS[[p.name for p in CONFIGS].index("augmented.yaml")])
    assert augmented.transform.copies > 1
    assert [s.op for s in augmented.transform.augment] == [
        "random_resized_crop",
        "invert",
        "dog_noise",
        "shadows_highlights",
        "gaussian_blur",
    ]


def test_defaults_are_the_contract(tmp_path):
    cfg = load_config(_minimal(tmp_path))
    expected = json.loads(json.dumps(CONTRACT_DEFAULTS))
    expected["source"]["path"] = str(tmp_path / "imgs")
    expected["output"]["path"] = str(tmp_path / "out" / "ds.zarr")
    assert cfg.resolved_dict() == expected
    defaults = default_config_dict()
    assert defaults["source"]["path"] is None
    assert defaults["output"]["path"] is None
    defaults["source"]["path"] = expected["source"]["path"]
    defaults["output"]["path"] = expected["output"]["path"]
    assert defaults == expected


def test_relative_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    sub = tmp_path / "configs"
    sub.mkdir()
    (sub / "stats.json").write_text("{}")
    path = _minimal(sub, "stats: {file: stats.json}\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(Path("configs") / "run.yaml")
    assert cfg.source.path == sub / "imgs"
    assert cfg.stats.file == sub / "stats.json"
    assert load_config(path) == cfg


def test_override_paths_resolve_against_the_working_directory(tmp_path, monkeypatch):
    sub = tmp_path / "configs"
    sub.mkdir()
    path = _minimal(sub)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(path, ["output.path=elsewhere.zarr", "source.path=~/pics"])
    assert cfg.output.path == tmp_path / "elsewhere.zarr"
    assert cfg.source.path == Path("~/pics").expanduser()


def test_model_validate_resolves_against_base_dir_context(tmp_path):
    data = {"source": {"path": "a"}, "output": {"path": "b.zarr"}}
    cfg = RunConfig.model_validate(data, context={"base_dir": tmp_path})
    assert cfg.source.path == tmp_path / "a"
    assert validate_config(data, base_dir=tmp_path) == cfg


def test_required_keys(tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path / "empty.yaml")
    assert _problems(exc) == [
        "source.path: required key is missing",
        "output.path: required key is missing",
    ]


BAD_CASES = [
    (
        "transform.augment=[{op: invert}, {op: dog_noise, band: [0.3, 0.2], rms: 0.1}]",
        "transform.augment[1].band: f_low must be < f_high, got [0.3, 0.2]",
    ),
    (
        "transform.augment=[{op: dog_noise, band: [0.1, 0.6], rms: 0.1}]",
        "transform.augment[0].band: the band must lie in (0, 0.5]",
    ),
    (
        "transform.augment=[{op: dog_noise, band: [0.0, 0.2], rms: 0.1}]",
        "transform.augment[0].band: the band must lie in (0, 0.5]",
    ),
    (
        "transform.augment=[{op: dog_noise, band: [0.1, 0.2], rms: 0}]",
        "transform.augment[0].rms: rms must be > 0, got 0.0",
    ),
    (
        "transform.augment=[{op: dog_noise, band: [0.1, 0.2], rms: [0.2, 0.1]}]",
        "transform.augment[0].rms: a [lo, hi] range needs lo <= hi, got [0.2, 0.1]",
    ),
    (
        "transform.augment=[{op: dog_noise, rms: 0.1}]",
        "transform.augment[0].band: required key is missing",
    ),
    ("transform.augment=[{op: invert, p: 1.5}]", "transform.augment[0].p: must be <= 1.0, got 1.5"),
    (
        "transform.augment=[{op: invert, p: -0.1}]",
        "transform.augment[0].p: must be >= 0.0, got -0.1",
    ),
    (
        "transform.augment=[{op: invert, prob: 1}]",
        "transform.augment[0].prob: unknown key (allowed: op, p)",
    ),
    ("transform.augment=[{op: sharpen}]", 'transform.augment[0].op: unknown op "sharpen"'),
    ("transform.augment=[{p: 1}]", "transform.augment[0].op: required key is missing"),
    (
        "transform.augment=[{op: shadows_highlights, shadows: 1.5}]",
        "transform.augment[0].shadows: shadows must lie in [-1, 1], got 1.5",
    ),
    (
        "transform.augment=[{op: shadows_highlights, highlights: [-2, 0]}]",
        "transform.augment[0].highlights: highlights must lie in [-1, 1]",
    ),
    (
        "transform.augment=[{op: gaussian_blur, sigma: -1}]",
        "transform.augment[0].sigma: sigma must be >= 0, got -1.0",
    ),
    (
        "transform.augment=[{op: gaussian_blur, sigma: [1, 2, 3]}]",
        "transform.augment[0].sigma: expected a number or a [lo, hi] range, got [1, 2, 3]",
    ),
    (
        "transform.augment=[{op: gaussian_blur, sigma: .nan}]",
        "transform.augment[0].sigma: expected a number or a [lo, hi] range",
    ),
    (
        "transform.augment=[{op: random_resized_crop, p: 0.5}]",
        "transform.augment[0].p: random_resized_crop replaces the resize, so p must be 1, got 0.5",
    ),
    (
        "transform.augment=[{op: random_resized_crop, scale: [0, 1]}]",
        "transform.augment[0].scale: scale must satisfy 0 < lo <= hi <= 1, got [0.0, 1.0]",
    ),
    (
        "transform.augment=[{op: random_resized_crop, scale: [0.5, 1.2]}]",
        "transform.augment[0].scale: scale must satisfy 0 < lo <= hi <= 1",
    ),
    (
        "transform.augment=[{op: random_resized_crop, ratio: [-1, 1]}]",
        "transform.augment[0].ratio: ratio must satisfy 0 < lo <= hi",
    ),
    (
        "transform.augment=[{op: random_resized_crop}, {op: invert}, {op: random_resized_crop}]",
        "transform.augment: random_resized_crop may appear at most once, got 2 (steps 0, 2)",
    ),
    ("transform.augment=invert", 'transform.augment: expected a list, got "invert"'),
    ("transform.size=[224]", "transform.size: expected [H, W], two integers >= 1, got [224]"),
    ("transform.size=[0, 3]", "transform.size: expected [H, W], two integers >= 1, got [0, 3]"),
    ("transform.size=[2.5, 3]", "transform.size: expected [H, W], two integers >= 1"),
    (
        "transform.resize=crop",
        "transform.resize: expected 'shorter-side-crop', 'stretch' or 'pad', got \"crop\"",
    ),
    (
        "transform.normalize=yes please",
        "transform.normalize: expected 'dataset', 'per-image' or 'none', got \"yes please\"",
    ),
    ("transform.normalize=1", "transform.normalize: expected 'dataset', 'per-image' or 'none'"),
    ("transform.copies=0", "transform.copies: must be >= 1, got 0"),
    ("transform.copies=true", "transform.copies: expected an integer, got true"),
    ("stats.method=fast", "stats.method: expected 'exact', 'chan' or 'two-pass', got \"fast\""),
    ("stats.at=end", "stats.at: expected 'source' or 'resized', got \"end\""),
    ("stats.file=/nonexistent/stats.json", "stats.file: no such file: /nonexistent/stats.json"),
    ("output.dtype=int8", "output.dtype: expected 'float16', 'float32' or 'uint8', got \"int8\""),
    ("output.shard_size=0", "output.shard_size: must be >= 1, got 0"),
    ("output.shard_size=2.5", "output.shard_size: expected an integer, got 2.5"),
    (
        "output.compression.codec=lz4",
        "output.compression.codec: expected 'zstd', 'blosc', 'gzip' or 'none', got \"lz4\"",
    ),
    (
        "output.compression={codec: zstd, level: 23}",
        "output.compression.level: zstd level must be in 1..22, got 23",
    ),
    (
        "output.compression.level=10",
        "output.compression.level: blosc level must be in 0..9, got 10",
    ),
    (
        "output.compression={codec: zstd, shuffle: bit}",
        "output.compression.shuffle: shuffle is a blosc filter; zstd takes none, got 'bit'",
    ),
    (
        "output.compression.shuffle=bits",
        "output.compression.shuffle: expected 'bit', 'byte' or 'none'",
    ),
    (
        "output.compression={codec: gzip, level: 10}",
        "output.compression.level: gzip level must be in 0..9, got 10",
    ),
    (
        "output.compression={codec: blosc, level: -1}",
        "output.compression.level: blosc level must be in 0..9, got -1",
    ),
    (
        "output.compression={codec: none, level: 1}",
        "output.compression.level: codec 'none' takes no level, got 1",
    ),
    (
        "output.compression={codec: zstd, lvl: 1}",
        "output.compression.lvl: unknown key (allowed: codec, level, shuffle)",
    ),
    ("output.overwrite=maybe", 'output.overwrite: expected true or false, got "maybe"'),
    (
        "output.dtype=uint8",
        "output.dtype: uint8 stores un-normalized pixels; set transform.normalize: false",
    ),
    ("runtime.seed=-1", "runtime.seed: must be >= 0, got -1"),
    ("runtime.seed=0.5", "runtime.seed: expected an integer, got 0.5"),
    ("runtime.device=gpu", 'runtime.device: expected auto, cpu, cuda or cuda:N, got "gpu"'),
    ("runtime.device=cuda:x", 'runtime.device: expected auto, cpu, cuda or cuda:N, got "cuda:x"'),
    ("runtime.workers=0", "runtime.workers: must be >= 1, got 0"),
    ("runtime.batch_size=0", "runtime.batch_size: must be >= 1, got 0"),
    (
        "runtime.dask_address=localhost:8786",
        "runtime.dask_address: expected scheme://host:port (e.g. tcp://host:8786), "
        'got "localhost:8786"',
    ),
    ("source.labels=subfolders", "source.labels: expected 'folders' or 'none', got \"subfolders\""),
    ("source.path=", "source.path: expected a non-empty path or URL, got null"),
]


@pytest.mark.parametrize(("override", "expected"), BAD_CASES, ids=[c[0][:50] for c in BAD_CASES])
def test_bad_values_name_their_key_path(tmp_path, override, expected):
    with pytest.raises(ConfigError) as exc:
        load_config(_minimal(tmp_path), [override])
    problems = _problems(exc)
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected), problems[0]


def test_unknown_keys_in_the_file_are_errors_at_every_level(tmp_path):
    path = _minimal(
        tmp_path,
        "colour: red\nstats: {methd: exact}\ntransform: {augment: [{op: invert, q: 1}]}\n"
        "runtime: {gpu: true}\n",
    )
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert _problems(exc) == [
        "stats.methd: unknown key (allowed: method, at, file, update)",
        "transform.augment[0].q: unknown key (allowed: op, p)",
        "runtime.gpu: unknown key (allowed: seed, device, workers, batch_size, dask_address)",
        "colour: unknown key (allowed: source, stats, transform, output, runtime)",
    ]


def test_every_problem_is_listed_once_without_pydantic_text(tmp_path):
    overrides = ["transform.copies=0", "output.shard_size=-3", "runtime.device=tpu", "stats.at=x"]
    with pytest.raises(ConfigError) as exc:
        load_config(_minimal(tmp_path), overrides)
    message = str(exc.value)
    assert message.startswith(f"invalid config {tmp_path / 'run.yaml'} (4 problems):")
    assert [p.split(":")[0] for p in _problems(exc)] == [
        "stats.at",
        "transform.copies",
        "output.shard_size",
        "runtime.device",
    ]
    for leak in ("validation error", "[type=", "input_value", "errors.pydantic.dev", "Value error"):
        assert leak not in message


def test_values_or_ranges_keep_their_form(tmp_path):
    cfg = load_config(
        _minimal(tmp_path),
        [
            "transform.augment=[{op: gaussian_blur, sigma: 1}, "
            "{op: gaussian_blur, sigma: [0.5, 0.5]}]"
        ],
    )
    assert cfg.transform.augment[0].sigma == 1.0
    assert cfg.transform.augment[1].sigma == (0.5, 0.5)
    assert cfg.resolved_dict()["transform"]["augment"][1]["sigma"] == [0.5, 0.5]


@settings(max_examples=60, deadline=None)
@given(
    lo=st.floats(-0.2, 0.7, allow_nan=False),
    hi=st.floats(-0.2, 0.7, allow_nan=False),
)
def test_dog_band_accepted_iff_inside_nyquist(lo, hi):
    data = {
        "source": {"path": "/s"},
        "output": {"path": "/o"},
        "transform": {"augment": [{"op": "dog_noise", "band": [lo, hi], "rms": 0.1}]},
    }
    valid = 0.0 < lo < hi <= 0.5
    if valid:
        assert validate_config(data).transform.augment[0].band == (lo, hi)
    else:
        with pytest.raises(ConfigError, match=re.escape("transform.augment[0].band: ")):
            validate_config(data)


# --------------------------------------------------------------------------- overrides


def test_overrides_apply_yaml_values(tmp_path):
    cfg = load_config(
        _minimal(tmp_path),
        [
            "transform.size=[128,128]",
            "output.overwrite=true",
            "transform.augment=[]",
            "runtime.workers=3",
            "runtime.dask_address=tcp://10.0.0.1:8786",
            "output.compression.codec=gzip",
        ],
    )
    assert cfg.transform.size == (128, 128)
    assert cfg.output.overwrite is True
    assert cfg.transform.augment == ()
    assert cfg.runtime.workers == 3
    assert cfg.runtime.dask_address == "tcp://10.0.0.1:8786"
    assert cfg.output.compression.codec == "gzip"
    assert cfg.output.compression.level == 6


AUGMENT_YAML = (
    "transform:\n  augment:\n"
    "    - {op: invert, p: 0.5}\n"
    "    - {op: dog_noise, band: [0.05, 0.2], rms: 0.08}\n"
    "    - {op: shadows_highlights, shadows: 0.3, highlights: -0.2}\n"
    "    - {op: gaussian_blur, sigma: [0.1, 1.5]}\n"
    "    - {op: random_resized_crop, scale: [0.35, 1.0], ratio: [0.75, 1.333]}\n"
)


def test_override_into_a_list_item(tmp_path):
    cfg = load_config(
        _minimal(tmp_path, AUGMENT_YAML),
        ["transform.augment[0].p=0.125", "transform.augment[4].scale=[0.5, 1]"],
    )
    assert cfg.transform.augment[0].p == 0.125
    assert cfg.transform.augment[4].scale == (0.5, 1.0)
    assert [s.op for s in cfg.transform.augment] == [
        "invert",
        "dog_noise",
        "shadows_highlights",
        "gaussian_blur",
        "random_resized_crop",
    ]
    # the default list is empty: indexing into it names the key and the length
    with pytest.raises(ConfigError, match=r"index 0 out of range, 'transform.augment' has 0"):
        load_config(_minimal(tmp_path), ["transform.augment[0].p=0.125"])


def test_later_overrides_win(tmp_path):
    cfg = load_config(
        _minimal(tmp_path, "runtime: {seed: 5}\n"), ["runtime.seed=1", "runtime.seed=2"]
    )
    assert cfg.runtime.seed == 2


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "foo.bar=1",
            "--set foo.bar=1: unknown key 'foo' "
            "(allowed at the top level: source, stats, transform, output, runtime)",
        ),
        (
            "transform.sizes=[1,1]",
            "--set transform.sizes=[1,1]: unknown key 'transform.sizes' "
            "(allowed in 'transform': size, resize, normalize, copies, augment)",
        ),
        (
            "output.compression.lvl=3",
            "--set output.compression.lvl=3: unknown key 'output.compression.lvl'",
        ),
        (
            "transform.size.h=3",
            "--set transform.size.h=3: 'transform.size' is a value, it has no key \"h\"",
        ),
        (
            "transform.augment[9].p=1",
            "--set transform.augment[9].p=1: index 9 out of range, 'transform.augment' has 0 items",
        ),
        ("transform=", None),
        ("noequals", "--set noequals: expected key.path=value"),
        ("a..b=1", "--set a..b=1: malformed key path 'a..b'"),
        ("runtime.seed=[1", "--set runtime.seed=[1: the value is not valid YAML"),
    ],
)
def test_bad_overrides_name_the_key_path(tmp_path, override, message):
    with pytest.raises(ConfigError) as exc:
        load_config(_minimal(tmp_path), [override])
    if message is None:  # setting a whole section to null is a type error at that key
        assert "transform: expected a mapping of keys, got null" in str(exc.value)
    else:
        assert str(exc.value).startswith(message), str(exc.value)


def test_parse_override():
    assert parse_override("a.b=x y") == (("a", "b"), "x y")
    assert parse_override("a.b[2][0].c=null") == (("a", "b", 2, 0, "c"), None)
    assert parse_override("x={k: [1, 2]}") == (("x",), {"k": [1, 2]})


# --------------------------------------------------------------------------- files


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(
        ConfigError, match="expected a mapping of sections at the top level, got list"
    ):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("source:\n  path: [a\noutput: x\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+, column \d+"):
        load_config(tmp_path / "broken.yaml")
    with pytest.raises(ConfigError, match="transform: expected a mapping of keys, got 3"):
        load_config(_minimal(tmp_path, "transform: 3\n"))


# --------------------------------------------------------------------------- identity


def test_identity_ignores_what_does_not_change_the_bytes(tmp_path):
    base = load_config(_minimal(tmp_path))
    same = load_config(
        _minimal(tmp_path),
        [
            "runtime.workers=7",
            "runtime.dask_address=tcp://h:1",
            "output.overwrite=true",
            "output.path=/elsewhere/x.zarr",
            "source.path=/moved/images",
            "stats.update=refresh",
        ],
    )
    assert same.identity() == base.identity()
    assert len(base.identity()) == 64
    assert int(base.identity(), 16) >= 0
    assert RunConfig.model_validate(base.resolved_dict()).identity() == base.identity()


@pytest.mark.parametrize(
    "override",
    [
        "runtime.seed=1",
        "runtime.device=cpu",
        "runtime.batch_size=32",
        "transform.size=[224, 225]",
        "transform.resize=pad",
        "transform.normalize=false",
        "transform.copies=2",
        "transform.augment[0].p=0.6",
        "transform.augment[3].sigma=0.8",
        "transform.augment[3].sigma=[0.8, 0.8]",
        "transform.augment=[]",
        "transform.augment=[{op: invert}]",
        "stats.method=chan",
        "stats.at=resized",
        "source.labels=none",
        "output.dtype=float32",
        "output.shard_size=128",
        "output.compression.level=4",
        "output.compression.codec=none",
    ],
)
def test_identity_changes_with_everything_else(tmp_path, override):
    base = load_config(_minimal(tmp_path, AUGMENT_YAML))
    assert load_config(_minimal(tmp_path, AUGMENT_YAML), [override]).identity() != base.identity()


def test_identity_hashes_the_stats_file_content(tmp_path):
    stats = tmp_path / "stats.json"
    stats.write_text('{"mean": [0.5]}')
    cfg = load_config(_minimal(tmp_path, "stats: {file: stats.json}\n"))
    first = cfg.identity()
    copy = tmp_path / "copy.json"
    copy.write_text('{"mean": [0.5]}')
    assert load_config(_minimal(tmp_path, "stats: {file: copy.json}\n")).identity() == first
    stats.write_text('{"mean": [0.25]}')
    assert cfg.identity() != first
    stats.unlink()
    with pytest.raises(ConfigError, match="stats.file: cannot read"):
        cfg.identity()


def test_config_survives_pickle_and_json_schema(tmp_path):
    cfg = load_config(_minimal(tmp_path))
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    schema = RunConfig.model_json_schema()
    assert set(schema["properties"]) == {"source", "stats", "transform", "output", "runtime"}
    assert set(schema["required"]) == {"source", "output"}


def test_config_is_immutable(tmp_path):
    cfg = load_config(_minimal(tmp_path))
    with pytest.raises(Exception, match="frozen"):
        cfg.runtime.seed = 3  # type: ignore[misc]


def _leaf_keys(data, prefix=""):
    keys = set()
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            keys |= _leaf_keys(value, path)
        else:
            keys.add(path)
    return keys


def test_config_reference_documents_every_key():
    documented = {row.key for row in config_reference()}
    assert _leaf_keys(default_config_dict()) <= documented
    for op in ("invert", "dog_noise", "shadows_highlights", "gaussian_blur", "random_resized_crop"):
        assert f"transform.augment[].{op}.p" in documented
    assert all(row.description for row in config_reference())
