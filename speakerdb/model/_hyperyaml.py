"""A safe reader for HyperPyYAML files (SpeechBrain's ``hyperparams.yaml``).

HyperPyYAML extends YAML with tags that *run code* while the file is read: ``!new:`` builds
any Python object, ``!apply:`` calls any function, ``!name:`` imports any name. A model folder
comes from outside, so this reader never does any of that. It parses the file with PyYAML's
safe loader and turns every HyperPyYAML tag into an inert :class:`Tagged` record (the dotted
target name and its arguments, as plain data). The caller then reads the values it needs and
compares class names with the short list it implements; nothing is imported, instantiated or
called. Python-specific YAML tags (``!!python/object`` ...) are refused while parsing.

``!ref <key>`` references are resolved on demand by :func:`resolve`: a lone reference yields
the referenced value, a string with references yields the interpolated string, and numeric
references joined by arithmetic operators are evaluated by a tiny whitelisted evaluator (no
``eval``).
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from speakerdb.errors import ModelError

__all__ = ["MAX_EXPANDED", "MAX_YAML_BYTES", "Resolver", "Tagged", "load_hyperyaml", "resolve"]

MAX_YAML_BYTES = 1 << 20
"""Largest hyperparams file read (1 MiB; SpeechBrain's own are a few kB)."""

_MAX_DEPTH = 64

# HyperPyYAML's tags. The ones ending in ':' carry a dotted Python name after the colon.
_PREFIX_TAGS = ("!new:", "!name:", "!apply:", "!applyref:", "!module:", "!include:")
_PLAIN_TAGS = ("!ref", "!copy", "!tuple", "!PLACEHOLDER")


@dataclass(frozen=True)
class Tagged:
    """One HyperPyYAML-tagged node, kept as data.

    kind: the tag without '!' and ':' ("new", "name", "apply", "ref", "tuple", ...);
    target: the dotted name after the colon ("speechbrain.lobes.features.Fbank"), "" for the
    plain tags; value: the node's content (a dict of keyword arguments, a list of positional
    ones, or a scalar such as the text of a reference).
    """

    kind: str
    target: str
    value: Any

    def describe(self) -> str:
        """How the node is written in the file, for error messages."""
        return f"!{self.kind}:{self.target}" if self.target else f"!{self.kind} {self.value!r}"


def _import_yaml() -> Any:
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover - PyYAML is a dependency
        raise ModelError("reading hyperparams.yaml needs PyYAML (pip install pyyaml)") from exc
    return yaml


def _make_loader() -> type:
    yaml = _import_yaml()
    # The pure-Python loader: the C one composes nodes without calling compose_node, so
    # aliases could not be refused (hyperparams files are a few kB: speed does not matter).
    base = yaml.SafeLoader

    class _Loader(base):  # type: ignore[misc, valid-type]
        """SafeLoader + inert HyperPyYAML tags; YAML aliases refused (no expansion bombs)."""

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise ModelError(
                    f"YAML alias *{event.anchor} at line {event.start_mark.line + 1} is not "
                    "supported in hyperparams.yaml"
                )
            return super().compose_node(parent, index)

    def construct_any(loader: Any, node: Any) -> Any:
        if isinstance(node, yaml.MappingNode):
            return loader.construct_mapping(node, deep=True)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node, deep=True)
        return loader.construct_scalar(node)

    def prefixed(kind: str) -> Callable[[Any, str, Any], Tagged]:
        def construct(loader: Any, suffix: str, node: Any) -> Tagged:
            return Tagged(kind, suffix, construct_any(loader, node))

        return construct

    def plain(kind: str) -> Callable[[Any, Any], Tagged]:
        def construct(loader: Any, node: Any) -> Tagged:
            return Tagged(kind, "", construct_any(loader, node))

        return construct

    for tag in _PREFIX_TAGS:
        _Loader.add_multi_constructor(tag, prefixed(tag[1:-1]))
    for tag in _PLAIN_TAGS:
        _Loader.add_constructor(tag, plain(tag[1:]))
    return _Loader


_LOADER: type | None = None


