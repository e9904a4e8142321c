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

__all__ = ["MAX_YAML_BYTES", "Tagged", "load_hyperyaml", "resolve"]

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


def resolve(value: Any, root: Mapping[str, Any], field: str, _depth: int = 0) -> Any:
    """``value`` with every ``!ref`` / ``!copy`` inside it replaced by what it points at.

    root: the top-level mapping references are looked up in; field: the dotted name of the
    value, used in errors. Other tags are returned as :class:`Tagged` with resolved contents.
    Raises ModelError for unknown keys, reference cycles or unsupported expressions.
    """
    if _depth > _MAX_DEPTH:
        raise ModelError(f"hyperparams.yaml: {field}: references nested too deeply (a cycle?)")
    if isinstance(value, Tagged):
        if value.kind in ("ref", "copy"):
            return _resolve_reference(str(value.value), root, field, _depth + 1)
        if value.kind == "tuple":
            return tuple(resolve(v, root, field, _depth + 1) for v in value.value)
        return Tagged(value.kind, value.target, resolve(value.value, root, field, _depth + 1))
    if isinstance(value, dict):
        return {k: resolve(v, root, f"{field}.{k}", _depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, root, f"{field}[{i}]", _depth + 1) for i, v in enumerate(value)]
    return value


def _lookup(key: str, root: Mapping[str, Any], field: str, depth: int) -> Any:
    # <a[b][c]> indexes into nested mappings, as HyperPyYAML allows.
    parts = re.findall(r"[^\[\]]+", key)
    if not parts:
        raise ModelError(f"hyperparams.yaml: {field}: empty reference <{key}>")
    node: Any = root
    for i, part in enumerate(parts):
        if not isinstance(node, Mapping) or part not in node:
            raise ModelError(f"hyperparams.yaml: {field}: reference <{key}> names no value")
        node = node[part]
        if i == 0:
            node = resolve(node, root, parts[0], depth + 1)
    return resolve(node, root, key, depth + 1)


def _resolve_reference(text: str, root: Mapping[str, Any], field: str, depth: int) -> Any:
    whole = _REF.fullmatch(text.strip())
    if whole:
        return _lookup(whole.group(1), root, field, depth)
    values: dict[str, Any] = {}

    def substitute(match: re.Match[str]) -> str:
        name = f"_ref{len(values)}"
        values[name] = _lookup(match.group(1), root, field, depth)
        return name

    expression = _REF.sub(substitute, text)
    if not values:
        raise ModelError(f"hyperparams.yaml: {field}: reference {text!r} names no <key>")
    if values and all(_is_number(v) for v in values.values()):
        try:
            return _arithmetic(ast.parse(expression.strip(), mode="eval").body, values)
        except (SyntaxError, _NotArithmetic, ZeroDivisionError):
            pass
    if all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in values.values()):
        return _REF.sub(lambda m: str(_lookup(m.group(1), root, field, depth)), text)
    raise ModelError(f"hyperparams.yaml: {field}: unsupported reference expression {text!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class _NotArithmetic(Exception):
    pass


def _arithmetic(node: ast.AST, names: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant) and _is_number(node.value):
        return node.value
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        operand = _arithmetic(node.operand, names)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _BINARY[type(node.op)](_arithmetic(node.left, names), _arithmetic(node.right, names))
    raise _NotArithmetic
