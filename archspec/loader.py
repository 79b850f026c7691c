"""Loading spec YAML with file and line in every error; ``extends``; ``--set`` overrides; dumping.

``read_yaml`` keeps the line of every mapping key and sequence item (from the YAML node marks), so a
pydantic ``ValidationError`` becomes a ``SpecError`` naming file, line and dotted field path with a
human message::

    specs/x.yaml:12 blocks.M.d_state: must be at most 256, got 512

Plain scalars follow YAML 1.1 as PyYAML reads them, except that floats need no dot (``1e-5`` is a float).

``extends: base.yaml`` (relative to the extending file) loads the base first, then deep-merges the child
into it: mappings merge key by key with the child winning; lists, scalars and the whole ``layout`` are
replaced; a mapping whose ``type`` or ``task`` differs from the base's replaces it too (a block redefined as
another kind keeps none of the old fields). Chains are followed and cycles reported. Errors point at the file
where the bad value was written.

Overrides ``"a.b.c=value"`` apply after ``extends``: the path is dotted (list items by index, ``layout.0`` or
``layout[0]``), the value is parsed as YAML (``[M, A]``, ``{type: mlp}``, ``1e-3``). Paths are checked
against the schema; errors name the override (``override 'd_modle=1': unknown field 'd_modle', ...``).
"""

from __future__ import annotations

import os
import re
import types
from collections.abc import Sequence
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from archspec.errors import FieldError, SpecError, did_you_mean
from archspec.spec import ModelSpec

__all__ = [
    "Linemap",
    "apply_overrides",
    "dump_spec",
    "load_spec",
    "load_yaml_tree",
    "parse_yaml",
    "read_yaml",
    "spec_from_dict",
    "validate_model",
]

Path = tuple[Union[str, int], ...]
Linemap = dict[Path, Union[int, tuple[str, Union[int, None]]]]
"""Field path -> line (1-based) in the file being validated, or -> (source, line) when values come from
several files or overrides (line None: no line, e.g. an override)."""

M = TypeVar("M", bound=BaseModel)


# ---------------------------------------------------------------- YAML with line numbers


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads floats written without a dot (``1e-5``, ``3E4``) as floats."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_yaml(path: str | os.PathLike[str]) -> tuple[Any, dict[Path, int]]:
    """Read a YAML file: (data, linemap) with linemap[field path] = 1-based line of that key or item.

    The root has path ``()``. Raises SpecError for a missing file, text that is not UTF-8 (the line of the first bad
    byte), a syntax error (line and column) or a duplicate key.
    """
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise SpecError("file not found", source=source) from None
    except OSError as err:
        raise SpecError(f"cannot read file: {err.strerror}", source=source) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SpecError(f"not UTF-8 text (byte 0x{raw[err.start]:02x})", source=source,
                        line=raw.count(b"\n", 0, err.start) + 1, hint="save the file as UTF-8") from None
    return parse_yaml(text, source)


