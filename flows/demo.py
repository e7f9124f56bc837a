"""The demo: a synthetic dataset prepared by the flow with ``configs/demo.yaml``.

``configs/demo.yaml`` is the one source of truth for the demo's config. It
lives at the repository root, which a wheel does not package, so
:data:`DEMO_CONFIG` embeds the same mapping and is used when the file is not
there (a test keeps the two equal). :func:`demo_config` points the config's
source at ``OUT/images`` and its store at ``OUT/dataset.zarr``.

Example:
    >>> import tempfile
    >>> cfg = demo_config(Path(tempfile.mkdtemp()))
    >>> cfg.transform.size, cfg.output.path.name, cfg.source.path.name
    ((64, 64), 'dataset.zarr', 'images')
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipeline.config import RunConfig, validate_config

__all__ = ["DEMO_CONFIG", "DEMO_CONFIG_FILE", "demo_config", "demo_config_data"]

#: ``configs/demo.yaml`` in a source checkout (absent from a wheel install).
DEMO_CONFIG_FILE = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"

#: The content of ``configs/demo.yaml``, embedded (equal to the file, tested).
DEMO_CONFIG: dict[str, Any] = {
    "source": {"path": "../demo-output/images", "labels": "folders"},
    "stats": {"method": "exact", "at": "source", "file": None},
    "transform": {
        "size": [64, 64],
        "resize": "shorter-side-crop",
        "normalize": True,
        "copies": 2,
        "augment": [
            {"op": "random_resized_crop", "scale": [0.5, 1.0], "ratio": [0.75, 1.333]},
            {"op": "invert", "p": 0.25},
            {"op": "dog_noise", "band": [0.05, 0.25], "rms": [0.02, 0.08], "p": 0.8},
            {
                "op": "shadows_highlights",
                "shadows": [0.0, 0.4],
                "highlights": [-0.3, 0.0],
                "p": 0.5,
            },
            {"op": "gaussian_blur", "sigma": [0.1, 1.2], "p": 0.5},
        ],
    },
    "output": {
        "path": "../demo-output/dataset.zarr",
        "dtype": "float16",
        "shard_size": 32,
        "compression": {"codec": "zstd", "level": 3},
        "overwrite": True,
    },
    "runtime": {
        "seed": 0,
        "device": "auto",
        "workers": None,
        "batch_size": 32,
        "dask_address": None,
    },
}


def demo_config_data() -> tuple[dict[str, Any], str]:
    """Return the demo config mapping and where it came from (the file, or ``<embedded>``)."""
    if DEMO_CONFIG_FILE.is_file():
        data = yaml.safe_load(DEMO_CONFIG_FILE.read_text(encoding="utf-8"))
        return data, str(DEMO_CONFIG_FILE)
    import copy

    return copy.deepcopy(DEMO_CONFIG), "<embedded demo config>"


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