def load_hyperyaml(data: bytes, source: str) -> dict[str, Any]:
    """Parse HyperPyYAML ``data`` (the bytes of ``source``, named in errors) into plain data.

    Returns the top-level mapping: str keys -> scalars, lists, dicts and :class:`Tagged`.
    Raises ModelError for a file over :data:`MAX_YAML_BYTES`, malformed YAML, any tag
    outside YAML's safe set and HyperPyYAML's (``!!python/object`` ...), aliases, or a
    top level that is not a mapping.
    """
    global _LOADER
    if len(data) > MAX_YAML_BYTES:
        raise ModelError(f"{source}: {len(data)} bytes is over the {MAX_YAML_BYTES}-byte limit")
    yaml = _import_yaml()
    if _LOADER is None:
        _LOADER = _make_loader()
    try:
        text = data.decode("utf-8")
        tree = yaml.load(text, Loader=_LOADER)
    except UnicodeDecodeError:
        raise ModelError(f"{source}: not UTF-8 text") from None
    except yaml.constructor.ConstructorError as exc:
        tag = getattr(exc, "problem", "") or str(exc)
        line = exc.problem_mark.line + 1 if exc.problem_mark else 0
        raise ModelError(f"{source}: refused YAML tag at line {line} ({tag})") from None
    except yaml.YAMLError as exc:
        raise ModelError(f"{source}: malformed YAML ({_yaml_reason(exc)})") from None
    except RecursionError:
        raise ModelError(f"{source}: YAML nested too deeply") from None
    if not isinstance(tree, dict) or not all(isinstance(k, str) for k in tree):
        raise ModelError(f"{source}: the top level is not a mapping of names to values")
    return tree


def _yaml_reason(exc: Exception) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or type(exc).__name__
    return f"{problem} at line {mark.line + 1}" if mark is not None else str(problem)


_REF = re.compile(r"<([^<>]+)>")

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}

MAX_EXPANDED = 100_000
"""Most values one resolved entry may expand to, counting each scalar, list, mapping and tag
as one and each character of a string as one. SpeechBrain's own files resolve to a few
hundred; a file whose references fan out (ten references to a value holding ten references
to ...) would expand exponentially and is refused instead."""

MAX_INTEGER_BITS = 64
"""Largest integer an arithmetic reference may produce (``<a> * <a> * ...`` chains would
otherwise grow numbers past any memory)."""