def parse_yaml(text: str, source: str = "<string>") -> tuple[Any, dict[Path, int]]:
    """Parse YAML text like ``read_yaml``; ``source`` names it in errors. An empty document is None."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        linemap: dict[Path, int] = {(): node.start_mark.line + 1}
        return _construct(loader, node, (), linemap, source), linemap
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        problem = err.problem or err.context or "invalid YAML"
        line = mark.line + 1 if mark else None
        column = f" at column {mark.column + 1}" if mark else ""
        raise SpecError(f"YAML syntax error{column}: {problem}", source=source, line=line) from None
    except yaml.YAMLError as err:
        raise SpecError(f"YAML error: {err}", source=source) from None
    finally:
        loader.dispose()


def _construct(loader: _Loader, node: yaml.Node, path: Path, linemap: dict[Path, int], source: str) -> Any:
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # YAML merge keys (<<)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise SpecError(f"mapping keys must be plain scalars, got {key!r}", source=source, line=line)
            if key in out:
                where = _dotted((*path, key))
                raise SpecError(
                    f"duplicate key {key!r} (first at line {linemap[(*path, key)]})",
                    source=source,
                    line=line,
                    field=where,
                )
            linemap[(*path, key)] = line
            out[key] = _construct(loader, value_node, (*path, key), linemap, source)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            linemap[(*path, i)] = item.start_mark.line + 1
            items.append(_construct(loader, item, (*path, i), linemap, source))
        return items
    return loader.construct_object(node, deep=True)


# ---------------------------------------------------------------- extends


def load_yaml_tree(path: str | os.PathLike[str]) -> tuple[dict[str, Any], Linemap]:
    """Read a spec file and resolve its ``extends`` chain: (merged mapping, linemap of (source, line))."""
    return _load_tree(os.path.normpath(os.fspath(path)), ())


def _load_tree(source: str, chain: tuple[str, ...]) -> tuple[dict[str, Any], Linemap]:
    """``chain``: the files extending this one, outermost first (to report cycles)."""
    data, lines = read_yaml(source)
    if not isinstance(data, dict):
        raise SpecError(f"the top level must be a mapping of fields, got {_kind(data)}", source=source, line=1)
    locs: Linemap = {p: (source, line) for p, line in lines.items()}
    if "extends" not in data:
        return data, locs
    parent = data.pop("extends")
    line = lines[("extends",)]
    del locs[("extends",)]
    if not isinstance(parent, str) or not parent:
        raise SpecError(f"must be a file path, got {_show(parent)}", source=source, line=line, field="extends")
    base_source = os.path.normpath(os.path.join(os.path.dirname(source), parent))
    seen = [os.path.realpath(p) for p in (*chain, source)]
    if os.path.realpath(base_source) in seen:
        cycle = [*chain, source][seen.index(os.path.realpath(base_source)):]
        raise SpecError(f"cycle {' -> '.join([*cycle, base_source])}", source=source, line=line, field="extends")
    if not os.path.isfile(base_source):
        raise SpecError(f"file not found: {base_source}", source=source, line=line, field="extends")
    base, base_locs = _load_tree(base_source, (*chain, source))
    merged = _merge(base, data, ())
    out: Linemap = {p: loc for p, loc in base_locs.items() if p not in locs and _exists(merged, p)}
    out.update(locs)
    return merged, out


def _merge(base: Any, child: Any, path: Path) -> Any:
    if not (isinstance(base, dict) and isinstance(child, dict)) or path == ("layout",):
        return child
    if any(key in base and key in child and base[key] != child[key] for key in ("type", "task")):
        return child
    out = dict(base)
    for key, value in child.items():
        out[key] = _merge(base[key], value, (*path, key)) if key in base else value
    return out


def _exists(data: Any, path: Path) -> bool:
    for part in path:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            return False
    return True


# ---------------------------------------------------------------- overrides


def apply_overrides(
    data: dict[str, Any], overrides: Sequence[str], locs: Linemap | None = None, model_cls: type[BaseModel] = ModelSpec
) -> dict[str, Any]:
    """Apply ``"a.b=value"`` overrides to ``data`` in place (and return it); paths checked against ``model_cls``.

    When ``locs`` is given, the overridden paths are re-pointed at the override (source ``"override 'a.b=v'"``,
    no line) so that validation errors name it. Raises SpecError naming the override for a bad path or value.
    """
    for text in overrides:
        label = f"override {text!r}"
        if "=" not in text:
            raise SpecError("expected PATH=VALUE, e.g. blocks.M.d_state=64", source=label)
        raw_path, raw_value = text.split("=", 1)
        path = _override_path(raw_path.strip(), label)
        try:
            value, _ = parse_yaml(raw_value, label)
        except SpecError as err:
            raise SpecError(f"cannot parse the value: {err.message}", source=label) from None
        parent = _walk_to_parent(data, path, model_cls, label)
        parent[path[-1]] = value
        if locs is not None:
            for p in [p for p in locs if p[: len(path)] == path]:
                del locs[p]
            locs[path] = (label, None)
    return data


def _override_path(text: str, label: str) -> Path:
    if not text:
        raise SpecError("empty path", source=label)
    parts: list[str | int] = []
    for piece in re.sub(r"\[(\d+)\]", r".\1", text).split("."):
        if not piece:
            raise SpecError(f"malformed path {text!r}", source=label)
        parts.append(int(piece) if piece.isdigit() else piece)
    return tuple(parts)


def _walk_to_parent(data: dict[str, Any], path: Path, model_cls: type[BaseModel], label: str) -> Any:
    """The container that holds ``path[-1]``, creating absent model sections on the way."""
    node: Any = data
    ann: Any = model_cls
    for depth, part in enumerate(path):
        here = _dotted(path[:depth]) or "the top level"
        last = depth == len(path) - 1
        concrete = _concrete(ann, node)
        if _is_model(concrete):
            if part not in concrete.model_fields:
                hint = did_you_mean(str(part), concrete.model_fields)
                where = "" if depth == 0 else f" in {here}"
                raise SpecError(f"unknown field {str(part)!r}{where}", source=label, hint=hint)
            child_ann = concrete.model_fields[part].annotation
        elif get_origin(concrete) is dict:
            if part not in node and not last:
                hint = did_you_mean(str(part), node) if node else None
                raise SpecError(f"{here} has no entry {str(part)!r}", source=label, hint=hint)
            child_ann = get_args(concrete)[1]
        elif get_origin(concrete) in (list, tuple):
            if not isinstance(node, list) or not isinstance(part, int) or not 0 <= part < len(node):
                size = len(node) if isinstance(node, list) else 0
                raise SpecError(f"{here} has {size} items; no item {part!r}", source=label)
            args = get_args(concrete)
            child_ann = args[0] if get_origin(concrete) is list or args[-1] is Ellipsis else args[part]
        elif concrete is None:
            raise SpecError(f"cannot tell which kind of section {here} is; set the whole mapping", source=label)
        else:
            raise SpecError(f"{here} is {_kind(node)}; it has no entry {str(part)!r}", source=label)
        if last:
            return node
        child = node[part] if _exists(node, (part,)) else None
        if child is None:
            if not (isinstance(node, dict) and _is_model(_concrete(child_ann, {}))):
                raise SpecError(f"{_dotted(path[: depth + 1])} is not set; set the whole mapping", source=label)
            child = node[part] = {}
        node, ann = child, child_ann
    raise AssertionError("unreachable: path is never empty")


# ---------------------------------------------------------------- schema walking


def _is_model(ann: Any) -> bool:
    return isinstance(ann, type) and issubclass(ann, BaseModel)


def _concrete(ann: Any, value: Any) -> Any:
    """Strip Annotated and pick the union member that ``value`` selects; None when it cannot be told."""
    while True:
        origin = get_origin(ann)
        if origin is Annotated:
            ann = get_args(ann)[0]
        elif origin in (Union, types.UnionType):
            members = [m for m in get_args(ann) if m is not type(None)]
            ann = _choose(members, value)
            if ann is None:
                return None
        else:
            return ann


def _choose(members: list[Any], value: Any) -> Any:
    if len(members) == 1:
        return members[0]
    plain = [_concrete(m, value) for m in members]
    if isinstance(value, dict):
        models = [m for m in plain if _is_model(m)]
        for model in models:
            for name, field in model.model_fields.items():
                if get_origin(field.annotation) is Literal and value.get(name) in get_args(field.annotation):
                    return model
        candidates = models + [m for m in plain if get_origin(m) is dict]
        return candidates[0] if len(candidates) == 1 else None
    if isinstance(value, list):
        lists = [m for m in plain if get_origin(m) is list]
        return lists[0] if len(lists) == 1 else None
    if isinstance(value, str):
        return str if str in plain else None
    return None


def _members(ann: Any) -> list[Any]:
    """The plain types of a (nested, annotated, optional) union."""
    origin = get_origin(ann)
    if origin is Annotated:
        return _members(get_args(ann)[0])
    if origin in (Union, types.UnionType):
        return [m for arg in get_args(ann) for m in _members(arg)]
    return [ann]


def _annotation_at(model_cls: type[BaseModel], data: Any, path: Path) -> tuple[Any, Any]:
    """(annotation, value) at data path ``path``; annotation None when the schema has nothing there."""
    ann: Any = model_cls
    node = data
    for part in path:
        concrete = _concrete(ann, node)
        if _is_model(concrete) and part in concrete.model_fields:
            ann = concrete.model_fields[part].annotation
        elif get_origin(concrete) is dict:
            ann = get_args(concrete)[1]
        elif get_origin(concrete) is list:
            ann = get_args(concrete)[0]
        else:
            return None, None
        node = node[part] if _exists(node, (part,)) else None
    return ann, node


def _union_tags(model_cls: type[BaseModel], data: Any, path: Path, key: str) -> list[str]:
    """Sorted values of the discriminator ``key`` accepted by the union at data path ``path``."""
    ann, _ = _annotation_at(model_cls, data, path)
    tags: list[str] = []
    for member in _members(ann):
        field = member.model_fields.get(key) if _is_model(member) else None
        if field is not None and get_origin(field.annotation) is Literal:
            tags.extend(str(v) for v in get_args(field.annotation))
    return sorted(tags)


def _model_at(model_cls: type[BaseModel], data: Any, path: Path) -> type[BaseModel] | None:
    """The model class that validates the mapping at data path ``path``, or None."""
    ann, node = _annotation_at(model_cls, data, path)
    concrete = _concrete(ann, node)
    return concrete if _is_model(concrete) else None


# ---------------------------------------------------------------- validation


def validate_model(model_cls: type[M], data: Any, *, source: str, linemap: Linemap | None = None) -> M:
    """``model_cls.model_validate(data)``, with every pydantic error turned into one SpecError.

    ``linemap`` maps field paths to lines (as from ``read_yaml``) or to (source, line) pairs. The first
    problem (in file order) is the SpecError; further ones are in its ``also`` list and printed after it.
    """
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        errors = [_spec_error(err, model_cls, data, source, linemap or {}) for err in exc.errors()]
    unique: list[SpecError] = []
    for err in errors:
        if all(str(err) != str(seen) for seen in unique):
            unique.append(err)
    unique.sort(key=lambda e: (e.source != source, e.source or "", e.line or 0))
    first = unique[0]
    first.also = unique[1:]
    raise first


def _spec_error(err: Any, model_cls: type[BaseModel], data: Any, source: str, linemap: Linemap) -> SpecError:
    kind = err["type"]
    path = _data_path(data, err["loc"], missing=kind == "missing")
    ctx = err.get("ctx") or {}
    cause = ctx.get("error")
    hint = None
    if isinstance(cause, FieldError):
        path = (*path, *cause.path)
        message, hint = cause.message, cause.hint
    elif kind in ("value_error", "assertion_error"):
        message = str(cause) if cause is not None else err["msg"]
        named = re.match(r"(\w+): (.*)", message, re.S)
        if named and isinstance(_at(data, path), dict) and _field_known(model_cls, data, path, named.group(1)):
            path, message = (*path, named.group(1)), named.group(2)
    elif kind == "extra_forbidden":
        name = str(path[-1])
        message = f"unknown field {name!r}"
        owner = _model_at(model_cls, data, path[:-1])
        if owner is not None:
            hint = did_you_mean(name, owner.model_fields) or f"known fields: {', '.join(owner.model_fields)}"
    elif kind in ("union_tag_invalid", "union_tag_not_found"):
        key = ctx.get("discriminator", "'type'").strip("'")
        expected = ", ".join(_union_tags(model_cls, data, path, key))
        noun = "block type" if key == "type" and path[:1] == ("blocks",) else key
        path = (*path, key)
        if kind == "union_tag_invalid":
            message = f"unknown {noun} {_show(ctx.get('tag'))}, expected one of {expected}"
            hint = did_you_mean(str(ctx.get("tag")), expected.split(", "))
        else:
            message = f"missing {noun}, expected one of {expected}"
    elif kind == "missing" and path and isinstance(path[-1], int):
        path, message = path[:-1], f"item {path[-1]} is missing"
    else:
        message = _human(kind, err, ctx)
    where, line = _locate(path, linemap, source)
    return SpecError(message, source=where, line=line, field=_dotted(path) or None, hint=hint)


def _data_path(data: Any, loc: tuple[Any, ...], missing: bool) -> Path:
    """Map a pydantic loc (with union tags) onto keys / indices that exist in ``data``."""
    path: list[str | int] = []
    node = data
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
            path.append(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            path.append(part)
        elif missing and i == len(loc) - 1:
            path.append(part)
    return tuple(path)


def _at(data: Any, path: Path) -> Any:
    for part in path:
        data = data[part]
    return data


def _field_known(model_cls: type[BaseModel], data: Any, path: Path, name: str) -> bool:
    owner = _model_at(model_cls, data, path)
    return owner is not None and name in owner.model_fields


def _locate(path: Path, linemap: Linemap, source: str) -> tuple[str, int | None]:
    for depth in range(len(path), -1, -1):
        loc = linemap.get(path[:depth])
        if loc is None:
            continue
        if isinstance(loc, tuple):
            return loc[0], loc[1]
        return source, loc
    return source, None


_BOUNDS = {
    "greater_than_equal": ("ge", "at least"),
    "less_than_equal": ("le", "at most"),
    "greater_than": ("gt", "greater than"),
    "less_than": ("lt", "less than"),
}
_TYPES = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "finite_number": "a finite number",
}


def _human(kind: str, err: Any, ctx: dict[str, Any]) -> str:
    got = _show(err.get("input"))
    if kind in _BOUNDS:
        key, words = _BOUNDS[kind]
        return f"must be {words} {ctx[key]}, got {got}"
    if kind in _TYPES:
        return f"must be {_TYPES[kind]}, got {got}"
    if kind == "missing":
        return "missing required field"
    if kind == "literal_error":
        return f"must be one of {ctx['expected'].replace(' or ', ', ')}, got {got}"
    if kind == "too_short":
        return f"must have at least {ctx['min_length']} item(s), got {ctx['actual_length']}"
    if kind == "too_long":
        if ctx.get("field_type") == "Tuple":
            return f"must have {ctx['max_length']} items, got {ctx['actual_length']}"
        return f"must have at most {ctx['max_length']} item(s), got {ctx['actual_length']}"
    message = err["msg"]
    return message[:1].lower() + message[1:]


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (int, float)):
        return f"{value:g}" if isinstance(value, float) else str(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"the value {_show(value)}"


def _dotted(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# ---------------------------------------------------------------- model specs


def load_spec(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> ModelSpec:
    """Load a model spec file: resolve ``extends``, apply ``overrides``, validate. Raises SpecError."""
    source = os.path.normpath(os.fspath(path))
    data, locs = load_yaml_tree(source)
    apply_overrides(data, overrides, locs)
    return validate_model(ModelSpec, data, source=source, linemap=locs)


def spec_from_dict(data: dict[str, Any], source: str = "<dict>") -> ModelSpec:
    """Validate a plain mapping as a ModelSpec (no ``extends``); errors name ``source``. Raises SpecError."""
    return validate_model(ModelSpec, data, source=source, linemap={})



def dump_spec(spec: ModelSpec, path: str | os.PathLike[str] | None = None) -> str:
    """The complete resolved spec (every default filled in) as YAML; also written to ``path`` when given.

    ``load_spec`` of the result gives a spec equal to ``spec``.
    """
    text = yaml.safe_dump(_plain(spec.model_dump(mode="python")), sort_keys=False, allow_unicode=True, width=100)
    if path is not None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return text


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
