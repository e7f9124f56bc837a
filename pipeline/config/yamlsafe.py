"""Bounded YAML loading for configs: ``yaml.safe_load`` without the alias bomb.

``yaml.safe_load`` itself is fast on a "billion laughs" document (9 levels of
10 aliases, under 2 KB): aliases become shared Python objects. The cost comes
later, from every consumer that walks the data as a tree: a deep copy of the
overrides, pydantic's validation and the repr of the value in its error
message expand it to 10**9 values (minutes and gigabytes). So the bound is on
the *expanded* document, checked while it is composed, before any object is
built:

- **Expanded size**: a node counts 1 plus the expanded sizes of its children,
  an alias counts the expanded size of its anchor. A document whose expansion
  exceeds ``max_nodes`` (default 10,000; a full run config is about 60) is
  refused as soon as the first node crosses the bound: a billion-laughs
  document fails after composing a few hundred nodes.
- **Depth**: nesting deeper than ``max_depth`` (default 64; a config is at most
  5 deep) is refused before the composer's recursion could overflow.
- **Recursive aliases** (an alias inside its own anchor, ``&a [*a]``) are
  refused: the expansion is infinite.

Aliases themselves stay allowed (``aliases=True``): anchors are a fair way to
reuse an augmentation step in a config, and with the expansion bounded they
are harmless. ``aliases=False`` refuses any alias, for inputs that never need
one (a ``--set key=value`` value).

Every problem, YAML syntax included, is a :class:`~pipeline.errors.ConfigError`
naming the source and, where known, the line and column. Without aliases the
result equals ``yaml.safe_load`` (the same ``SafeLoader`` builds it); with
aliases too, only shared where ``safe_load`` shares.
"""

from __future__ import annotations

from typing import Any

import yaml

from pipeline.errors import ConfigError, InvalidArgumentError

__all__ = ["MAX_DEPTH", "MAX_NODES", "load_yaml"]

MAX_NODES: int = 10_000
"""Default bound on the expanded node count of one document (scalars and collections)."""

MAX_DEPTH: int = 64
"""Default bound on the nesting depth of one document."""


class _Refused(yaml.MarkedYAMLError):
    """A document beyond the loader's bounds (a YAMLError, so PyYAML cleans up as for one)."""


class _BoundedLoader(yaml.SafeLoader):
    """``SafeLoader`` that sizes every composed node's expansion and refuses past the bounds."""

    def __init__(self, stream: str, *, max_nodes: int, max_depth: int, aliases: bool) -> None:
        super().__init__(stream)
        self._max_nodes = max_nodes
        self._max_depth = max_depth
        self._aliases = aliases
        self._depth = 0
        self._sizes: dict[int, int] = {}  # id(node) -> expanded size, for completed nodes
        self._keep: list[yaml.Node] = []  # keeps the sized nodes alive, so their ids stay theirs

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            if not self._aliases:
                raise _Refused(None, None, "aliases are not allowed here", mark)
            node = super().compose_node(parent, index)
            if id(node) not in self._sizes:
                raise _Refused(None, None, "recursive alias: its expansion is infinite", mark)
            return node
        self._depth += 1
        if self._depth > self._max_depth:
            raise _Refused(
                None,
                None,
                f"nested deeper than {self._max_depth} levels",
                self.peek_event().start_mark,
            )
        node = super().compose_node(parent, index)
        self._depth -= 1
        if node is None:  # not reached: PyYAML composes a node or raises
            return None
        size = 1
        if isinstance(node, yaml.SequenceNode):
            size += sum(self._sizes[id(child)] for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            size += sum(self._sizes[id(k)] + self._sizes[id(v)] for k, v in node.value)
        if size > self._max_nodes:
            raise _Refused(
                None,
                None,
                f"the document expands to more than {self._max_nodes} values "
                "(aliases repeat their anchor's whole content)",
                node.start_mark,
            )
        self._sizes[id(node)] = size
        self._keep.append(node)
        return node


def _check_bound(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(f"{name} must be a positive int, got {value!r}")


def load_yaml(
    text: str,
    *,
    source: str,
    max_nodes: int = MAX_NODES,
    max_depth: int = MAX_DEPTH,
    aliases: bool = True,
) -> Any:
    r"""Parse one YAML document like ``yaml.safe_load``, within bounds; errors as ConfigError.

    Args:
        text: the YAML text.
        source: what to name in errors (the config file, or ``--set ...``).
        max_nodes: bound on the expanded node count (see the module docstring).
        max_depth: bound on the nesting depth.
        aliases: allow aliases (bounded); ``False`` refuses any alias.

    Returns:
        The data (``None`` for an empty document).

    Raises:
        ConfigError: the text is not one valid YAML document, exceeds a bound,
            or holds a value Python cannot build (an integer of more than
            4300 digits, a date out of range); the message starts with
            ``invalid config {source}:``.
        InvalidArgumentError: a bound is not a positive int.

    Example:
        >>> load_yaml("a: &x [1, 2]\nb: *x\n", source="run.yaml")
        {'a': [1, 2], 'b': [1, 2]}
        >>> bomb = "a: &a [x, x]\n" + "".join(
        ...     f"{n}: &{n} [*{p}, *{p}, *{p}, *{p}]\n" for p, n in zip("abcdefgh", "bcdefghi")
        ... )
        >>> load_yaml(bomb, source="bomb.yaml")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        pipeline.errors.ConfigError: invalid config bomb.yaml: refused at line 7, column 4: ...
    """
    _check_bound("max_nodes", max_nodes)
    _check_bound("max_depth", max_depth)
    loader: _BoundedLoader | None = None
    try:  # the reader checks the characters as the loader is made: inside the try
        loader = _BoundedLoader(text, max_nodes=max_nodes, max_depth=max_depth, aliases=aliases)
        return loader.get_single_data()
    except _Refused as exc:
        raise ConfigError(f"invalid config {source}: refused{_where(exc)}: {exc.problem}") from None
    except yaml.reader.ReaderError as exc:
        character = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise ConfigError(
            f"invalid config {source}: not valid YAML at character {exc.position}: "
            f"{exc.reason} (#x{character:04x})"
        ) from None
    except yaml.YAMLError as exc:
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        where = _where(exc)
        raise ConfigError(f"invalid config {source}: not valid YAML{where}: {problem}") from None
    except (ValueError, OverflowError, RecursionError, AttributeError, TypeError) as exc:
        # a scalar the constructor cannot turn into a value, e.g. int("9" * 5000), or a
        # timestamp PyYAML's resolver accepts but its constructor cannot parse
        raise ConfigError(f"invalid config {source}: cannot read a value: {exc}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _where(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    if mark is None:
        return ""
    return f" at line {mark.line + 1}, column {mark.column + 1}"
