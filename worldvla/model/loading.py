"""Load / save the backbone in the official Hugging Face folder layout.

A checkpoint folder holds `config.json` (HF Chameleon keys) and the weights as one of
`model.safetensors`, `model-0000i-of-0000n.safetensors` + `model.safetensors.index.json`,
`pytorch_model.bin`, or `pytorch_model-0000i-of-0000n.bin` + `pytorch_model.bin.index.json`
(official_format.md §6.3). Sources: a local folder, or a hub id `owner/name[/sub/folder]`
(downloaded with huggingface_hub.snapshot_download; e.g. `Alpha-VLLM/Lumina-mGPT-7B-768` or a
sub-folder of `Alibaba-DAMO-Academy/WorldVLA`). Our checkpoints add `worldvla.json` and
`tokenizer/` (docs/interfaces.md); `find_tokenizer_dir` locates the bundled tokenizer + VQ-GAN.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from safetensors.torch import load_file, save_file

from worldvla.errors import InputFileError
from worldvla.model import convert
from worldvla.model.config import ModelConfig
from worldvla.model.transformer import Transformer
from worldvla.recipe import TOKENIZER_DIRS, find_tokenizer_dir  # noqa: F401 - part of this module's API

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
SAFE_SINGLE, SAFE_INDEX = "model.safetensors", "model.safetensors.index.json"
BIN_SINGLE, BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
DEFAULT_MAX_SHARD_BYTES = 10 * 2**30  # official save_pretrained(max_shard_size="10GB")
HUB_PATTERNS = ("*.json", "*.safetensors", "*.bin", "tokenizer/*", "*.yaml", "*.ckpt")


def resolve_source(source: str | Path) -> Path:
    """A local folder, or `owner/name[/subfolder...]` on the model hub -> local folder."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    text = str(source)
    parts = text.split("/")
    if len(parts) >= 2 and not text.startswith((".", "/", "~")) and not path.exists():
        repo, sub = "/".join(parts[:2]), "/".join(parts[2:])
        patterns = [f"{sub}/{p}" if sub else p for p in HUB_PATTERNS]
        try:
            root = Path(snapshot_download(repo, allow_patterns=patterns))
        except Exception as err:
            raise FileNotFoundError(f"could not download {text!r} from the model hub ({type(err).__name__}: {err}); "
                                    "pass a local folder instead") from err
        folder = root / sub if sub else root
        if not folder.is_dir():
            raise FileNotFoundError(f"hub repo {repo!r} has no folder {sub!r}")
        return folder
    raise FileNotFoundError(f"checkpoint {text!r} is neither a local folder nor a hub id (owner/name[/subfolder])")


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a folder, in the order of the formats listed in the module docstring."""
    for single, index in ((SAFE_SINGLE, SAFE_INDEX), (BIN_SINGLE, BIN_INDEX)):
        if (folder / index).is_file():
            weight_map = _read_json(folder / index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise InputFileError(folder / index, "expected a mapping of tensor name -> shard file", "weight_map")
            files = [folder / name for name in sorted(set(weight_map.values()))]
            absent = [f.name for f in files if not f.is_file()]
            if absent:
                raise FileNotFoundError(f"{folder / index} lists missing shard(s) {absent}")
            return files
        if (folder / single).is_file():
            return [folder / single]
    shards = sorted(folder.glob("model-*-of-*.safetensors")) or sorted(folder.glob("pytorch_model-*-of-*.bin"))
    if shards:
        return shards
    raise FileNotFoundError(f"{folder}: no {SAFE_SINGLE}, {SAFE_INDEX}, {BIN_SINGLE} or {BIN_INDEX}")


def read_state_dict(folder: str | Path, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder on CPU (floating tensors cast to `dtype` shard by shard)."""
    state: dict[str, torch.Tensor] = {}
    for f in weight_files(Path(folder)):
        if f.suffix == ".safetensors":
            try:
                part = load_file(str(f), device="cpu")
            except Exception as err:  # noqa: BLE001 - SafetensorError, OSError for a truncated / corrupt file
                raise InputFileError(f, f"corrupt or truncated safetensors file ({err})") from None
        else:
            try:
                part = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
            except Exception as err:  # noqa: BLE001 - refused global, truncated zip, bad pickle
                line = next((ln for ln in str(err).splitlines() if "WeightsUnpickler" in ln), str(err)[:300])
                raise InputFileError(f, f"cannot be read as plain tensors, refused or corrupt ({line.strip()})") from None
        for k, t in part.items():
            state[k] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
    return state


def read_config(folder: str | Path) -> ModelConfig:
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a checkpoint folder needs the HF Chameleon config.json")
    data = _read_json(path)
    try:
        return convert.config_from_hf(data)
    except (KeyError, TypeError, ValueError) as err:
        raise InputFileError(path, f"not a Chameleon config ({type(err).__name__}: {err})") from None


