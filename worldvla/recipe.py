"""The Recipe: how a checkpoint's tokens are made, in one typed object.

A `Recipe` is `worldvla.json` (`from_file` / `save`), the tokenizer fingerprint of a pretokenize
manifest (`fingerprint` / `from_fingerprint`) and the field-by-field `diff` that explains why shards,
a training config and a checkpoint disagree. Training writes the Recipe of its data section into every
checkpoint, pretokenize writes its fingerprint into the manifest, the training set compares the two,
and `WorldVLAPolicy.from_pretrained` reads it back (official folders get one from the settings table,
worldvla.policy.official_checkpoints). File formats are those of docs/interfaces.md, unchanged.

Statistics fields hold a spec: a preset name (`worldvla`, `rynnvla_action`, `rynnvla_state`), a JSON
file path or `{"min": [...], "max": [...]}`; `save` and `fingerprint` write the resolved min/max.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from worldvla.atomic import atomic_write_json
from worldvla.config import literal_errors
from worldvla.errors import InputFileError
from worldvla.stats import ACTION_DIM, STATE_DIM, NormStats, load_stats

FILE_NAME = "worldvla.json"
TOKENIZER_FILES = ("text_tokenizer.json", "vqgan.yaml", "vqgan.ckpt")
# ../../chameleon/tokenizer: a full download of the WorldVLA hub repo keeps it next to model_<px>/<suite>
TOKENIZER_DIRS = ("tokenizer", "chameleon/tokenizer", "ckpts/chameleon/tokenizer", "../tokenizer",
                  "../../chameleon/tokenizer")
SampleKind = Literal["action", "world"]  # what a training sample teaches: the action model or the world model
SAMPLE_KINDS = get_args(SampleKind)
ActionMode = Literal["discrete", "continuous"]  # action tokens | RynnVLA-002's continuous action head
Family = Literal["worldvla", "rynnvla002"]  # whose official parsing rule decode=official applies
ACTION_MODES, FAMILIES = get_args(ActionMode), get_args(Family)
_POSITIVE = ("chunk_size", "history", "resolution")
_BOOLS = ("with_state", "with_wrist")
_STATS = ("action_stats", "world_action_stats", "state_stats")
STATS_DIMS = {"action_stats": ACTION_DIM, "world_action_stats": ACTION_DIM, "state_stats": STATE_DIM}


def stats_of(spec) -> NormStats:
    """A statistics spec (preset name, JSON path or {"min", "max"}) -> NormStats."""
    if isinstance(spec, dict):
        if "min" not in spec or "max" not in spec:
            raise ValueError(f"expected {{'min': [...], 'max': [...]}}, got keys {sorted(spec)}")
        return NormStats(tuple(map(float, spec["min"])), tuple(map(float, spec["max"])))
    return load_stats(spec)


def check_stats_dim(key: str, spec) -> None:
    """`spec` (a statistics field) has the dimension its tokenizer needs; a JSON file is named in the error."""
    stats = stats_of(spec)
    if stats.dim != STATS_DIMS[key]:
        where = spec if isinstance(spec, (str, Path)) and str(spec).endswith(".json") else None
        message = f"{key} must be {STATS_DIMS[key]}-D, got {stats.dim}-D min/max"
        raise InputFileError(where, message, "min") if where else ValueError(message)


def stats_json(spec) -> dict:
    s = stats_of(spec)
    return {"min": list(s.min), "max": list(s.max)}


def same_stats(a, b) -> bool:
    """Two specs (or resolved dicts) name the same min/max (np.allclose, as the shard check always did)."""
    sa, sb = stats_of(a), stats_of(b)
    return sa.dim == sb.dim and bool(np.allclose(sa.min, sb.min) and np.allclose(sa.max, sb.max))


def tokenizer_files(path: str | Path) -> dict[str, Path]:
    """The three tokenizer files in `path` or `path/tokenizer` (official folder layout)."""
    path = Path(path)
    for folder in (path, path / "tokenizer"):
        files = {name: folder / name for name in TOKENIZER_FILES}
        if all(f.is_file() for f in files.values()):
            return files
    raise FileNotFoundError(f"{path}: expected {', '.join(TOKENIZER_FILES)} here or in {path / 'tokenizer'} "
                            "(official layout ckpts/chameleon/tokenizer/)")


def find_tokenizer_dir(folder: str | Path, tokenizer: str | Path | None = None) -> Path:
    """The folder with text_tokenizer.json, vqgan.yaml and vqgan.ckpt for a checkpoint."""
    names = TOKENIZER_FILES
    candidates = [Path(tokenizer)] if tokenizer is not None else []
    if tokenizer is not None:
        candidates.append(Path(tokenizer) / "tokenizer")
    candidates += [Path(folder) / sub for sub in TOKENIZER_DIRS]
    for cand in candidates:
        if all((cand / n).is_file() for n in names):
            return cand
    raise FileNotFoundError(
        f"no tokenizer folder ({', '.join(names)}) for checkpoint {folder}; looked in "
        f"{[str(c) for c in candidates]}. Official releases ship it separately: pass tokenizer=<dir> "
        "(e.g. ckpts/chameleon/tokenizer)"
    )


_HASHES: dict[tuple, str] = {}


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file, memoised by (path, size, mtime): a 7B VQ-GAN checkpoint is hashed once per process.
    The package's one file hash (tokenizers, checkpoints, metric weights)."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


@dataclass
class Recipe:
    """How tokens are made and read; defaults are the released WorldVLA LIBERO setup."""

    chunk_size: int = 5  # K actions per query (10 for libero_10)
    history: int = 2  # frames per prompt (official his=2)
    resolution: int = 256  # px the model was trained at
    action_stats: object = "worldvla"  # preset name, JSON path or {"min", "max"}
    world_action_stats: object = None  # stats of world-model samples' actions (None = action_stats)
    state_stats: object = "rynnvla_state"
    with_state: bool = False  # RynnVLA-002 proprio-state block in the prompt
    with_wrist: bool = False  # RynnVLA-002 wrist view after each third-person frame
    action_mode: ActionMode = "discrete"  # discrete (action tokens) | continuous (RynnVLA-002 action head)
    family: Family = "worldvla"  # which official parsing rule decode=official uses
    action_head: dict = field(default_factory=dict)  # ActionHeadConfig fields not visible in the tensors (num_heads)
    text_tokenizer_sha256: str | None = None
    tokenizer_sha256: dict = field(default_factory=dict)  # bundled file name -> sha256, verified on load
    step: int | None = None
    lora: dict = field(default_factory=dict)  # a LoRA fine-tune's settings and base (worldvla.train.lora.settings)
    extra: dict = field(default_factory=dict)  # not read from worldvla.json (an unknown key there is an error)

    def __post_init__(self) -> None:
        if self.world_action_stats == "":  # the configs' old spelling of "same as action_stats"
            self.world_action_stats = None
        bad = literal_errors(self)
        if bad:
            raise ValueError(bad[0])

    # -- worldvla.json ------------------------------------------------------------------------------
    @classmethod
    def file_fields(cls) -> list[str]:
        return sorted(k for k in cls.__dataclass_fields__ if k != "extra")

    @classmethod
    def from_file(cls, path: str | Path) -> Recipe:
        """worldvla.json, validated: unknown keys, wrong types and bad statistics are errors naming the key."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InputFileError(path, f"not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise InputFileError(path, f"expected a JSON object, got {type(data).__name__}")
        valid = cls.file_fields()
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise InputFileError(path, f"unknown key(s) {unknown}; valid: {valid}", unknown[0])
        for key in _POSITIVE:
            if key in data and (not isinstance(data[key], int) or isinstance(data[key], bool) or data[key] < 1):
                raise InputFileError(path, f"expected a positive integer, got {data[key]!r}", key)
        for key in _BOOLS:
            if key in data and not isinstance(data[key], bool):
                raise InputFileError(path, f"expected true/false, got {data[key]!r}", key)
        for key in _STATS:
            if data.get(key) is not None:
                try:
                    check_stats_dim(key, data[key])
                except (ValueError, TypeError, KeyError, FileNotFoundError) as err:
                    raise InputFileError(path, str(err), key) from None
        if not isinstance(data.get("tokenizer_sha256", {}), dict):
            raise InputFileError(path, "expected {file name: sha256}", "tokenizer_sha256")
        if not isinstance(data.get("lora", {}), dict):
            raise InputFileError(path, "expected {LoRA setting: value}", "lora")
        if not isinstance(data.get("action_head", {}), dict):
            raise InputFileError(path, "expected {ActionHeadConfig field: value}", "action_head")
        try:
            return cls(**data)
        except ValueError as err:  # a Literal choice: "field: 'value' not one of [...]"
            key, _, message = str(err).partition(": ")
            raise InputFileError(path, message, key) from None

    def to_json(self) -> dict:
        """The worldvla.json object, in the key order and with the keys training has always written
        (action_mode / family / action_head only when they are not the plain WorldVLA defaults)."""
        out = {
            "chunk_size": self.chunk_size, "history": self.history, "resolution": self.resolution,
            "action_stats": stats_json(self.action_stats),
            "world_action_stats": stats_json(self.world_action_stats) if self.world_action_stats else None,
            "with_state": self.with_state, "with_wrist": self.with_wrist,
            "text_tokenizer_sha256": self.text_tokenizer_sha256,
            "tokenizer_sha256": dict(self.tokenizer_sha256),
            "step": self.step,
        }
        if self.with_state:
            out["state_stats"] = stats_json(self.state_stats)
        if self.action_head:  # RynnVLA-002 continuous head: its weights are the action_head.* tensors
            out["action_head"] = dict(self.action_head)
        if self.lora:  # merged from a LoRA fine-tune: its rank / alpha / targets and the base's sha256
            out["lora"] = dict(self.lora)
        for key in ("action_mode", "family"):
            if getattr(self, key) != Recipe.__dataclass_fields__[key].default:
                out[key] = getattr(self, key)
        return out

    def save(self, folder_or_file: str | Path) -> Path:
        """Write worldvla.json atomically (into a folder, or to the file path given); returns its path."""
        path = Path(folder_or_file)
        if path.suffix != ".json":
            path = path / FILE_NAME
        atomic_write_json(path, self.to_json())
        return path

    def replace(self, **changes) -> Recipe:
        unknown = set(changes) - set(self.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown recipe field(s) {sorted(unknown)}; valid: {sorted(self.__dataclass_fields__)}")
        return dataclasses.replace(self, **changes)

    def check_stats(self) -> None:
        """Every statistics field resolves and has its tokenizer's dimension (7-D actions, 8-D state)."""
        for key in _STATS:
            if self.value(key) is not None:
                check_stats_dim(key, self.value(key))

    # -- the tokenizer files --------------------------------------------------------------------------
    def with_tokenizer(self, path: str | Path) -> Recipe:
        """This recipe with the sha256 of the tokenizer files in `path` (or `path/tokenizer`)."""
        files = tokenizer_files(path)
        hashes = {name: sha256_file(p) for name, p in files.items()}
        return self.replace(tokenizer_sha256=hashes, text_tokenizer_sha256=hashes["text_tokenizer.json"])

    def verify_tokenizer(self, tok_dir: str | Path, settings_path: str | Path) -> None:
        """The tokenizer files are the ones recorded when the checkpoint was written (sha256)."""
        for name, want in self.tokenizer_sha256.items():
            f = Path(tok_dir) / name
            if not f.is_file():
                raise InputFileError(f, f"missing; {settings_path} records it (tokenizer_sha256.{name})")
            got = sha256_file(f)
            if got != want:
                raise InputFileError(f, f"sha256 {got[:12]} differs from {want[:12]} recorded in {settings_path} "
                                        f"(tokenizer_sha256.{name}): the file changed after the checkpoint was "
                                        "written; restore the original or use the tokenizer it was trained with")

    # -- the manifest fingerprint ----------------------------------------------------------------------
    def fingerprint(self) -> dict:
        """What changes token ids (a pretokenize manifest's `tokenizer`): file hashes, resolution, statistics.
        Needs the tokenizer hashes (`with_tokenizer`)."""
        missing = [n for n in TOKENIZER_FILES if n not in self.tokenizer_sha256]
        if missing:
            raise ValueError(f"the recipe has no sha256 of {missing}: call with_tokenizer(path) first")
        return {
            **{f"{name}_sha256": self.tokenizer_sha256[name] for name in TOKENIZER_FILES},
            "resolution": self.resolution,
            "action_stats": stats_json(self.action_stats),
            "world_action_stats": stats_json(self.world_action_stats or self.action_stats),
            "state_stats": stats_json(self.state_stats),
        }

    @classmethod
    def from_fingerprint(cls, tok: dict) -> Recipe:
        """The part of a recipe a manifest's fingerprint records (fields it lacks keep their defaults;
        `world_action_stats` is None when it equals `action_stats`, as in a checkpoint's worldvla.json)."""
        hashes = {name: tok[f"{name}_sha256"] for name in TOKENIZER_FILES if f"{name}_sha256" in tok}
        kw: dict = {"tokenizer_sha256": hashes, "text_tokenizer_sha256": hashes.get("text_tokenizer.json")}
        if "resolution" in tok:
            kw["resolution"] = int(tok["resolution"])
        for key in _STATS:
            if tok.get(key):
                kw[key] = {"min": list(tok[key]["min"]), "max": list(tok[key]["max"])}
        if "world_action_stats" in kw and "action_stats" in kw and same_stats(kw["world_action_stats"],
                                                                              kw["action_stats"]):
            kw["world_action_stats"] = None
        return cls(**kw)

    # -- the diff ----------------------------------------------------------------------------------
    def value(self, name: str):
        """A field as compared: world_action_stats None is action_stats."""
        if name == "world_action_stats":
            return self.world_action_stats or self.action_stats
        return getattr(self, name)

    def differing(self, other: Recipe, fields: list[str] | None = None) -> list[str]:
        """The fields (all but step by default) where `other` disagrees with this recipe; statistics compare
        by value (a preset equals its min/max written out; np.allclose, as the shard check always did)."""
        out = []
        for name in fields if fields is not None else [f for f in self.file_fields() if f != "step"]:
            mine, theirs = self.value(name), other.value(name)
            if name in _STATS:
                if not same_stats(mine, theirs):
                    out.append(name)
            elif mine != theirs:
                out.append(name)
        return out

    def diff(self, other: Recipe, fields: list[str] | None = None) -> list[str]:
        """One line per differing field: `field: <this recipe's value> vs <other's value>` (statistics as
        their spec and min/max); empty when they agree."""
        lines = []
        for name in self.differing(other, fields):
            mine, theirs = self.value(name), other.value(name)
            if name in _STATS:
                lines.append(f"{name}: {_show(mine)} vs {_show(theirs)}")
            else:
                lines.append(f"{name}: {mine!r} vs {theirs!r}")
        return lines


def _show(spec) -> str:
    """A statistics spec as its name and values: `'worldvla' = {'min': [...], 'max': [...]}`."""
    values = stats_json(spec)
    return str(values) if isinstance(spec, dict) else f"{spec!r} = {values}"
