"""Typed dataclass configs: YAML preset + ``key=value`` overrides, every problem reported at once.

    cfg = load_config(TrainConfig, "pretrain/configs/tiny_cpu.yaml", ["optim.lr=1e-3", "mode=lora"])

Nested dataclasses are addressed with dots (``optim.lr``). Values of overrides are parsed as
YAML (``targets=[q_proj,v_proj]``, ``resume=auto``, ``bf16=true``). Unknown keys, wrong types and
values outside a ``Literal`` are collected and raised together as one UserError naming the file
and key. A dataclass may define ``validate(self) -> list[str]`` for cross-field checks, and an
``UNKNOWN_KEY`` class attribute to word the unknown-key problem ("unknown setting" by default).
``build`` does the same for a mapping already read (one entry of a YAML list, say) under a key
prefix of the caller's choosing; corpus manifests load through it (corpora/schema.py).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from .errors import UserError, raise_if_problems
from .files import describe_not_a_file

T = TypeVar("T")


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] = ()) -> T:
    """Build ``cls`` from a YAML file (optional) and ``key=value`` overrides; validate everything."""
    raw: dict[str, Any] = {}
    problems: list[str] = []
    source = str(path) if path else "<defaults>"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file {path} {describe_not_a_file(path)}")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise UserError(f"{path}: not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise UserError(f"{path}: expected a mapping of settings at the top level")
        raw = loaded
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            problems.append(f"override {item!r}: expected key=value")
            continue
        try:
            parsed = yaml.safe_load(value) if value != "" else ""
        except yaml.YAMLError:
            parsed = value
        _set_dotted(raw, key.strip(), parsed)
    cfg = _build(cls, raw, source, "", problems)
    problems.extend(_validate_tree(cfg))  # also after type errors: every problem in one run
    raise_if_problems(f"invalid configuration ({source})", problems)
    return cfg


def build(cls: type[T], raw: Any, problems: list[str], prefix: str = "") -> T | None:
    """Build ``cls`` from parsed ``raw``; append ``PREFIX.key: why`` problems instead of raising.

    Unlike ``load_config``, each section's ``validate()`` runs whenever that section's own fields
    passed the type checks, so one call reports as much as it can at once. Returns the object
    (a field that failed a check keeps its raw value: use the object only when no problem was
    added) or None when it could not be constructed at all.
    """
    before = len(problems)
    obj = _build(cls, raw, "", prefix, problems)
    problems.extend(_validate_typed_sections(obj, prefix, problems[before:]))
    return obj


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict of a config (for reports and for saving the effective config)."""
    return dataclasses.asdict(cfg)


def dump_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True))


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _build(cls: type, raw: Any, source: str, prefix: str, problems: list[str]) -> Any:
    if not isinstance(raw, dict):
        problems.append(f"{prefix or '<root>'}: expected a mapping, got {type(raw).__name__}")
        return None
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            known = ", ".join(sorted(fields))
            problems.append(f"{prefix}{key}: {getattr(cls, 'UNKNOWN_KEY', 'unknown setting')} (known: {known})")
    kwargs = {}
    for name, field in fields.items():
        if name not in raw:
            continue
        before = len(problems)
        value = _coerce(hints[name], raw[name], f"{prefix}{name}", source, problems)
        if len(problems) == before or (dataclasses.is_dataclass(hints[name]) and value is not None):
            kwargs[name] = value  # a wrongly typed value keeps the default, so validate() can still run
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        problems.append(f"{prefix or '<root>'}: {exc}")
        return None


def _coerce(tp: Any, value: Any, key: str, source: str, problems: list[str]) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value if value is not None else {}, source, key + ".", problems)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for candidate in inner:
            trial: list[str] = []
            out = _coerce(candidate, value, key, source, trial)
            if not trial:
                return out
        problems.append(f"{key}: expected {_name(tp)}, got {value!r}")
        return value
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            problems.append(f"{key}: expected one of {list(allowed)}, got {value!r}")
        return value
    if origin in (list, typing.List):
        (item_tp,) = get_args(tp) or (Any,)
        if isinstance(value, str):  # tolerate a single string for a one-item list
            value = [value]
        if not isinstance(value, list):
            problems.append(f"{key}: expected a list, got {value!r}")
            return value
        return [_coerce(item_tp, v, f"{key}[{i}]", source, problems) for i, v in enumerate(value)]
    if origin in (dict, typing.Dict):
        if not isinstance(value, dict):
            problems.append(f"{key}: expected a mapping, got {value!r}")
        return value
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML reads '1e-4' as a string; accept any float-looking string.
            try:
                return float(value)
            except (TypeError, ValueError):
                problems.append(f"{key}: expected a number, got {value!r}")
                return value
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return str(value)
            problems.append(f"{key}: expected a string, got {value!r}")
        return value
    return value


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _validate_typed_sections(cfg: Any, prefix: str, found: list[str]) -> list[str]:
    """``validate()`` of every section whose own (non-section) fields have no problem in ``found``."""
    problems: list[str] = []
    if cfg is None or not dataclasses.is_dataclass(cfg):
        return problems
    typed = True
    for f in dataclasses.fields(cfg):
        child, key = getattr(cfg, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(child):
            problems.extend(_validate_typed_sections(child, key + ".", found))
        elif any(p.startswith((key + ":", key + "[", key + ".")) for p in found):
            typed = False
    validate = getattr(cfg, "validate", None)
    if typed and callable(validate):
        problems.extend(f"{prefix}{p}" for p in validate())
    return problems


def _validate_tree(cfg: Any, prefix: str = "") -> list[str]:
    problems: list[str] = []
    if cfg is None or not dataclasses.is_dataclass(cfg):
        return problems
    for f in dataclasses.fields(cfg):
        child = getattr(cfg, f.name)
        if dataclasses.is_dataclass(child):
            problems.extend(_validate_tree(child, f"{prefix}{f.name}."))
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        try:
            found = validate()
        except (TypeError, ValueError, AttributeError):  # a check tripped over a value already reported as mistyped
            found = []
        problems.extend(f"{prefix}{p}" for p in found)
    return problems
