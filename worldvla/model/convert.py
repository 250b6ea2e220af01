"""Checkpoint key conversion: official WorldVLA / Lumina-mGPT / transformers Chameleon <-> our Transformer.

Our parameter names *are* the official Hugging Face Chameleon names (official_format.md §6.3), so the
table below is a list of templates checked in both directions rather than a renaming. What does need
converting:
- wrapper prefixes left by training tools (`module.`, `_orig_mod.`, `_checkpoint_wrapped_module.`,
  `_fsdp_wrapped_module.`) are stripped;
- `model.vqmodel.*` (the VQ-GAN inside Lumina-mGPT-7B-768; deleted from trained WorldVLA checkpoints) is
  dropped — we tokenise with the separate vqgan.ckpt;
- `action_head.*` (RynnVLA-002) and any other non-backbone keys are returned separately (`extras`);
- q/k-norm weight/bias come as (model_parallel_size, head_dim) in the Lumina-mGPT code the checkpoints
  were trained with, as (n_heads, head_dim) in transformers >= 4.45, or as (head_dim,): `qk_norm_rows`
  maps any of them to the model's row count (see `fit_qk_norm`).
config.json (the HF Chameleon keys) <-> `ModelConfig`: `config_from_hf` / `config_to_hf`; keys the model
does not use (e.g. the official `z_loss_weight`) travel in `ModelConfig.extra` and are written back.
"""

from __future__ import annotations

import re

import torch

from worldvla.model.config import ModelConfig

# Official key templates ({i} = layer index); every backbone tensor must match exactly one.
GLOBAL_KEYS = ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight")
LAYER_KEYS = (
    "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
    "self_attn.q_norm.weight", "self_attn.q_norm.bias", "self_attn.k_norm.weight", "self_attn.k_norm.bias",
    "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
    "input_layernorm.weight", "post_attention_layernorm.weight",
)
OPTIONAL_LAYER_KEYS = (  # present only with attention_bias / mlp_bias
    "self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias", "self_attn.o_proj.bias",
    "mlp.gate_proj.bias", "mlp.up_proj.bias", "mlp.down_proj.bias",
)
WRAPPER_PARTS = ("_orig_mod.", "_checkpoint_wrapped_module.", "_fsdp_wrapped_module.")
DROPPED_PREFIXES = ("model.vqmodel.",)
LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
QK_NORM_RE = re.compile(r"^model\.layers\.\d+\.self_attn\.[qk]_norm\.(weight|bias)$")


def clean_key(key: str) -> str:
    """Remove wrapper prefixes added by DDP / torch.compile / activation checkpointing / FSDP."""
    for part in WRAPPER_PARTS:
        key = key.replace(part, "")
    return key.removeprefix("module.")


def is_backbone_key(key: str) -> bool:
    if key in GLOBAL_KEYS:
        return True
    m = LAYER_RE.match(key)
    return bool(m) and (m.group(2) in LAYER_KEYS or m.group(2) in OPTIONAL_LAYER_KEYS)


def split_state_dict(state: dict[str, torch.Tensor]) -> tuple[dict, dict, list[str]]:
    """(backbone tensors, extra tensors such as action_head.*, dropped keys), names cleaned."""
    backbone, extras, dropped = {}, {}, []
    for raw, tensor in state.items():
        key = clean_key(raw)
        if key.startswith(DROPPED_PREFIXES):
            dropped.append(key)
        elif is_backbone_key(key):
            backbone[key] = tensor
        else:
            extras[key] = tensor
    return backbone, extras, dropped


def qk_norm_rows(state: dict[str, torch.Tensor]) -> int | None:
    """Row count of the q-norm parameters in a checkpoint (None if it has none)."""
    for key, t in state.items():
        if QK_NORM_RE.match(key):
            return 1 if t.ndim == 1 else t.shape[0]
    return None


