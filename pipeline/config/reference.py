"""The config reference: every key with its default and meaning (the README's table).

Example:
    >>> rows = {row.key: row for row in config_reference()}
    >>> rows["output.shard_size"].default, rows["source.path"].default
    ('256', '(required)')
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel

from pipeline.config.schema import (
    OutputConfig,
    RunConfig,
    RuntimeConfig,
    StatsConfig,
    TransformConfig,
)
from pipeline.config.steps import STEPS

__all__ = ["ConfigKey", "config_reference", "default_config_dict"]


def _field_model(annotation: Any) -> type[BaseModel] | None:
    from pipeline.config.messages import field_model

    return field_model(annotation)


def default_config_dict() -> dict[str, Any]:
    """Return every key with its default (``None`` for the two required paths).

    Example:
        >>> d = default_config_dict()
        >>> d["output"]["shard_size"], d["source"]["path"], d["stats"]["method"]
        (256, None, 'exact')
    """
    return {
        "source": {"path": None, "labels": "folders", "storage_options": {}},
        "stats": StatsConfig().model_dump(mode="json"),
        "transform": TransformConfig().model_dump(mode="json"),
        "output": {
            "path": None,
            **OutputConfig.model_construct().model_dump(mode="json", exclude={"path"}),
        },
        "runtime": RuntimeConfig().model_dump(mode="json"),
    }


@dataclass(frozen=True)
class ConfigKey:
    """One row of the config reference: key path, default (YAML) and meaning."""

    key: str
    default: str
    description: str


def _yaml_value(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000)
    return text.strip().removesuffix("...").strip()


def config_reference() -> list[ConfigKey]:
    """Return the reference of every key: sections first, then each augment op's keys.

    Augment keys are listed as ``transform.augment[].<op>.<key>``.

    Example:
        >>> rows = {row.key: row for row in config_reference()}
        >>> rows["output.shard_size"].default, rows["source.path"].default
        ('256', '(required)')
    """
    defaults = default_config_dict()
    rows: list[ConfigKey] = []

    def walk(model: type[BaseModel], prefix: str, values: Any) -> None:
        for name, field in model.model_fields.items():
            key = f"{prefix}.{name}" if prefix else name
            sub = _field_model(field.annotation)
            value = values.get(name) if isinstance(values, dict) else None
            if sub is not None and name != "compression":
                walk(sub, key, value)
                continue
            shown = "(required)" if value is None and field.is_required() else _yaml_value(value)
            rows.append(ConfigKey(key, shown, field.description or ""))
            if sub is not None:
                walk(sub, key, value)

    walk(RunConfig, "", defaults)
    for op, model in STEPS.items():
        for name, field in model.model_fields.items():
            if name == "op":
                continue
            default = (
                "(required)"
                if field.is_required()
                else _yaml_value(json.loads(json.dumps(field.default)))
            )
            rows.append(
                ConfigKey(f"transform.augment[].{op}.{name}", default, field.description or "")
            )
    return rows
