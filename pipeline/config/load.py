"""Loading a run config: YAML file, ``--set`` overrides, validation with every problem listed."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pipeline.config._values import show
from pipeline.config.messages import config_error, problems
from pipeline.config.overrides import apply_overrides
from pipeline.config.schema import RunConfig
from pipeline.config.yamlsafe import load_yaml
from pipeline.errors import ConfigError

__all__ = ["load_config", "validate_config"]


def validate_config(
    data: Mapping[str, Any],
    *,
    base_dir: str | os.PathLike[str] | None = None,
    source: str = "<dict>",
) -> RunConfig:
    """Validate a config dict, raising :class:`ConfigError` with every problem.

    Args:
        data: the parsed YAML (or any mapping in the contract's shape).
        base_dir: folder that relative paths resolve against (default: the
            working directory).
        source: a name for the config in messages (its file path).

    Returns:
        The validated config, with absolute paths.

    Raises:
        ConfigError: one line per problem, each naming its key path.

    Example:
        >>> validate_config({"source": {"path": "/d"}, "output": {"path": "/o", "shard_size": 0}})
        Traceback (most recent call last):
        ...
        pipeline.errors.ConfigError: invalid config <dict>: output.shard_size: must be >= 1, got 0
    """
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"invalid config {source}: expected a mapping of sections, got {show(data)}"
        )
    context = {"base_dir": Path(base_dir) if base_dir is not None else None}
    try:
        return RunConfig.model_validate(dict(data), context=context)
    except ValidationError as exc:
        raise config_error(source, problems(exc)) from None


def load_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> RunConfig:
    r"""Load, override and validate a YAML run config.

    Args:
        path: the YAML file; relative paths inside resolve against its folder.
        overrides: ``key.path=value`` strings (the CLI's ``--set``), applied in
            order on top of the file; values are YAML (``[128,128]``, ``true``).

    Returns:
        The validated config.

    Raises:
        ConfigError: the file cannot be read or parsed, an override names an
            unknown key, or the result is invalid (all problems listed, each
            with its key path).

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "run.yaml").write_text("source: {path: imgs}\noutput: {path: out.zarr}\n")
        >>> cfg = load_config(d / "run.yaml", ["transform.size=[64, 32]", "transform.augment=[]"])
        >>> cfg.transform.size, cfg.transform.augment, cfg.source.path == d / "imgs"
        ((64, 32), (), True)
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {file}: {exc.strerror or exc}") from None
    # bounded: a "billion laughs" of aliases is refused, not expanded
    data = load_yaml(text, source=str(file))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"invalid config {file}: expected a mapping of sections at the top level, "
            f"got {type(data).__name__}"
        )
    data = apply_overrides(data, overrides)
    return validate_config(data, base_dir=file.resolve().parent, source=str(file))
