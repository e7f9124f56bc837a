"""``--set key.path=value`` overrides: parsed as YAML, checked against the models, applied.

List items are addressed with ``[i]`` (``transform.augment[0].p=0.2``); a
missing list indexed into starts from its default. Path values given on the
command line resolve against the working directory, not the config's folder.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, get_origin

from pydantic import BaseModel

from pipeline.config._values import show
from pipeline.config.messages import field_model, loc_path
from pipeline.config.reference import default_config_dict
from pipeline.config.schema import PATH_KEYS, RunConfig
from pipeline.config.yamlsafe import load_yaml
from pipeline.errors import ConfigError
from pipeline.storage import is_url

__all__ = ["apply_overrides", "parse_override"]


_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
_SEGMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_\-]*)((?:\[\d+\])*)")


def parse_override(text: str) -> tuple[tuple[str | int, ...], Any]:
    """Split a ``key.path=value`` override into its key path and YAML value.

    The value is parsed as a YAML scalar or flow collection, so ``true``,
    ``3``, ``0.5``, ``null``, ``[128, 128]``, ``[]`` and ``{codec: gzip}``
    mean what they mean in the file; anything else is a string. List items
    are addressed with ``[i]``.

    Raises:
        ConfigError: no ``=``, or a malformed key path.

    Example:
        >>> parse_override("transform.size=[128, 128]")
        (('transform', 'size'), [128, 128])
        >>> parse_override("transform.augment[1].p=0.25")
        (('transform', 'augment', 1, 'p'), 0.25)
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {text}: expected key.path=value")
    parts: list[str | int] = []
    for segment in key.split("."):
        match = _SEGMENT.fullmatch(segment)
        if match is None:
            raise ConfigError(f"--set {text}: malformed key path {key!r}")
        parts.append(match.group(1))
        parts.extend(int(i) for i in re.findall(r"\[(\d+)\]", match.group(2)))
    try:
        value = load_yaml(raw, source="", aliases=False) if raw.strip() else None
    except ConfigError as exc:
        reason = str(exc).removeprefix("invalid config : ")
        raise ConfigError(f"--set {text}: the value is not valid YAML: {reason}") from None
    return tuple(parts), value


def _check_key_path(parts: Sequence[str | int], text: str) -> None:
    model: type[BaseModel] | None = RunConfig
    shown = ""
    for i, part in enumerate(parts):
        if model is None:  # inside a list item: its keys depend on its op, validated later
            return
        if isinstance(part, int):
            raise ConfigError(f"--set {text}: {shown or 'the config'} is not a list")
        field = model.model_fields.get(part)
        if field is None:
            where = f"in '{shown}'" if shown else "at the top level"
            raise ConfigError(
                f"--set {text}: unknown key '{loc_path(parts[: i + 1])}' "
                f"(allowed {where}: {', '.join(model.model_fields)})"
            )
        shown = loc_path(parts[: i + 1])
        sub = field_model(field.annotation)
        if sub is not None:
            model = sub
            continue
        rest = parts[i + 1 :]
        if not rest:
            return
        if get_origin(field.annotation) in (tuple, list) and isinstance(rest[0], int):
            model = None
            if len(rest) == 1:
                return
            continue
        raise ConfigError(f"--set {text}: '{shown}' is a value, it has no key {show(rest[0])}")


def apply_overrides(
    data: Mapping[str, Any], overrides: Sequence[str], *, cwd: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """Return a copy of ``data`` with ``key.path=value`` overrides applied.

    Path values given on the command line that are relative resolve against
    ``cwd`` (default: the working directory), not the config file's folder.
    URLs (``s3://bucket/ds.zarr``, and ``s3:/bucket`` that lost a slash, which
    validation then refuses) are left as they are.

    Raises:
        ConfigError: an override is malformed or names an unknown key path.
    """
    out: dict[str, Any] = copy.deepcopy(dict(data))
    defaults = default_config_dict()
    for text in overrides:
        parts, value = parse_override(text)
        _check_key_path(parts, text)
        if (
            tuple(parts) in PATH_KEYS
            and isinstance(value, str)
            and value.strip()
            and not is_url(value)
        ):
            # os.path.expanduser leaves an unknown ~user as written (Path's raises)
            path = Path(os.path.expanduser(value))
            if not path.is_absolute():
                value = str(Path(cwd if cwd is not None else os.getcwd()) / path)
        node: Any = out
        default: Any = defaults
        for depth, part in enumerate(parts[:-1]):
            default = _child(default, part)
            nxt = parts[depth + 1]
            if isinstance(node, dict):
                if part not in node or node[part] is None:
                    # a missing list (indexed into) starts from its default; a
                    # missing mapping starts empty, so its other keys keep their
                    # own defaults (e.g. the level of a new compression codec)
                    node[part] = copy.deepcopy(default) if isinstance(default, list) else {}
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and part < len(node):
                node = node[part]
            else:
                raise ConfigError(f"--set {text}: cannot set '{loc_path(parts[: depth + 1])}'")
            if isinstance(nxt, int) and not (isinstance(node, list) and nxt < len(node)):
                size = len(node) if isinstance(node, list) else 0
                raise ConfigError(
                    f"--set {text}: index {nxt} out of range, "
                    f"'{loc_path(parts[: depth + 1])}' has {size} items"
                )
            if isinstance(nxt, str) and not isinstance(node, dict):
                raise ConfigError(
                    f"--set {text}: '{loc_path(parts[: depth + 1])}' is not a mapping"
                )
        last = parts[-1]
        if isinstance(node, dict):
            node[last] = value
        elif isinstance(node, list) and isinstance(last, int):
            node[last] = value
        else:  # pragma: no cover - excluded by the checks above
            raise ConfigError(f"--set {text}: cannot set '{loc_path(parts)}'")
    return out


def _child(container: Any, key: str | int) -> Any:
    """``container[key]`` for a dict key or an in-range list index, else None."""
    if isinstance(container, dict):
        return container.get(key)
    if isinstance(container, list) and isinstance(key, int) and key < len(container):
        return container[key]
    return None
