"""Every setting of a dataclass config, for ``--help``: dotted key, type, default and one-line doc.

    print(config_help(PretrainConfig))
    #   optim.lr                float = 0.0002              peak learning rate

The doc is the ``# comment`` after the field (the convention of engine/config.py and the phases'
config dataclasses), read from the class's source with ``ast`` + ``tokenize``, so the docs live in
one place and cannot drift from the fields. A list of dataclasses is shown as ``key[].field``.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import textwrap
import tokenize
import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml


@dataclasses.dataclass(frozen=True)
class Setting:
    key: str  # dotted key, as written in YAML nesting or a key=value override
    type: str
    default: str
    doc: str


@functools.lru_cache(maxsize=None)
def field_comments(cls: type) -> dict[str, str]:
    """``{field: comment}`` for the fields a class itself declares (the trailing ``# ...`` of the
    field's statement; for a default spread over lines, the comment after its last line)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source (e.g. a class built at run time)
        return {}
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    (node,) = ast.parse(source).body
    out = {}
    for stmt in node.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            lines = range(stmt.end_lineno, stmt.lineno - 1, -1)
            out[stmt.target.id] = next((comments[n] for n in lines if n in comments), "")
    return out


def _doc(cls: type, name: str) -> str:
    for klass in cls.__mro__:  # inherited fields are documented where they are declared
        if dataclasses.is_dataclass(klass) and name in klass.__dict__.get("__annotations__", {}):
            return field_comments(klass).get(name, "")
    return ""


def type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "|".join(str(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join("None" if a is type(None) else type_name(a) for a in get_args(tp))
    if origin is not None:
        args = ", ".join(type_name(a) for a in get_args(tp))
        return f"{origin.__name__}[{args}]" if args else origin.__name__
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def default_text(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "(required)"
    if isinstance(value, str) and value == "":
        return '""'
    # YAML spelling, as the user writes it in a preset or a key=value override
    return yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip().removesuffix("...").strip()


def settings(cls: type, prefix: str = "") -> list[Setting]:
    """Every leaf setting of dataclass ``cls``, in declaration order; nested dataclasses recurse."""
    hints = get_type_hints(cls)
    out: list[Setting] = []
    for field in dataclasses.fields(cls):
        tp, key = hints[field.name], prefix + field.name
        item = get_args(tp)[0] if get_origin(tp) is list and get_args(tp) else None
        if dataclasses.is_dataclass(tp):
            out.extend(settings(tp, key + "."))
            continue
        out.append(Setting(key, type_name(tp), default_text(field), _doc(cls, field.name)))
        if item is not None and dataclasses.is_dataclass(item):
            out.extend(settings(item, key + "[]."))
    return out


def config_help(cls: type, width: int = 40) -> str:
    """A help block listing every setting; meant as an argparse epilog (RawDescriptionHelpFormatter)."""
    rows = settings(cls)
    key_w = min(max(len(s.key) for s in rows), width)
    lines = ["settings (YAML keys of --config, or key=value overrides; dotted for nested sections):"]
    for s in rows:
        lines.append(f"  {s.key:<{key_w}}  {s.type} = {s.default}" + (f"  # {s.doc}" if s.doc else ""))
    return "\n".join(lines)