class Resolver:
    """Resolves ``!ref`` / ``!copy`` references of one file, each top-level entry once.

    Entries are memoised with their expanded size, so a file whose references fan out costs
    time linear in its length; an entry expanding past :data:`MAX_EXPANDED` is refused.
    Resolved values may share sub-objects (a value referenced twice is the same object):
    they are read, never modified.
    """

    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root
        self._done: dict[str, tuple[Any, int]] = {}
        self._active: list[str] = []

    def resolve(self, value: Any, field: str) -> Any:
        """``value`` with every reference inside it replaced by what it points at.

        field: the dotted name of the value, used in errors. Other tags are returned as
        :class:`Tagged` with resolved contents. Raises ModelError for unknown keys, cycles,
        expansions past :data:`MAX_EXPANDED` and unsupported expressions."""
        return self._resolve(value, field, 0)[0]

    def _resolve(self, value: Any, field: str, depth: int) -> tuple[Any, int]:
        """(resolved value, its expanded size)."""
        if depth > _MAX_DEPTH:
            raise ModelError(f"hyperparams.yaml: {field}: values and references nested too deeply")
        out: Any
        if isinstance(value, Tagged):
            if value.kind in ("ref", "copy"):
                return self._reference(str(value.value), field, depth + 1)
            inner, size = self._resolve(value.value, field, depth + 1)
            out = tuple(inner) if value.kind == "tuple" and isinstance(inner, list) else inner
            if value.kind != "tuple":
                out = Tagged(value.kind, value.target, inner)
        elif isinstance(value, dict):
            out, size = {}, 0
            for k, v in value.items():
                out[k], part = self._resolve(v, f"{field}.{k}", depth + 1)
                size = self._grow(size, part + len(str(k)), field)
        elif isinstance(value, list):
            out, size = [], 0
            for i, v in enumerate(value):
                item, part = self._resolve(v, f"{field}[{i}]", depth + 1)
                out.append(item)
                size = self._grow(size, part, field)
        else:
            out, size = value, len(value) if isinstance(value, str) else 0
        return out, self._grow(size, 1, field)

    @staticmethod
    def _grow(size: int, more: int, field: str) -> int:
        size += more
        if size > MAX_EXPANDED:
            raise ModelError(
                f"hyperparams.yaml: {field}: references expand to over {MAX_EXPANDED} values "
                "(references fanning out?)"
            )
        return size

    def _entry(self, key: str, depth: int) -> tuple[Any, int]:
        """A top-level entry, resolved once (``depth``: the nesting of values and references
        that led here, bounded as a whole so that Python's recursion limit is never met)."""
        if key in self._done:
            return self._done[key]
        if key in self._active:
            chain = " -> ".join(f"<{k}>" for k in [*self._active[self._active.index(key) :], key])
            raise ModelError(f"hyperparams.yaml: references form a cycle: {chain}"[:300])
        self._active.append(key)
        try:
            self._done[key] = self._resolve(self.root[key], key, depth + 1)
        finally:
            self._active.pop()
        return self._done[key]

    def _lookup(self, key: str, field: str, depth: int) -> tuple[Any, int]:
        # <a[b][c]> indexes into nested mappings, as HyperPyYAML allows.
        parts = re.findall(r"[^\[\]]+", key)
        if not parts:
            raise ModelError(f"hyperparams.yaml: {field}: empty reference <{key}>")
        if parts[0] not in self.root:
            raise ModelError(f"hyperparams.yaml: {field}: reference <{key}> names no value")
        node, size = self._entry(parts[0], depth)
        for part in parts[1:]:
            if not isinstance(node, Mapping) or part not in node:
                raise ModelError(f"hyperparams.yaml: {field}: reference <{key}> names no value")
            node = node[part]
        return node, size  # an indexed part is no bigger than its entry

    def _reference(self, text: str, field: str, depth: int) -> tuple[Any, int]:
        whole = _REF.fullmatch(text.strip())
        if whole:
            return self._lookup(whole.group(1), field, depth)
        values: dict[str, Any] = {}
        size = len(text)

        def substitute(match: re.Match[str]) -> str:
            nonlocal size
            name = f"_ref{len(values)}"
            values[name], part = self._lookup(match.group(1), field, depth)
            size = self._grow(size, part, field)
            return name

        expression = _REF.sub(substitute, text)
        if not values:
            raise ModelError(f"hyperparams.yaml: {field}: reference {text!r} names no <key>")
        if all(_is_number(v) for v in values.values()):
            try:
                number = _arithmetic(ast.parse(expression.strip(), mode="eval").body, values)
                return number, 1
            except (SyntaxError, _NotArithmetic, ZeroDivisionError):
                pass
        if all(
            isinstance(v, str | int | float) and not isinstance(v, bool) for v in values.values()
        ):
            parts = iter(values.values())
            return _REF.sub(lambda m: str(next(parts)), text), size
        raise ModelError(f"hyperparams.yaml: {field}: unsupported reference expression {text!r}")


def resolve(value: Any, root: Mapping[str, Any], field: str) -> Any:
    """``value`` with every ``!ref`` / ``!copy`` inside it replaced by what it points at,
    looked up in ``root`` (one :class:`Resolver`; use one for several values of a file)."""
    return Resolver(root).resolve(value, field)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class _NotArithmetic(Exception):
    pass


def _arithmetic(node: ast.AST, names: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant) and _is_number(node.value):
        return _bounded(node.value)
    if isinstance(node, ast.Name) and node.id in names:
        return _bounded(names[node.id])
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        operand = _arithmetic(node.operand, names)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _arithmetic(node.left, names), _arithmetic(node.right, names)
        return _bounded(_BINARY[type(node.op)](left, right))
    raise _NotArithmetic


def _bounded(number: Any) -> Any:
    if isinstance(number, int) and number.bit_length() > MAX_INTEGER_BITS:
        raise ModelError(
            "hyperparams.yaml: an arithmetic reference gives an integer over "
            f"{MAX_INTEGER_BITS} bits"
        )
    return number
