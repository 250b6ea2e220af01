"""Typed run configs: dataclasses as the schema, YAML as a partial instance, dotted CLI overrides.

Precedence: dataclass defaults < YAML file (and its `base:` chain) < overrides. Unknown keys, and a
scalar or list where a section belongs (`train: 5`), are errors that name the file (or the override)
and the field, so a typo never silently trains the wrong recipe. Each stage defines its own
dataclass and calls `parse_cli(MyConfig, argv)`.

The one override grammar of every CLI: `key.sub=value`, `--key.sub=value` and `--key.sub value`;
dashes and underscores in keys are the same (`--train.max-steps 3`); `--config FILE` (alias
`--config_path`). A value is read as the type the field declares: `train.lr=1e-5` is a float,
`true`/`false` a bool, a `str` field takes the text as it is, lists and sections are YAML/JSON
(`data.kinds=[world]`, `policy.recipe={chunk_size: 10}`), and `null` clears an optional field.

A `Literal[...]` field is a choice: any other value is one error naming the field and the choices.
A config class may list `renamed = {"old_key": "new.dotted.key"}` (a ClassVar): an old key in a YAML
file, an override or `from_dict` is moved to its new place with a one-line deprecation note. A section
class may name a `shorthand` field (a ClassVar): a scalar where the section belongs sets that field
(`policy=CKPT` is `policy.path=CKPT`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shlex
import sys
import types
import typing
import warnings
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    pass


class ChoiceError(ConfigError):
    """A value outside a `Literal` field's choices (the message names the field and the choices)."""


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats: `1e-5` and `5e-6` are numbers, not strings
    (YAML 1.1, which PyYAML implements, needs a dot: `1.0e-5`)."""


_FLOAT_TAG = "tag:yaml.org,2002:float"
ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _FLOAT_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ConfigLoader.add_implicit_resolver(
    _FLOAT_TAG,
    re.compile(r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
                    |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.VERBOSE),
    list("-+0123456789."),
)


def yaml_load(text: str):
    """YAML text -> Python values (safe, YAML 1.2 floats). Every config file and override goes through it."""
    return yaml.load(text, Loader=ConfigLoader)  # ConfigLoader is a SafeLoader: no arbitrary objects


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
        if len([a for a in args if a is not type(None)]) == 1:  # X | None: X's own error is the clearer one
            return _coerce(value, next(a for a in args if a is not type(None)), where)
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} does not match {tp}")
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value in choices and not isinstance(value, bool):
            return value
        raise ChoiceError(f"{where}: {value!r} not one of {list(choices)}")
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if getattr(tp, "shorthand", None) and not isinstance(value, dict):
            value = {tp.shorthand: value}
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


def _set_path(data: dict, path: list[str], value) -> None:
    node = data
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    old = node.get(path[-1])
    node[path[-1]] = merge(old, value) if isinstance(old, dict) and isinstance(value, dict) else value


def upgrade(cls, data: dict, where: str = "config", prefix: str = "") -> dict:
    """`data` (a partial mapping of `cls`, at `prefix` in the file or override `where`) with the old keys
    of `cls.renamed` (and of its sections) moved to their new places, each with a one-line deprecation
    note, and section shorthands expanded."""
    if not isinstance(data, dict) or not _is_dataclass_type(cls):
        return data
    renamed = getattr(cls, "renamed", {})
    out: dict = {}
    moved = []
    for key, value in data.items():
        if key in renamed and key not in _field_types(cls):
            warnings.warn(f"{where}: `{prefix}{key}` is deprecated, write `{prefix}{renamed[key]}`", FutureWarning,
                          stacklevel=3)
            moved.append((renamed[key].split("."), value))
        else:
            out[key] = value
    for path, value in moved:  # after the new keys: the old key is what this file / override said
        _set_path(out, path, value)
    types_ = _field_types(cls)
    for key, value in out.items():
        section = _section_type(types_[key]) if key in types_ else None
        if section is None:
            continue
        if getattr(section, "shorthand", None) and value is not None and not isinstance(value, (dict, section)):
            value = {section.shorthand: value}
        out[key] = upgrade(section, value, where, f"{prefix}{key}.") if isinstance(value, dict) else value
    return out


def literal_errors(obj, prefix: str = "") -> list[str]:
    """One line per `Literal` field of the dataclass `obj` (and its sections) holding another value."""
    bad = []
    for name, tp in _field_types(type(obj)).items():
        value = getattr(obj, name)
        args = [tp] if typing.get_origin(tp) is typing.Literal else [
            a for a in typing.get_args(tp) if typing.get_origin(a) is typing.Literal]
        if typing.get_origin(tp) in (list, tuple) and isinstance(value, (list, tuple)):
            (item,) = typing.get_args(tp)[:1] or (Any,)
            if typing.get_origin(item) is typing.Literal:
                bad += [f"{prefix}{name}: {v!r} not one of {list(typing.get_args(item))}"
                        for v in value if v not in typing.get_args(item)]
        elif args and not (value is None and type(None) in typing.get_args(tp)):
            choices = [c for a in args for c in typing.get_args(a)]
            if value not in choices:
                bad.append(f"{prefix}{name}: {value!r} not one of {choices}")
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            bad += literal_errors(value, f"{prefix}{name}.")
    return bad


def check_literals(obj) -> None:
    """Raise ValueError naming the first `Literal` field of `obj` that holds none of its choices (for a
    config built in Python, which skips the loader's check)."""
    bad = literal_errors(obj)
    if bad:
        raise ValueError(bad[0])


def from_dict(cls: type[T], data: dict, where: str = "config") -> T:
    """Build `cls` from a (partial) mapping; unknown keys raise with the valid names."""
    data = upgrade(cls, data, where)
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


def _section_type(tp):
    """The dataclass a field holds (`Section` or `Section | None`), else None."""
    if _is_dataclass_type(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        found = [a for a in typing.get_args(tp) if _is_dataclass_type(a)]
        return found[0] if len(found) == 1 else None
    return None


def check_sections(cls, data: dict, where: str, prefix: str = "") -> None:
    """Check one YAML file's own keys against the schema before it is merged with its `base:` chain
    (after the merge a scalar in one file can be hidden by a mapping in another): unknown keys and a
    scalar or list where a section belongs are errors naming `where` (the file) and the dotted field.
    `data` has been through `upgrade` (old keys moved)."""
    types_ = _field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        section = f"section {prefix[:-1]} ({cls.__name__})" if prefix else cls.__name__
        raise ConfigError(f"{where}: unknown key(s) {unknown} in {section}; valid: {sorted(types_)}")
    for key, value in data.items():
        section = _section_type(types_[key])
        if section is None or isinstance(value, section) or (value is None and section is not types_[key]):
            continue
        if getattr(section, "shorthand", None) and not isinstance(value, (dict, list, tuple)):
            continue
        if not isinstance(value, dict):
            kind = ("nothing (null)" if value is None else "a list" if isinstance(value, (list, tuple))
                    else f"the {type(value).__name__} {value!r}")
            example = next(iter(_field_types(section)))
            raise ConfigError(f"{where}: {prefix}{key} is a section ({section.__name__}), got {kind}; "
                              f"write it as a mapping, e.g. `{key}: {{{example}: ...}}`")
        check_sections(section, value, where, f"{prefix}{key}.")


def load_yaml_dict(path: str | Path, schema: type | None = None) -> dict:
    """A YAML preset with its `base:` chain merged in (bases first). With `schema` (a config
    dataclass), every file of the chain is checked on its own by `check_sections`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    base = data.pop("base", None)  # `base: other.yaml` inherits another preset (relative path)
    if schema is not None:
        data = upgrade(schema, data, str(path))
        check_sections(schema, data, str(path))
    if base:
        data = merge(load_yaml_dict(path.parent / base, schema), data)
    return data


_NULLS = ("null", "none", "~")
_BOOLS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def _type_name(tp) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return " | ".join(map(str, typing.get_args(tp)))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _from_text(raw: str, tp, where: str = "value"):
    """Read one CLI value as the declared type. Raises ValueError (caller names key and value), or
    ChoiceError naming `where` for a list item outside its Literal choices."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) < len(typing.get_args(tp)) and raw.strip().lower() in _NULLS:
            return None
        for arg in args:
            try:
                return _from_text(raw, arg)
            except (ValueError, ConfigError):
                continue
        raise ValueError
    if tp in (str, Path) and len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        try:  # a quoted YAML string: `key=''` is the empty string
            raw = yaml_load(raw)
        except yaml.YAMLError:
            pass  # not one quoted scalar (e.g. 'a'b'): the text as it is
    if origin is typing.Literal:  # a choice outside the list is reported by from_dict, naming the field
        try:
            value = yaml_load(raw)
        except yaml.YAMLError:
            return raw
        return value if value in typing.get_args(tp) else raw
    if tp is str:
        return raw
    if tp is Path:
        return Path(raw)
    if tp is bool:
        if raw.strip().lower() not in _BOOLS:
            raise ValueError
        return _BOOLS[raw.strip().lower()]
    if tp is int:
        return int(raw.strip())
    if tp is float:
        text = raw.strip().lower()
        return float(text.replace(".inf", "inf").replace(".nan", "nan"))
    try:  # lists, tuples, mappings, sections, Any: YAML (JSON is YAML), then the usual type check
        value = yaml_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        raise ValueError from None
    return _coerce(value, tp, where)


def _resolve_key(cls, key: str, renames: list | None = None) -> tuple[list[str], Any]:
    """`train.max-steps` -> (["train", "max_steps"], int). Dashes match underscores; an old key of a
    `renamed` table resolves to its new place (appended to `renames` as (old, new)). Below a plain
    dict (or an unknown key, which `from_dict` reports with the valid names) the rest is kept as typed."""
    parts, tp, todo = [], cls, key.split(".")
    while todo:
        part = todo.pop(0)
        section = _section_type(tp)
        if section is None:
            return parts + [part] + todo, Any
        fields_ = _field_types(section)
        name = part if part in fields_ else part.replace("-", "_")
        renamed = getattr(section, "renamed", {})
        if name not in fields_ and (part in renamed or name in renamed):
            new = renamed.get(part) or renamed[name]
            if renames is not None:
                renames.append((".".join(parts + [part]), ".".join(parts + [new])))
            todo = new.split(".") + todo
            continue
        if name not in fields_:
            return parts + [part] + todo, Any
        parts.append(name)
        tp = fields_[name]
    return parts, tp


def parse_override(text: str, cls: type | None = None) -> dict:
    """`a.b.c=value` -> {"a": {"b": {"c": value}}}, the value read as the type `cls` declares for
    `a.b.c` (without `cls`: as YAML). An unreadable value is one ConfigError naming key, value and type."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.lstrip("-").strip()
    if not key:
        raise ConfigError(f"override {text!r} has no key (write key.sub=value)")
    renames: list = []
    parts, tp = _resolve_key(cls, key, renames) if cls is not None else (key.split("."), Any)
    for old, new in renames:
        warnings.warn(f"override {old}: `{old}` is deprecated, write `{new}`", FutureWarning, stacklevel=2)
    section = _section_type(tp)
    if section is not None and getattr(section, "shorthand", None) and not raw.lstrip().startswith("{"):
        parts, tp = parts + [section.shorthand], _field_types(section)[section.shorthand]  # policy=CKPT
    try:
        value = _from_text(raw, tp, ".".join(parts))
    except ChoiceError as err:
        raise ConfigError(f"override {key}={raw}: {err}") from None
    except (ValueError, ConfigError):
        raise ConfigError(f"override {key}={raw}: cannot read {raw!r} as {_type_name(tp)} "
                          f"(the type of {'.'.join(parts)})") from None
    out: dict = {}
    node = out
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] = ()) -> T:
    data: dict = to_dict(cls())
    where = cls.__name__
    if path is not None:
        data = merge(data, load_yaml_dict(path, cls))
        where = str(path)
    for ov in overrides:
        data = merge(data, parse_override(ov, cls))
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
            lines.append(f"  {prefix}{f.name} ({_type_name(tp)}) = {val!r}  {doc}".rstrip())
    return lines


CONFIG_FLAGS = ("--config", "--config_path", "--config-path")


def split_cli(argv: list[str], positional: str | None = None, many: bool = False,
              is_flag=lambda key: False) -> tuple[str | None, list[str], bool]:
    """The one CLI grammar: argv -> (config file or None, `key=value` overrides, whether help was asked).

    `key=value`, `--key=value` and `--key value` are the same override; `--config FILE`,
    `--config=FILE` (alias `--config_path`) name the preset; `-h` / `--help` asks for help; a bool
    field (`is_flag(key)`) given as a bare `--key` is `key=true` (it takes a next word only when that
    is true/false/yes/no/on/off/1/0). A CLI whose config has one main input may name it as
    `positional`: bare words then become `positional=...` (with `many`, for a list field: a JSON
    list of them)."""
    config, overrides, want_help, bare, i = None, [], False, [], 0
    while i < len(argv):
        tok = argv[i]
        flag, eq, value = tok.partition("=")
        if tok in ("-h", "--help"):
            want_help = True
        elif flag in CONFIG_FLAGS:
            if not eq:
                if i + 1 >= len(argv):
                    raise ConfigError(f"{flag} needs a YAML file")
                i, value = i + 1, argv[i + 1]
            config = value
        elif eq and flag.lstrip("-"):
            overrides.append(f"{flag.lstrip('-')}={value}")
        elif tok.startswith("--") and is_flag(tok[2:]) and (i + 1 >= len(argv) or argv[i + 1].lower() not in _BOOLS):
            overrides.append(f"{tok[2:]}=true")
        elif tok.startswith("--") and len(tok) > 2:
            if i + 1 >= len(argv):
                raise ConfigError(f"{tok} needs a value (write {tok} VALUE or {tok[2:]}=VALUE)")
            i += 1
            overrides.append(f"{tok[2:]}={argv[i]}")
        elif positional and not tok.startswith("-") and (many or not bare):
            bare.append(tok)
        else:
            raise ConfigError(f"unexpected argument {tok!r} (write key=value, --key value or --config FILE)")
        i += 1
    if bare:
        overrides.insert(0, f"{positional}={json.dumps(bare) if many else bare[0]}")
    return config, overrides, want_help


def cli_overrides(cls, argv: list[str], positional: str | None = None) -> tuple[str | None, list[str], bool]:
    """`split_cli` for the config `cls`: its bool fields are flags, a list `positional` takes many words."""
    many = positional is not None and typing.get_origin(_field_types(cls)[positional]) in (list, tuple)
    return split_cli(argv, positional, many, lambda key: _resolve_key(cls, key)[1] is bool)


def _leaves(cls, values, prefix: str = ""):
    """(dotted key, declared type, value) of every leaf field, in declaration order."""
    for f in dataclasses.fields(cls):
        val = getattr(values, f.name)
        if dataclasses.is_dataclass(val):
            yield from _leaves(type(val), val, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", _field_types(cls)[f.name], val


def cli_examples(cls, values=None) -> list[str]:
    """Overrides of this config's own fields in the three CLI forms, e.g. `train.lr=5e-06` and
    `--train.max-steps 3` (what --help shows; tests parse them back)."""
    leaves = list(_leaves(cls, cls() if values is None else values))
    examples = []
    for want, form in ((float, "{key}={val!r}"), (int, "--{dashed} {val!r}")):
        for key, tp, val in leaves:
            if tp is want and type(val) is want:
                examples.append(form.format(key=key, dashed=key.replace("_", "-"), val=val))
                break
    if not examples and leaves:
        key, _, val = leaves[0]
        text = str(val) if isinstance(val, (str, Path)) else json.dumps(val, default=str)
        examples.append(shlex.quote(f"--{key}={text}"))
    return examples


def _help_epilog(cls, values=None, note: str = "") -> str:
    return (f"overrides: key.sub=value, --key.sub=value or --key.sub value, for any field below; dashes and\n"
            f"underscores in keys are the same; values are read as the field's type (lists: YAML/JSON).\n"
            f"  e.g. {' '.join(cli_examples(cls, values))}\n"
            f"fields{note}:\n" + "\n".join(describe(cls, values=values)))


def parse_cli(cls: type[T], argv: list[str] | None = None, description: str = "", prog: str | None = None,
              positional: str | None = None) -> T:
    """`--config file.yaml key.sub=value --key.sub value ...` -> an instance of `cls` (grammar: `split_cli`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    many = positional is not None and typing.get_origin(_field_types(cls)[positional]) in (list, tuple)
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_help_epilog(cls),
    )
    parser.add_argument("--config", "--config_path", type=Path, default=None, help="YAML preset (configs/*.yaml)")
    if positional:
        parser.add_argument(positional, nargs="*" if many else "?", help=f"the same as {positional}=...")
    parser.add_argument("overrides", nargs="*", help="key.sub=value, --key.sub=value or --key.sub value (see below)")
    try:
        config, overrides, want_help = cli_overrides(cls, argv, positional)
    except ConfigError as err:
        parser.exit(2, f"error: {err}\n")
    if want_help:  # show the values the preset and overrides give, not only the dataclass defaults
        try:
            parser.epilog = _help_epilog(cls, load_config(cls, config, overrides), " (values as loaded)")
        except ConfigError as err:
            parser.epilog += f"\n\n(could not load {config}: {err})"
        parser.print_help()
        parser.exit(0)
    try:
        return load_config(cls, config, overrides)
    except ConfigError as err:
        parser.exit(2, f"error: {err}\n")


_ID_PART = re.compile(r"(\d+)(?:-(\d+))?")


def parse_ids(text: str | int | list) -> list[int]:
    """Ids as the CLIs take them: `'0,1,5-7'` -> [0, 1, 5, 6, 7] (ranges inclusive, order kept); an int or
    a list passes through. The one id-range parser (tasks, episodes, init states)."""
    if isinstance(text, int):
        return [text]
    if isinstance(text, (list, tuple)):
        return [int(x) for x in text]
    out: list[int] = []
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        m = _ID_PART.fullmatch(part)
        if not m:
            raise ValueError(f"{part!r} in {text!r} is not an index or an inclusive range (use e.g. 0,1,5-7)")
        lo = int(m.group(1))
        hi = lo if m.group(2) is None else int(m.group(2))
        if hi < lo:
            raise ValueError(f"range {part!r} in {text!r} ends before it starts (use e.g. 0-9)")
        out.extend(range(lo, hi + 1))
    if not out:
        raise ValueError(f"no ids in {text!r}")
    return out
