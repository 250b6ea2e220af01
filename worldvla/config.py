"""Typed run configs: dataclasses as the schema, YAML as a partial instance, dotted CLI overrides.

Precedence: dataclass defaults < YAML file < `key.sub=value` overrides. Unknown keys are errors
that name the file (or the override) and list the valid keys, so a typo never silently trains the
wrong recipe. Each stage defines its own dataclass and calls `parse_cli(MyConfig, argv)`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    pass


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value, tp, where: str):
    """Check/convert a YAML value to the annotated type (int->float allowed, str->Path)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} does not match {tp}")
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (arg, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, arg, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    if tp is Path and isinstance(value, (str, Path)):
        return Path(value)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def from_dict(cls: type[T], data: dict, where: str = "config") -> T:
    """Build `cls` from a (partial) mapping; unknown keys raise with the valid names."""
    types_ = _field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} for {cls.__name__}; valid: {sorted(types_)}")
    kwargs = {k: _coerce(v, types_[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def to_dict(obj) -> dict:
    def conv(v):
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return v

    return conv(obj)


def merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_yaml_dict(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    base = data.pop("base", None)  # `base: other.yaml` inherits another preset (relative path)
    if base:
        data = merge(load_yaml_dict(path.parent / base), data)
    return data


def parse_override(text: str) -> dict:
    """`a.b.c=value` -> {"a": {"b": {"c": parsed value}}} (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.lstrip("-")
    value = yaml.safe_load(raw) if raw != "" else ""
    out: dict = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] = ()) -> T:
    data: dict = to_dict(cls())
    where = cls.__name__
    if path is not None:
        data = merge(data, load_yaml_dict(path))
        where = str(path)
    for ov in overrides:
        try:
            data = merge(data, parse_override(ov))
        except ConfigError:
            raise
    try:
        return from_dict(cls, data, where)
    except ConfigError as err:
        if overrides:
            raise ConfigError(f"{err} (overrides: {list(overrides)})") from None
        raise


def save_config(obj, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(obj), sort_keys=False))


def describe(cls, prefix: str = "", values=None) -> list[str]:
    """One `key (type) = value` line per leaf field, for --help (`values`: an instance, e.g. a loaded
    preset; default: the dataclass defaults)."""
    lines = []
    default = cls() if values is None else values
    for f in dataclasses.fields(cls):
        tp = _field_types(cls)[f.name]
        val = getattr(default, f.name)
        if dataclasses.is_dataclass(val):
            lines += describe(type(val), f"{prefix}{f.name}.", val)
        else:
            doc = f.metadata.get("help", "")
            lines.append(f"  {prefix}{f.name} ({getattr(tp, '__name__', str(tp))}) = {val!r}  {doc}".rstrip())
    return lines


def parse_cli(cls: type[T], argv: list[str] | None = None, description: str = "") -> T:
    """`--config file.yaml key.sub=value --key.sub value ...` -> an instance of `cls`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="overrides (key=value, any field):\n" + "\n".join(describe(cls)),
    )
    parser.add_argument("--config", type=Path, default=None, help="YAML preset (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-5 or --train.lr 1e-5")
    config, overrides, i, want_help = None, [], 0, False
    while i < len(argv):  # accept `key=v`, `--key=v` and `--key v`
        tok = argv[i]
        if tok in ("-h", "--help"):
            want_help, i = True, i + 1
            continue
        if tok == "--config" or tok.startswith("--config="):
            if "=" in tok:
                config, i = tok.split("=", 1)[1], i + 1
            elif i + 1 < len(argv):
                config, i = argv[i + 1], i + 2
            else:
                parser.error("--config needs a file")
            continue
        if "=" in tok:
            overrides.append(tok.lstrip("-"))
            i += 1
        elif tok.startswith("--") and i + 1 < len(argv):
            overrides.append(f"{tok[2:]}={argv[i + 1]}")
            i += 2
        else:
            parser.error(f"unexpected argument {tok!r} (use key=value)")
    args = argparse.Namespace(config=config)
    if want_help:  # show the values the preset and overrides give, not only the dataclass defaults
        try:
            parser.epilog = "overrides (key=value, any field; values as loaded):\n" + "\n".join(
                describe(cls, values=load_config(cls, args.config, overrides)))
        except ConfigError as err:
            parser.epilog += f"\n\n(could not load {args.config}: {err})"
        parser.print_help()
        parser.exit(0)
    try:
        return load_config(cls, args.config, overrides)
    except ConfigError as err:
        parser.exit(2, f"error: {err}\n")
