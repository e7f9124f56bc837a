"""Prefect flows over the ``pipeline`` library: scheduling, retries, caching, artifacts.

- :func:`flows.prepare.prepare_flow`: the whole prepare run (``imageprep run``).
- :func:`flows.stats.stats_flow`: the dataset statistics alone.
- :func:`flows.serve.serve_prepare`: the prepare flow on a cron schedule
  (``imageprep serve``).

The names are imported lazily (``from flows import prepare_flow`` works), so
that importing a light submodule such as :mod:`flows.demo` does not import
Prefect.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["prepare_flow", "serve_prepare", "stats_flow"]

_HOMES = {
    "prepare_flow": "flows.prepare",
    "serve_prepare": "flows.serve",
    "stats_flow": "flows.stats",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'flows' has no attribute {name!r}")
