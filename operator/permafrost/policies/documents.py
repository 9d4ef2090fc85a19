"""Reading YAML/JSON manifests safely: multi-document, bounded, with errors that say where.

Used by ``permafrost check`` on inputs from CI pipelines, which may be malformed or hostile:
a YAML "billion laughs" bomb, absurd nesting or a huge file is refused with a clear
:class:`InputError` instead of exhausting memory. Pure: it parses text it is given.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import yaml

MAX_BYTES = 10 * 1024 * 1024
MAX_ALIASES = 100
MAX_DEPTH = 100
MAX_NODES = 1_000_000


class InputError(ValueError):
    """Unusable input; the message names the source and, where known, the document."""


@dataclasses.dataclass(frozen=True)
class Document:
    source: str
    index: int  # 1-based position in its file
    body: Mapping[str, Any]

    @property
    def where(self) -> str:
        return f"{self.source}#{self.index}"

    @property
    def kind(self) -> str:
        return str(self.body.get("kind") or "")

    @property
    def name(self) -> str:
        return str((self.body.get("metadata") or {}).get("name") or "")


class _BoundedLoader(yaml.SafeLoader):
    """A safe loader that refuses alias bombs and pathological nesting."""

    aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise InputError(f"more than {MAX_ALIASES} YAML aliases (a YAML bomb?)")
        return super().compose_node(parent, index)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _expanded_size(root: yaml.Node) -> int:
    """How many nodes a YAML node graph has once every alias is expanded (memoized, so an
    alias bomb is measured in microseconds instead of being built)."""
    sizes: dict[int, int] = {}
    # NB: iterative post-order: a node is summed once all its children are. Aliases make a DAG
    # (a node shared by several parents is measured once); PyYAML refuses recursive ones.
    todo: list[tuple[yaml.Node, bool]] = [(root, False)]
    while todo:
        node, children_done = todo.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if children_done:
            total = 1 + sum(sizes[id(n)] for n in children)
            sizes[id(node)] = min(total, MAX_NODES + 1)
        else:
            todo.append((node, True))
            todo.extend((n, False) for n in children if id(n) not in sizes)
    return sizes[id(root)]


def _depth(value: Any) -> int:
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, depth = todo.pop()
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            return deepest
        if isinstance(item, Mapping):
            todo.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            todo.extend((v, depth + 1) for v in item)
    return deepest


def _each_node(
    text: str | bytes, *, source: str, use: Callable[[int, yaml.Node, _BoundedLoader], None]
) -> None:
    """Call ``use(index, node, loader)`` for every non-empty document of ``text`` (``index``
    1-based), within the bounds; any failure, ``use``'s included, is an :class:`InputError`
    naming ``source``."""
    if len(text) > MAX_BYTES:
        raise InputError(f"{source}: larger than {MAX_BYTES // (1024 * 1024)} MiB")
    try:
        # NB: the reader checks the characters as it is built: a control character is invalid
        # YAML, reported like any other.
        loader = _BoundedLoader(text)
    except yaml.YAMLError as exc:
        raise InputError(f"{source}: not valid YAML: {exc}") from None
    try:
        index = 0
        while loader.check_node():
            index += 1
            node = loader.get_node()
            if node is None:
                continue
            if _expanded_size(node) > MAX_NODES:
                raise InputError(
                    f"{source}#{index}: expands to more than {MAX_NODES} YAML nodes (a YAML bomb?)"
                )
            use(index, node, loader)
    except InputError as exc:
        if str(exc).startswith(source):
            raise
        raise InputError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{source}: not valid YAML: {exc}") from None
    except RecursionError:
        raise InputError(f"{source}: nested too deeply") from None
    finally:
        loader.dispose()


def load_all(text: str | bytes, *, source: str) -> list[Document]:
    """Every non-empty document of a YAML (or JSON) stream, each a mapping.

    Raises :class:`InputError` for oversized input, invalid YAML, alias bombs, nesting deeper
    than ``MAX_DEPTH``, or a document that is not a mapping.
    """
    documents: list[Document] = []

    def construct(index: int, node: yaml.Node, loader: _BoundedLoader) -> None:
        try:
            body = loader.construct_document(node)
        except RecursionError:
            raise InputError(f"{source}#{index}: nested too deeply") from None
        if body is None:
            return
        if not isinstance(body, Mapping):
            raise InputError(
                f"{source}#{index}: a document must be a mapping, not {type(body).__name__}"
            )
        if _depth(body) > MAX_DEPTH:
            raise InputError(f"{source}#{index}: nested deeper than {MAX_DEPTH} levels")
        documents.append(Document(source=source, index=index, body=body))

    _each_node(text, source=source, use=construct)
    return documents


def compose_all(text: str, *, source: str) -> list[yaml.Node]:
    """The node trees of every non-empty document, with their positions in ``text``: for
    tools that edit a manifest's text in place (``permafrost pin``) rather than re-dump it.

    The same bounds as :func:`load_all`; raises :class:`InputError`.
    """
    nodes: list[yaml.Node] = []
    _each_node(text, source=source, use=lambda _, node, __: nodes.append(node))
    return nodes
