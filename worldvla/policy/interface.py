"""What the evaluation needs from a policy, and how a policy is found from a string.

A policy is anything with `predict_batch(instructions, images_per_episode, wrists=None, states=None)
-> list[(K, 7) de-normalised actions]` and the attributes `chunk_size`, `history`, `resolution`
(optional: `uses_wrist`, `uses_state`, `action_mode`, `decode_mode`, `name`, and `last_decode_info`: per
query of the last call, {"failure": reason or None, "grammar_violation": bool or None}; a failure ends
the episode as a failure after the chunk's actions, as the official loop's exception does; a chunk
may then hold fewer or more actions than K, or none). `WorldVLAPolicy` (worldvla.policy.policy), the
websocket client (worldvla.policy.client) and the scripted test policies (worldvla.eval.scripted)
all qualify. Batching must not change an episode's result: policies decode greedily.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

from worldvla.config import from_dict
from worldvla.recipe import Recipe

log = logging.getLogger(__name__)


@runtime_checkable
class Policy(Protocol):
    chunk_size: int
    history: int
    resolution: int

    def predict_batch(
        self,
        instructions: Sequence[str],
        images_per_episode: Sequence[Sequence[np.ndarray]],
        wrists: Sequence[Sequence[np.ndarray]] | None = None,
        states: Sequence[np.ndarray] | None = None,
    ) -> list[np.ndarray]: ...


def policy_info(policy) -> dict:
    """The attributes the rollout uses, with defaults for the optional ones."""
    missing = [a for a in ("chunk_size", "history", "resolution", "predict_batch") if not hasattr(policy, a)]
    if missing:
        raise TypeError(f"{type(policy).__name__} is not a policy: missing {missing} (see worldvla.policy.interface)")
    return {
        "name": str(getattr(policy, "name", type(policy).__name__)),
        "chunk_size": int(policy.chunk_size),
        "history": int(policy.history),
        "resolution": int(policy.resolution),
        "uses_wrist": bool(getattr(policy, "uses_wrist", False)),
        "uses_state": bool(getattr(policy, "uses_state", False)),
        "action_mode": str(getattr(policy, "action_mode", "discrete")),
        "decode_mode": getattr(policy, "decode_mode", None),  # resolved mode (None: not a decoding policy)
    }


@dataclass
class ActionChunk:
    """A policy's answer to one query as the rollout executes it: the actions, then optionally the
    failure that ends the episode (official decoding), and whether the constrained decode's free
    argmax would have left the action grammar (None = not reported)."""

    actions: np.ndarray  # (n, 7) float64; n = 0 only with a failure
    failure: str | None = None
    grammar_violation: bool | None = None


def decode_infos(policy, n: int) -> list[dict]:
    """The policy's `last_decode_info` for its last call of n queries (empty dicts if it has none)."""
    info = getattr(policy, "last_decode_info", None)
    if not isinstance(info, (list, tuple)) or len(info) != n:
        return [{} for _ in range(n)]
    return [dict(i) if isinstance(i, dict) else {} for i in info]


def as_chunk(reply, expected_dim: int = 7) -> ActionChunk:
    """A policy's reply (an array, or an ActionChunk) as a validated ActionChunk."""
    if isinstance(reply, ActionChunk):
        if reply.failure is not None and np.asarray(reply.actions).size == 0:
            return ActionChunk(np.zeros((0, expected_dim)), str(reply.failure), reply.grammar_violation)
        failure = None if reply.failure is None else str(reply.failure)
        return ActionChunk(check_chunk(reply.actions, expected_dim), failure, reply.grammar_violation)
    return ActionChunk(check_chunk(reply, expected_dim))


@dataclass
class PolicySource:
    """Where the policy of an evaluation or a server comes from (`policy.*`; `policy=X` is `policy.path=X`).

    `tokenizer` and `recipe` are for checkpoint folders: the tokenizer folder of one without tokenizer/
    (the official release) and Recipe values that override the checkpoint's own (worldvla.json, or the
    released settings table): the values an official folder lacks (chunk_size, resolution, action_stats),
    or `action_mode` (discrete | continuous), which also may name a server's or factory's fixed mode."""

    shorthand: ClassVar[str] = "path"
    path: str = field(default="", metadata={"help": "checkpoint dir or hub id, ws://host:port (policy server) or module:factory"})
    tokenizer: str | None = field(default=None, metadata={"help": "folder with text_tokenizer.json, vqgan.yaml, vqgan.ckpt, for a checkpoint without tokenizer/ (official release)"})
    recipe: dict = field(default_factory=dict, metadata={"help": "Recipe values over the checkpoint's, e.g. {chunk_size: 10, resolution: 512, action_stats: worldvla} or {action_mode: continuous}"})

    def __post_init__(self) -> None:
        self.recipe = {k: v for k, v in self.recipe.items() if v is not None}  # null: the checkpoint's own
        from_dict(Recipe, self.recipe, "policy.recipe")  # the Recipe's own keys, types and choices (ConfigError)

    @classmethod
    def of(cls, source: PolicySource | str) -> PolicySource:
        return source if isinstance(source, cls) else cls(path=str(source))

    @property
    def action_mode(self) -> str | None:
        return self.recipe.get("action_mode")


