"""The one schema engine: YAML and JSON into frozen dataclasses, one error format.

Recipes, export profiles and the JSON files the tools write (``export.json``, ``bench.json``) are
read through :func:`convert_section` / :func:`from_json`, so every problem is one line:
``SOURCE: dotted.key: problem (hint)``.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from fopro_edge.errors import ConfigError


def range_(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> dict:
    return {"min": lo, "max": hi, "lo_open": lo_open}


def path_(kind: Literal["file", "dir", "any", "weights"] = "any") -> dict:
    return {"path": kind}


def read_yaml_mapping(path: str | Path, what: str, *, allow_empty: bool = True) -> dict[str, Any]:
    """Plain data from a YAML file that must hold a mapping; duplicate keys and Python tags refused;
    an empty file (or comments only) is ``{}``, or an error when not ``allow_empty``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} file not found (check the path)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {e.start}); a {what} is YAML text") from None
    try:
        raw = yaml.load(text, Loader=_StrictSafeLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if raw is None and not allow_empty:
        raise ConfigError(f"{path}: the {what} is empty (write at least a name and a data section, e.g. copy "
                          "recipes/demo_digits.yaml)")
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        article = "an" if what[0] in "aeiou" else "a"
        raise ConfigError(f"{path}: {article} {what} must be a mapping of keys, not a {type(raw).__name__}")
    return raw


class _StrictSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (plain data only, never Python objects) that also refuses duplicate keys."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}'; each key may appear once", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def convert_section(
    cls: type, raw: Any, *, prefix: str = "", source: str = "<config>", base_dir: Path | None = None, check_paths: bool = False
) -> Any:
    """Strictly convert ``raw`` into the dataclass ``cls`` (used for any typed YAML: recipes, export profiles)."""
    return _convert(cls, raw, prefix, _Context(source, base_dir or Path.cwd(), check_paths))

def from_json(cls: type, raw: Any, source: str) -> Any:
    """Typed read-back of what a ``to_dict`` wrote: nested dataclasses, tuples and paths rebuilt;
    keys the schema does not know (derived values, newer versions) are skipped."""
    return _convert(cls, raw, "", _Context(source, Path.cwd(), False, strict=False))


def parse_override(item: str, source: str = "--set") -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"{source}: '{item}': expected key=value, e.g. --set distill.epochs=5")
    key, value = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"{source}: '{item}': empty key before '='")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key.split("."), parsed

@dataclass
class _Context:
    source: str
    base_dir: Path
    check_paths: bool
    strict: bool = True  # False: keys the schema does not know are skipped (JSON written by a newer version)


def _fail(ctx: _Context, key: str, msg: str) -> typing.NoReturn:
    raise ConfigError(f"{ctx.source}: {key or '<root>'}: {msg}")


def _convert(cls: type, raw: Any, prefix: str, ctx: _Context) -> Any:
    if not isinstance(raw, dict):
        _fail(ctx, prefix, f"expected a mapping (section), got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields and ctx.strict:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(fields)})"
            _fail(ctx, _join(prefix, str(key)), f"unknown key{hint}")
    values = {}
    for name, f in fields.items():
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                _fail(ctx, _join(prefix, name), "missing (required)")
            continue
        values[name] = _value(hints[name], raw[name], _join(prefix, name), f.metadata, ctx)
    return cls(**values)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _value(tp: Any, v: Any, key: str, meta: typing.Mapping, ctx: _Context) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if v is None and len(args) < len(typing.get_args(tp)):
            return None
        errors = []
        for arg in args:  # e.g. float | Literal["auto"]: the first member that takes the value
            try:
                return _value(arg, v, key, meta, ctx)
            except ConfigError as e:
                errors.append(e)
        raise errors[-1] if isinstance(v, str) else errors[0]  # a word fails as a choice, a number as a number
    if dataclasses.is_dataclass(tp):
        return _convert(tp, {} if v is None else v, key, ctx)
    if origin is Literal:
        choices = typing.get_args(tp)
        if v not in choices:
            close = difflib.get_close_matches(str(v), [str(c) for c in choices], n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            _fail(ctx, key, f"'{v}' is not allowed ({hint}choose one of: {', '.join(map(str, choices))})")
        return v
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(v, list):
            _fail(ctx, key, f"expected a list, got {type(v).__name__}")
        return [_value(item_tp, x, f"{key}[{i}]", {}, ctx) for i, x in enumerate(v)]
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(v, (list, tuple)):
            _fail(ctx, key, f"expected a list, got {type(v).__name__}")
        item_tps = [args[0]] * len(v) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(item_tps) != len(v):
            _fail(ctx, key, f"expected {len(item_tps)} items, got {len(v)}")
        return tuple(_value(t, x, f"{key}[{i}]", {}, ctx) for i, (t, x) in enumerate(zip(item_tps, v)))
    if origin is dict:
        if not isinstance(v, dict):
            _fail(ctx, key, f"expected a mapping, got {type(v).__name__}")
        return v
    if tp is Path:
        if not isinstance(v, str):
            _fail(ctx, key, f"expected a path, got {v!r}")
        return Path(v)
    if tp is bool:
        if not isinstance(v, bool):
            _fail(ctx, key, f"expected true or false, got {v!r}")
        return v
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int):
            _fail(ctx, key, f"expected an integer, got {v!r}")
        _check_range(v, key, meta, ctx)
        return v
    if tp is float:
        if isinstance(v, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                v = float(v)
            except ValueError:
                pass
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            _fail(ctx, key, f"expected a number, got {v!r}")
        _check_range(float(v), key, meta, ctx)
        return float(v)
    if tp is str:
        if not isinstance(v, (str, int, float)) or isinstance(v, bool):
            _fail(ctx, key, f"expected a string, got {v!r}")
        v = str(v)
        if "path" in meta:
            v = _resolve_path(v, key, meta["path"], ctx)
        return v
    if tp is Any:
        return v
    raise TypeError(f"unsupported schema type {tp!r} at {key}")  # a bug in the schema, not user input


def _check_range(v: float, key: str, meta: typing.Mapping, ctx: _Context) -> None:
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and (v < lo or (meta.get("lo_open") and v == lo)):
        _fail(ctx, key, f"{v} is out of range (must be {'>' if meta.get('lo_open') else '>='} {lo})")
    if hi is not None and v > hi:
        _fail(ctx, key, f"{v} is out of range (must be <= {hi})")


def _resolve_path(v: str, key: str, kind: str, ctx: _Context) -> str:
    if kind == "weights":  # a file, or package:<python package> holding one
        if v.startswith("package:"):
            import importlib.util

            pkg = v.split(":", 1)[1]
            try:
                found = bool(pkg) and importlib.util.find_spec(pkg) is not None
            except (ImportError, ValueError):
                found = False
            if ctx.check_paths and not found:
                _fail(ctx, key, f"package '{pkg}' is not installed (pip install {pkg.replace('_', '-')})")
            return v
        kind = "file"
    p = Path(v).expanduser()
    if not p.is_absolute():
        p = (ctx.base_dir / p).resolve()
    if ctx.check_paths:
        if not p.exists():
            _fail(ctx, key, f"path not found: {p} (fix the path in the recipe or pass --set {key}=...)")
        if kind == "dir" and not p.is_dir():
            _fail(ctx, key, f"expected a folder, got a file: {p}")
        if kind == "file" and not p.is_file():
            _fail(ctx, key, f"expected a file, got a folder: {p}")
    return str(p)