def _read_json(path: Path) -> dict:
    """A JSON object from `path`, or an InputFileError naming it."""
    try:
        data = json.loads(Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputFileError(path, f"not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise InputFileError(path, f"expected a JSON object, got {type(data).__name__}")
    return data


@dataclass
class Loaded:
    model: Transformer
    folder: Path
    extras: dict = field(default_factory=dict)  # non-backbone tensors, e.g. RynnVLA-002 action_head.*
    dropped: list = field(default_factory=list)  # keys ignored on purpose (model.vqmodel.*)


def load_checkpoint(source: str | Path, dtype: torch.dtype | None = None, device="cpu",
                    mask_image_logits: bool = False, **overrides) -> Loaded:
    """Build the Transformer of `source`'s config.json and load its weights (see load_model)."""
    folder = resolve_source(source)
    cfg = read_config(folder)
    state = read_state_dict(folder, dtype)
    backbone, extras, dropped = convert.split_state_dict(state)
    rows = convert.qk_norm_rows(backbone)
    if rows and rows != cfg.model_parallel_size and not convert.heads_share_qk_norm(backbone, cfg.model_parallel_size):
        log.warning("%s: q/k-norm parameters differ per head; using model_parallel_size=%d", folder, rows)
        overrides.setdefault("model_parallel_size", rows)
    for k, v in dict(overrides, mask_image_logits=mask_image_logits).items():
        if not hasattr(cfg, k):
            raise TypeError(f"unknown ModelConfig override {k!r}")
        setattr(cfg, k, v)
    cfg.__post_init__()
    _check_layer_count(folder / CONFIG_NAME, cfg, backbone)
    model_state = convert.to_model_state(backbone, cfg)
    with torch.device("meta"):
        model = Transformer(cfg)
    _check_shapes(folder / CONFIG_NAME, model, model_state)
    model.load_state_dict(model_state, strict=True, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    vocab_map = cfg.extra.get("vocabulary_map")
    if isinstance(vocab_map, dict):  # official config.json carries the image-token names
        model.set_image_token_ids(sorted(i for n, i in vocab_map.items() if n.startswith("IMGIMG")))
    if dropped:
        log.info("%s: ignored %d tensors (%s...)", folder, len(dropped), dropped[0])
    return Loaded(model.eval(), folder, extras, dropped)


def _config_field(key: str, axis: int) -> str:
    """The config.json key that sets axis `axis` of tensor `key` (for the mismatch message)."""
    if key in ("model.embed_tokens.weight", "lm_head.weight") and axis == 0:
        return "vocab_size"
    if ".mlp." in key and (axis == 0) == key.endswith(("gate_proj.weight", "up_proj.weight")):
        return "intermediate_size"
    return "hidden_size"


def _check_layer_count(path: Path, cfg: ModelConfig, state: dict[str, torch.Tensor]) -> None:
    """config.json's layer count is the weights' (a missing tensor of a layer stays the weights' KeyError)."""
    layers = {int(m.group(1)) for k in state if (m := re.match(r"model\.layers\.(\d+)\.", k))}
    if layers and len(layers) != cfg.n_layers:
        raise InputFileError(path, f"{cfg.n_layers} layers, but the weights hold {len(layers)}; the config is not "
                                   "the one of these weights", "num_hidden_layers")


def _check_shapes(path: Path, model: Transformer, state: dict[str, torch.Tensor]) -> None:
    """Every tensor has the shape config.json implies; else one line naming the key, not load_state_dict's dump."""
    for key, want in model.state_dict().items():
        got = state[key].shape
        if got != want.shape:
            axis = next((i for i, (a, b) in enumerate(zip(got, want.shape)) if a != b), 0)
            raise InputFileError(path, f"the weights' {key} is {tuple(got)} but this config gives "
                                       f"{tuple(want.shape)}; the config is not the one of these weights",
                                 _config_field(key, axis))


def load_model(source: str | Path, dtype: torch.dtype | None = None, device="cpu", **kwargs) -> Transformer:
    """Official HF-layout checkpoint (local folder or hub id) -> Transformer in eval mode.

    `dtype=None` keeps the stored dtype. `mask_image_logits` defaults to False (as every released
    WorldVLA script runs); ModelConfig overrides (e.g. dropout=0.05) are keyword arguments.
    """
    return load_checkpoint(source, dtype, device, **kwargs).model


def _shards(state: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards, current, size = [], {}, 0
    for k, t in state.items():
        n = t.numel() * t.element_size()
        if current and size + n > max_bytes:
            shards.append(current)
            current, size = {}, 0
        current[k], size = t, size + n
    return shards + [current]


def save_state_dict(state: dict[str, torch.Tensor], cfg: ModelConfig, folder: str | Path,
                    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, extras: dict | None = None) -> Path:
    """Write config.json + safetensors (sharded with an index above `max_shard_bytes`), official names."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {k: t.detach().to("cpu").contiguous().clone() for k, t in convert.from_model_state(state).items()}
    out.update({k: t.detach().to("cpu").contiguous().clone() for k, t in (extras or {}).items()})
    hf = convert.config_to_hf(cfg)
    dtypes = {t.dtype for t in out.values() if t.is_floating_point()}
    if len(dtypes) == 1:
        hf["torch_dtype"] = str(dtypes.pop()).removeprefix("torch.")
    (folder / CONFIG_NAME).write_text(json.dumps(hf, indent=2, sort_keys=True))
    for stale in list(folder.glob("model*.safetensors")) + [folder / SAFE_INDEX]:
        stale.unlink(missing_ok=True)
    shards = _shards(out, max_shard_bytes)
    if len(shards) == 1:
        save_file(shards[0], str(folder / SAFE_SINGLE), metadata={"format": "pt"})
        return folder
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    total = sum(t.numel() * t.element_size() for t in out.values())
    (folder / SAFE_INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                indent=2))
    return folder


def save_model(model: Transformer, folder: str | Path, dtype: torch.dtype | None = None,
               max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, extras: dict | None = None) -> Path:
    """`model` -> `folder` in the official layout (config.json + safetensors), optionally cast to `dtype`."""
    state = {k: (t.to(dtype) if dtype is not None and t.is_floating_point() else t)
             for k, t in model.state_dict().items()}
    return save_state_dict(state, model.cfg, folder, max_shard_bytes, extras)