def import_object(spec: str):
    """'package.module:attribute' -> the attribute."""
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ValueError(f"expected module:attribute, got {spec!r}")
    try:
        obj = importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"cannot import {module!r} from {spec!r}: {err}") from err
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise AttributeError(f"{module} has no attribute {attr!r} (from {spec!r})")
        obj = getattr(obj, part)
    return obj


def load_policy(source: PolicySource | str, device: str = "cpu", compile_step: bool = False, decode: str = "auto"):
    """A policy from its source (PolicySource; a plain string is its path): a checkpoint directory or hub id,
    `ws://host:port` (a running `python -m worldvla.serve`), or module:factory.

    A checkpoint loads with `source.recipe` over its own Recipe (WorldVLAPolicy.from_pretrained: a released
    checkpoint, worldvla.policy.official_checkpoints, brings its settings; any other folder without
    worldvla.json is refused unless the overrides give chunk_size, resolution and action_stats) and with
    `source.tokenizer` when it has no tokenizer/. A server or factory policy has a fixed recipe: only
    `action_mode` may be given, and it must be the policy's. `compile_step` (decode.compile) selects a
    checkpoint's static-shape / CUDA-graph decode step; a server or factory policy decodes as it was set up.
    `decode` (auto | parallel | sequential | official) is how a checkpoint decodes action chunks; for a server
    or factory policy a mode other than auto must match its `decode_mode`."""
    source = PolicySource.of(source)
    spec, action_mode = source.path, source.action_mode
    checkpoint_only = source.tokenizer or set(source.recipe) - {"action_mode"}
    if checkpoint_only and not (Path(spec).is_dir() or is_hub_id(spec)):
        raise ValueError(f"policy.tokenizer and policy.recipe apply to a checkpoint directory, not to {spec!r}")
    if not spec:
        raise ValueError("no policy given: policy=CKPT_DIR, policy=ws://127.0.0.1:8000 or policy=module:factory")
    if spec.startswith(("ws://", "wss://")):
        from worldvla.policy.client import RemotePolicy  # why: msgpack (serve extra), for ws:// only

        return _check_decode(_check_mode(RemotePolicy(spec), action_mode, spec), decode, spec)
    path = Path(spec)
    if path.is_dir() or is_hub_id(spec):  # a hub id is downloaded by the loader (worldvla.model.loading)
        try:
            from worldvla.policy.policy import WorldVLAPolicy  # why: torch; eval workers import us torch-free
        except ImportError as err:
            raise ImportError(f"cannot load checkpoint {path}: worldvla.policy.policy unavailable ({err})") from err
        log.info("loading policy from %s on %s (action_mode %s)", path, device, action_mode or "of the checkpoint")
        return WorldVLAPolicy.from_pretrained(path, device=device, tokenizer=source.tokenizer,
                                              compile_step=compile_step, decode=decode, **source.recipe)
    if ":" in spec and not path.exists():
        factory = import_object(spec)
        is_instance = hasattr(factory, "predict_batch") and not isinstance(factory, type)
        return _check_decode(_check_mode(factory if is_instance else factory(), action_mode, spec), decode, spec)
    raise FileNotFoundError(f"policy {spec!r} is not a checkpoint directory, a ws:// URL or module:factory")


def is_hub_id(spec: str) -> bool:
    """`owner/name[/sub/folder]` that is not a local path, a URL or module:factory: a model-hub checkpoint."""
    text = str(spec)
    if not text or ":" in text or text.startswith((".", "/", "~", "\\")) or Path(text).exists():
        return False
    parts = text.split("/")
    return len(parts) >= 2 and all(parts) and not Path(parts[0]).exists()  # else: a mistyped local path


def _check_mode(policy, action_mode: str | None, spec: str):
    have = str(getattr(policy, "action_mode", "discrete"))
    if action_mode is not None and action_mode != have:
        raise ValueError(f"policy {spec} runs action_mode={have}; action_mode={action_mode} was asked for "
                         "(a server's mode is set when it starts: python -m worldvla.serve policy.recipe.action_mode=...)")
    return policy


def _check_decode(policy, decode: str, spec: str):
    have = getattr(policy, "decode_mode", None)
    if decode != "auto" and decode != have:
        raise ValueError(f"policy {spec} decodes with mode {have}; decode.mode={decode} was asked for "
                         "(a server's mode is set when it starts: python -m worldvla.serve decode.mode=...)")
    return policy


def check_chunk(chunk, expected_dim: int = 7) -> np.ndarray:
    """A policy's output as a (K, 7) float64 array of finite numbers, or a clear error."""
    arr = np.asarray(chunk, dtype=np.float64)
    if arr.ndim == 1 and arr.shape[0] == expected_dim:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != expected_dim or arr.shape[0] < 1:
        raise ValueError(f"policy returned actions of shape {arr.shape}; expected (K, {expected_dim}) with K >= 1")
    if not np.isfinite(arr).all():
        raise ValueError(f"policy returned non-finite actions: {arr}")
    return arr
