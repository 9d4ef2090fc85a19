"""Reading YAML/JSON manifests safely: multi-document, bounded, with errors that say where.

Used by ``permafrost check`` on inputs from CI pipelines, which may be malformed or hostile:
a YAML "billion laughs" bomb, absurd nesting or a huge file is refused with a clear
:class:`InputError` instead of exhausting memory. Pure: it parses text it is given.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
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


def _expanded_size(root: yaml.Node) -> int:
    """How many nodes a YAML node graph has once every alias is expanded (memoized, so an
    alias bomb is measured in microseconds instead of being built)."""
    sizes: dict[int, int] = {}
    order: list[yaml.Node] = []
    todo, seen = [root], set()
    while todo:  # NB: iterative post-order; aliases make a DAG, cycles are refused by PyYAML
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        order.append(node)
        if isinstance(node, yaml.SequenceNode):
            todo.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            todo.extend(n for pair in node.value for n in pair)
    for node in reversed(order):
        if isinstance(node, yaml.SequenceNode):
            total = 1 + sum(sizes[id(n)] for n in node.value)
        elif isinstance(node, yaml.MappingNode):
            total = 1 + sum(sizes[id(n)] for pair in node.value for n in pair)
        else:
            total = 1
        sizes[id(node)] = min(total, MAX_NODES + 1)
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


def load_all(text: str | bytes, *, source: str) -> list[Document]:
    """Every non-empty document of a YAML (or JSON) stream, each a mapping.

    Raises :class:`InputError` for oversized input, invalid YAML, alias bombs, nesting deeper
    than ``MAX_DEPTH``, or a document that is not a mapping.
    """
    if len(text) > MAX_BYTES:
        raise InputError(f"{source}: larger than {MAX_BYTES // (1024 * 1024)} MiB")
    try:
        # NB: the reader checks the characters as it is built: a control character is invalid
        # YAML, reported like any other.
        loader = _BoundedLoader(text)
    except yaml.YAMLError as exc:
        raise InputError(f"{source}: not valid YAML: {exc}") from None
    documents: list[Document] = []
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
            try:
                body = loader.construct_document(node)
            except RecursionError:
                raise InputError(f"{source}#{index}: nested too deeply") from None
            if body is None:
                continue
            if not isinstance(body, Mapping):
                raise InputError(
                    f"{source}#{index}: a document must be a mapping, not {type(body).__name__}"
                )
            if _depth(body) > MAX_DEPTH:
                raise InputError(f"{source}#{index}: nested deeper than {MAX_DEPTH} levels")
            documents.append(Document(source=source, index=index, body=body))
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
    return documents
