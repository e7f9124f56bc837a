"""Hypothesis strategies for fuzzing run configs: the real keys mixed with junk.

For tests that config loading and validation never raise anything but
``ConfigError`` (and never a traceback), whatever the YAML holds::

    from hypothesis import given
    from tests.pipeline.strategies import config_dicts

    @given(data=config_dicts())
    def test_validation_raises_only_config_errors(data):
        try:
            validate_config(data)
        except ConfigError:
            pass

- :func:`config_dicts`: nested dicts shaped like a run config: each section
  absent, junk, or a dict of its real keys (the contract's, from
  ``docs/`` / ARCHITECTURE) with plausible, extreme or junk values, plus junk
  keys at every level.
- :func:`config_texts`: YAML text of such dicts, sometimes damaged.
- :func:`override_strings`: ``--set key.path=value`` strings.
- :func:`yaml_values`: anything ``yaml.safe_load`` can return (``None``,
  bools, ints of any size, floats with ``nan``/``inf``, strings, bytes from
  ``!!binary``, dates, lists, dicts with non-string keys).

Every strategy only draws values that ``yaml.safe_dump`` can write and
``yaml.safe_load`` reads back (tuples are never drawn), so a drawn dict is a
config some YAML file could hold.
"""

from __future__ import annotations

import datetime as dt
import string
from typing import Any

import yaml
from hypothesis import strategies as st

__all__ = [
    "AUGMENT_OPS",
    "CONFIG_KEYS",
    "augment_steps",
    "config_dicts",
    "config_texts",
    "override_strings",
    "yaml_scalars",
    "yaml_values",
]

# -- values ------------------------------------------------------------------------------------

_EXTREME_INTS = [0, -1, 1, 2**31 - 1, 2**31, 2**63 - 1, 2**63, -(2**63), 10**30, -(10**30)]
_EXTREME_FLOATS = [0.0, -0.0, 1e-320, 1e308, -1e308, float("inf"), float("-inf"), float("nan")]
_ODD_TEXT = [
    "",
    " ",
    "~",
    "null",
    "true",
    "yes",
    "0x1F",
    "1e3",
    ".inf",
    "/",
    "/proc/x.zarr",
    "..",
    "../../etc",
    "s3://bucket/key",
    "memory://x",
    "tcp://host:8786",
    "cuda:99",
    "n\udcff".encode("utf-8", "surrogateescape").decode("latin-1"),  # mojibake
    "\u202eevil",
    "a\nb",
    "x" * 5000,
]

text = st.one_of(st.sampled_from(_ODD_TEXT), st.text(max_size=30))


def yaml_scalars() -> st.SearchStrategy[Any]:
    """Scalars ``yaml.safe_load`` can produce, extremes included."""
    return st.one_of(
        st.none(),
        st.booleans(),
        st.sampled_from(_EXTREME_INTS),
        st.integers(-(10**6), 10**6),
        st.integers(),
        st.sampled_from(_EXTREME_FLOATS),
        st.floats(allow_nan=True, allow_infinity=True),
        text,
        st.binary(max_size=16),  # !!binary
        st.dates(min_value=dt.date(1, 1, 1)),
        st.datetimes(timezones=st.none() | st.just(dt.timezone.utc)),
    )


def _keys() -> st.SearchStrategy[Any]:
    # YAML mapping keys: strings mostly, but also ints, bools, None, floats
    return st.one_of(text, st.integers(-3, 3), st.booleans(), st.none(), st.just(1.5))


def yaml_values(*, max_leaves: int = 12) -> st.SearchStrategy[Any]:
    """Nested lists and dicts of :func:`yaml_scalars`."""
    return st.recursive(
        yaml_scalars(),
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(_keys(), inner, max_size=4),
        ),
        max_leaves=max_leaves,
    )


_JUNK = yaml_values(max_leaves=6)


def _junk() -> st.SearchStrategy[Any]:
    return _JUNK


def _section(
    keys: dict[str, st.SearchStrategy[Any]], *, fixed: dict[str, Any] | None = None
) -> st.SearchStrategy[dict[Any, Any]]:
    """A dict of some of ``keys`` (plausible or junk values) and some junk keys."""

    def value(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(strategy, strategy, strategy, _junk())

    real = st.fixed_dictionaries(
        {k: st.just(v) for k, v in (fixed or {}).items()},
        optional={k: value(s) for k, s in keys.items()},
    )
    extra = st.dictionaries(_keys(), _junk(), max_size=2)
    return st.tuples(real, extra, st.integers(0, 9)).map(
        lambda t: {**t[1], **t[0]} if t[2] < 3 else t[0]  # junk keys in 3 draws of 10
    )


# -- the real keys -----------------------------------------------------------------------------

_pos_ints = st.one_of(st.integers(1, 1024), st.sampled_from(_EXTREME_INTS))
_sizes = st.one_of(
    st.lists(st.integers(-2, 512), min_size=2, max_size=2),
    st.lists(st.sampled_from(_EXTREME_INTS), min_size=2, max_size=2),
    st.lists(st.integers(1, 64), max_size=3),
    st.integers(1, 512),
    st.sampled_from(["224", "224x224", "[224, 224]"]),
)
_unit = st.one_of(st.floats(0, 1), st.sampled_from(_EXTREME_FLOATS), st.floats(-2, 2))
_ranges = st.one_of(_unit, st.lists(_unit, min_size=2, max_size=2), st.lists(_unit, max_size=3))
_paths = st.one_of(st.sampled_from(_ODD_TEXT), st.just("data/images"), st.just("out.zarr"))
_options = st.dictionaries(text, yaml_scalars(), max_size=3)

AUGMENT_OPS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "invert": {"p": _unit},
    "dog_noise": {"band": _ranges, "rms": _ranges, "p": _unit},
    "shadows_highlights": {"shadows": _ranges, "highlights": _ranges, "p": _unit},
    "gaussian_blur": {"sigma": _ranges, "p": _unit},
    "random_resized_crop": {"scale": _ranges, "ratio": _ranges, "p": _unit},
}
"""Augmentation ops of the contract and plausible values for their parameters."""