def fit_qk_norm(t: torch.Tensor, rows: int, key: str) -> torch.Tensor:
    """(head_dim,), (g, head_dim) -> (rows, head_dim). Expanding repeat-interleaves (each shard's row
    covers consecutive heads); compressing requires the merged rows to be identical."""
    if t.ndim == 1:
        t = t[None]
    g = t.shape[0]
    if g == rows:
        return t
    if rows % g == 0:
        return t.repeat_interleave(rows // g, dim=0)
    if g % rows == 0:
        grouped = t.view(rows, g // rows, t.shape[1])  # (rows, heads per row, D)
        if not torch.equal(grouped, grouped[:, :1].expand_as(grouped)):
            raise ValueError(f"{key}: {g} distinct per-head rows cannot be merged into {rows}; "
                             f"load with model_parallel_size={g}")
        return grouped[:, 0].contiguous()
    raise ValueError(f"{key}: {g} rows do not fit model_parallel_size={rows}")


def heads_share_qk_norm(state: dict[str, torch.Tensor], rows: int) -> bool:
    """True if every q/k-norm tensor can be merged to `rows` rows without loss."""
    try:
        for key, t in state.items():
            if QK_NORM_RE.match(key):
                fit_qk_norm(t, rows, key)
    except ValueError:
        return False
    return True


def to_model_state(state: dict[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
    """Official (cleaned) backbone tensors -> the state dict of `Transformer(cfg)`, shapes fitted."""
    out = {}
    for key, t in state.items():
        out[key] = fit_qk_norm(t, cfg.model_parallel_size, key) if QK_NORM_RE.match(key) else t
    if "lm_head.weight" not in out and cfg.tie_word_embeddings and "model.embed_tokens.weight" in out:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    check_keys(out, cfg)
    return out


def expected_keys(cfg) -> list[str]:
    keys = list(GLOBAL_KEYS)
    layer = list(LAYER_KEYS)
    if cfg.attention_bias:
        layer += [k for k in OPTIONAL_LAYER_KEYS if k.startswith("self_attn.")]
    if cfg.mlp_bias:
        layer += [k for k in OPTIONAL_LAYER_KEYS if k.startswith("mlp.")]
    keys += [f"model.layers.{i}.{k}" for i in range(cfg.n_layers) for k in layer]
    return keys


def check_keys(state: dict, cfg) -> None:
    want = set(expected_keys(cfg))
    missing, unexpected = sorted(want - set(state)), sorted(set(state) - want)
    if missing or unexpected:
        raise KeyError(
            f"checkpoint does not match the config ({cfg.n_layers} layers): missing {missing[:6]}"
            f"{' ...' if len(missing) > 6 else ''} ({len(missing)}), unexpected {unexpected[:6]}"
            f"{' ...' if len(unexpected) > 6 else ''} ({len(unexpected)})"
        )


def from_model_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict -> official layout (names cleaned; tied lm_head kept as its own tensor)."""
    out = {}
    for raw, t in state.items():
        key = clean_key(raw)
        if is_backbone_key(key) or not key.startswith("model."):
            out[key] = t
    return out


# -- config.json (official HF Chameleon keys) <-> ModelConfig ------------------------------------
HF_RENAMED = {  # config.json key -> ModelConfig field
    "vocab_size": "vocab_size", "hidden_size": "dim", "num_hidden_layers": "n_layers", "num_attention_heads": "n_heads",
    "num_key_value_heads": "n_kv_heads", "intermediate_size": "intermediate_size",
    "max_position_embeddings": "max_seq_len", "rope_theta": "rope_theta",
}
HF_SAME_NAME = ("rms_norm_eps", "model_parallel_size", "swin_norm", "attention_bias", "mlp_bias",
                "tie_word_embeddings", "dropout", "mask_image_logits", "initializer_range")
HF_TOKEN_IDS = ("pad_token_id", "bos_token_id", "eos_token_id")  # None is a valid value for these
HF_REWRITTEN = ("architectures", "model_type", "attention_dropout")  # config_to_hf writes its own values


def config_from_hf(hf: dict) -> ModelConfig:
    """ModelConfig from a config.json dict; unknown keys are kept in `extra`. Refuses RoPE scaling and
    activations other than silu (Chameleon has neither), rather than loading a model that differs."""
    hf = dict(hf)
    rope = hf.pop("rope_parameters", None) or {}  # transformers >= 5 spelling of rope_theta
    scaling = hf.pop("rope_scaling", None)
    if scaling or rope.get("rope_type", "default") != "default":
        raise ValueError(f"RoPE scaling {scaling or rope} is not supported (Chameleon uses none)")
    if hf.pop("hidden_act", "silu") != "silu":
        raise ValueError("only hidden_act=silu is supported (Chameleon's SwiGLU)")
    kwargs = {}
    for key, name in list(HF_RENAMED.items()) + [(n, n) for n in HF_SAME_NAME]:
        value = hf.pop(key, None)
        if value is not None:
            kwargs[name] = value
    if "rope_theta" not in kwargs and "rope_theta" in rope:
        kwargs["rope_theta"] = rope["rope_theta"]
    kwargs.setdefault("n_kv_heads", kwargs.get("n_heads", ModelConfig.n_heads))  # no GQA unless stated
    kwargs["rope_theta"] = float(kwargs.get("rope_theta", ModelConfig.rope_theta))
    kwargs["dropout"] = float(kwargs.get("dropout", 0.0))
    for key in HF_REWRITTEN:
        hf.pop(key, None)
    for key in HF_TOKEN_IDS:
        if key in hf:
            kwargs[key] = hf.pop(key)
    return ModelConfig(**kwargs, extra=hf)


def config_to_hf(cfg: ModelConfig) -> dict:
    """config.json dict of `cfg` (the official XLLMX architecture name; `extra` keys written back)."""
    out = {"architectures": ["ChameleonXLLMXForConditionalGeneration"], "model_type": "chameleon",
           "hidden_act": "silu", "rope_scaling": None, "attention_dropout": 0.0}
    out.update({key: getattr(cfg, name) for key, name in HF_RENAMED.items()})
    out.update({name: getattr(cfg, name) for name in HF_SAME_NAME})
    out.update({key: getattr(cfg, key) for key in HF_TOKEN_IDS})
    return {**cfg.extra, **out}
