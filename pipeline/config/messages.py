"""Config errors as one line per problem, each naming its key path.

Turns pydantic's ``ValidationError`` into lines such as
``transform.augment[1].band: f_low must be < f_high, got [0.3, 0.2]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from pipeline.config._values import show
from pipeline.config.schema import RunConfig
from pipeline.config.steps import STEPS
from pipeline.errors import ConfigError

__all__ = ["config_error", "field_model", "loc_path", "problems"]


def loc_path(loc: Sequence[str | int]) -> str:
    """Render a pydantic location as a key path, dropping discriminator tags."""
    out = ""
    previous: str | int | None = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(previous, int) and part in STEPS:
            pass  # the discriminated union adds the tag after the list index
        else:
            out += f".{part}" if out else str(part)
        previous = part
    return out or "(config)"


def _model_at(loc: Sequence[str | int]) -> type[BaseModel] | None:
    """Return the model that holds the key at ``loc`` (for "allowed keys" hints)."""
    model: type[BaseModel] | None = RunConfig
    parts = list(loc[:-1])
    i = 0
    while i < len(parts) and model is not None:
        part = parts[i]
        if isinstance(part, int):
            tag = parts[i + 1] if i + 1 < len(parts) else None
            model = STEPS.get(tag) if isinstance(tag, str) else None
            i += 2
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        model = field_model(field.annotation)
        if model is None and i + 1 < len(parts) and isinstance(parts[i + 1], int):
            model = RunConfig  # a list of steps: the next index and tag pick the step model
        i += 1
    return model


def field_model(annotation: Any) -> type[BaseModel] | None:
    """The model class a field's annotation holds (directly or in a union), if any."""
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


_BOUNDS = {
    "greater_than_equal": (">=", "ge"),
    "greater_than": (">", "gt"),
    "less_than_equal": ("<=", "le"),
    "less_than": ("<", "lt"),
}


_TYPE_NAMES = {
    "bool_type": "true or false",
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "tuple_type": "a list",
    "list_type": "a list",
    "none_required": "null",
}


def _describe_error(err: Mapping[str, Any]) -> str:
    loc = err.get("loc", ())
    path = loc_path(loc)
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    got = show(err.get("input"))
    if kind == "missing":
        return f"{path}: required key is missing"
    if kind == "extra_forbidden":
        model = _model_at(loc)
        hint = f" (allowed: {', '.join(model.model_fields)})" if model is not None else ""
        return f"{path}: unknown key{hint}"
    if kind == "union_tag_not_found":
        return f"{path}.op: required key is missing (one of {', '.join(STEPS)})"
    if kind == "union_tag_invalid":
        ops = ", ".join(STEPS)
        return f"{path}.op: unknown op {show(ctx.get('tag'))}, expected one of {ops}"
    if kind in _BOUNDS:
        symbol, name = _BOUNDS[kind]
        return f"{path}: must be {symbol} {ctx.get(name)}, got {got}"
    msg = str(err.get("msg", "invalid value"))
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
        if not loc:
            return msg
        return f"{path}: {msg}"
    if kind == "literal_error":
        return f"{path}: expected {ctx.get('expected', '?')}, got {got}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"{path}: expected a mapping of keys, got {got}"
    if kind in _TYPE_NAMES:
        return f"{path}: expected {_TYPE_NAMES[kind]}, got {got}"
    msg = msg.replace("Input should be", "expected").replace("Input should", "expected to")
    return f"{path}: {msg}, got {got}"


def problems(exc: ValidationError) -> list[str]:
    """One line per problem of a validation error (duplicates dropped), in pydantic's order."""
    lines: list[str] = []
    for err in exc.errors(include_url=False):
        for line in _describe_error(err).splitlines():
            if line not in lines:
                lines.append(line)
    return lines


def config_error(source: str, lines: Sequence[str]) -> ConfigError:
    """The :class:`ConfigError` of a config named ``source`` with these problem lines.

    One problem is one line (``invalid config SOURCE: key: why``); several
    are a count, then one indented line each.
    """
    if len(lines) == 1:
        error = ConfigError(f"invalid config {source}: {lines[0]}")
    else:
        body = "\n".join(f"  {p}" for p in lines)
        error = ConfigError(f"invalid config {source} ({len(lines)} problems):\n{body}")
    error.problems = list(lines)
    return error