def augment_steps() -> st.SearchStrategy[Any]:
    """``transform.augment`` lists: real ops with real or junk parameters, and junk steps."""
    real = st.one_of([_section(params, fixed={"op": op}) for op, params in AUGMENT_OPS.items()])
    junk_op = st.fixed_dictionaries({"op": text}, optional={"p": _unit})
    step = st.one_of(real, real, junk_op, _junk())
    return st.one_of(st.lists(step, max_size=6), _junk())


_AUGMENT = augment_steps()

CONFIG_KEYS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "source": {
        "path": _paths,
        "labels": st.sampled_from(["folders", "none", "Folders", ""]),
        "storage_options": _options,
    },
    "stats": {
        "method": st.sampled_from(["exact", "chan", "two-pass", "two_pass", ""]),
        "at": st.sampled_from(["source", "resized", "after"]),
        "file": st.one_of(st.none(), _paths),
        "update": st.sampled_from(["freeze", "refresh", "never"]),
    },
    "transform": {
        "size": _sizes,
        "resize": st.sampled_from(["shorter-side-crop", "stretch", "pad", "crop"]),
        "normalize": st.sampled_from([True, False, "dataset", "per-image", "none", "yes", 1]),
        "copies": _pos_ints,
        "augment": _AUGMENT,
    },
    "output": {
        "path": _paths,
        "storage_options": _options,
        "dtype": st.sampled_from(["float16", "float32", "uint8", "int8", "float64"]),
        "shard_size": _pos_ints,
        "compression": st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    "codec": st.sampled_from(["zstd", "blosc", "gzip", "none", "lz4"]),
                    "level": st.one_of(st.integers(-5, 30), st.sampled_from(_EXTREME_INTS)),
                },
            ),
            _junk(),
        ),
        "overwrite": st.one_of(st.booleans(), st.sampled_from(["true", "no", 0, 2])),
    },
    "runtime": {
        "seed": st.one_of(st.integers(), st.sampled_from(_EXTREME_INTS)),
        "device": st.sampled_from(["auto", "cpu", "cuda", "cuda:0", "cuda:99", "mps", "gpu"]),
        "workers": st.one_of(st.none(), _pos_ints),
        "batch_size": _pos_ints,
        "dask_address": st.one_of(st.none(), st.sampled_from(["tcp://127.0.0.1:1", "nope"])),
    },
}
"""Sections of the run config contract, their keys and plausible values for each."""


def config_dicts() -> st.SearchStrategy[dict[Any, Any]]:
    """Config-shaped dicts: each section absent, junk, or real keys with odd values."""

    def section(keys: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
        return st.one_of(_section(keys), _section(keys), _section(keys), _junk())

    body = st.fixed_dictionaries({}, optional={n: section(k) for n, k in CONFIG_KEYS.items()})
    extra = st.dictionaries(_keys(), _junk(), max_size=2)
    return st.tuples(body, extra, st.integers(0, 9)).map(
        lambda t: {**t[1], **t[0]} if t[2] < 2 else t[0]
    )


def _damage(yaml_text: str, data: st.DataObject) -> str:
    kind = data.draw(st.sampled_from(["none", "none", "cut", "insert", "indent"]))
    if kind == "none" or not yaml_text:
        return yaml_text
    i = data.draw(st.integers(0, len(yaml_text)))
    if kind == "cut":
        return yaml_text[:i]
    if kind == "insert":
        junk = data.draw(
            st.sampled_from(
                ["&a ", "*a", ":", "- ", "{", "]", "\t", "!!python/name:os.system", "%", "\x00"]
            )
        )
        return yaml_text[:i] + junk + yaml_text[i:]
    return yaml_text[:i] + "\n   " + yaml_text[i:]


def config_texts() -> st.SearchStrategy[str]:
    """YAML text of :func:`config_dicts`, in block or flow style, sometimes damaged."""

    @st.composite
    def build(draw: st.DrawFn) -> str:
        data = draw(config_dicts())
        flow = draw(st.booleans())
        dumped = yaml.safe_dump(data, default_flow_style=flow, allow_unicode=True, width=80)
        return _damage(dumped, draw(st.data()))

    return build()


_KEY_PATHS = [f"{s}.{k}" for s, keys in CONFIG_KEYS.items() for k in keys] + [
    "transform.augment[0].p",
    "transform.augment[99].sigma",
    "transform.size[0]",
    "source",
    "nope.key",
    "",
    ".",
    "a..b",
    "transform.augment[-1]",
    "transform.augment[0",
]


def override_strings() -> st.SearchStrategy[str]:
    """``--set key.path=value`` strings: real and broken key paths, YAML or junk values."""
    values = st.one_of(
        yaml_values(max_leaves=4).map(
            lambda v: yaml.safe_dump(v, default_flow_style=True, width=10_000).strip()
        ),
        st.text(alphabet=string.printable, max_size=20),
    )
    keys = st.one_of(st.sampled_from(_KEY_PATHS), st.text(max_size=12))
    sep = st.sampled_from(["=", "=", "=", "", "=="])
    return st.tuples(keys, sep, values).map(lambda t: "".join(t))
