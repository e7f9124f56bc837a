"""The demo: a synthetic dataset prepared by the flow with ``configs/demo.yaml``.

``configs/demo.yaml`` is the one demo config. The ``configs/`` folder is
installed as the package data ``imageprep_configs`` (an editable install maps
it to the checkout's folder), so a wheel install finds the same file.
:func:`demo_config` points the config's source at ``OUT/images`` and its store
at ``OUT/dataset.zarr``.

Example:
    >>> import tempfile
    >>> cfg = demo_config(Path(tempfile.mkdtemp()))
    >>> cfg.transform.size, cfg.output.path.name, cfg.source.path.name
    ((64, 64), 'dataset.zarr', 'images')
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import RunConfig, validate_config

__all__ = ["DEMO_CONFIG", "demo_config", "demo_config_data", "make_demo_source"]

#: The installed ``configs/demo.yaml``.
DEMO_CONFIG = resources.files("imageprep_configs").joinpath("demo.yaml")


def demo_config_data() -> tuple[dict[str, Any], str]:
    """Return the demo config mapping and where it came from."""
    data = yaml.safe_load(DEMO_CONFIG.read_text(encoding="utf-8"))
    return data, str(DEMO_CONFIG)


def demo_config(out: Path, *, workers: int | None = None) -> RunConfig:
    """Return the demo config with its source at ``out/images`` and store at ``out/dataset.zarr``.

    Args:
        out: the demo's output folder.
        workers: ``runtime.workers`` (default: the config's, all cores).
    """
    data, source = demo_config_data()
    out = Path(out).expanduser().resolve()
    data["source"]["path"] = str(out / "images")
    data["output"]["path"] = str(out / "dataset.zarr")
    if workers is not None:
        data["runtime"]["workers"] = workers
    return validate_config(data, base_dir=out, source=source)


def make_demo_source(out: Path, *, seed: int = 0, n_per_class: int = 12) -> Path:
    """Write the synthetic demo dataset into ``out/images`` and return that folder."""
    from pipeline.synthetic import make_dataset

    ds = make_dataset(out / "images", seed=seed, n_per_class=n_per_class)
    return ds.root
