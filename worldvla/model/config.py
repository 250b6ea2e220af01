"""ModelConfig: the Chameleon decoder's shape and settings, named as in config.json (worldvla.model.convert
maps the official keys), and its presets (`7b`, `tiny`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from worldvla import vocab as V


@dataclass
class ModelConfig:
    vocab_size: int = 65536  # Chameleon BPE + image codes (official 65536)
    dim: int = 4096  # hidden_size
    n_layers: int = 32  # num_hidden_layers
    n_heads: int = 32  # num_attention_heads (head_dim = dim / n_heads = 128)
    n_kv_heads: int = 32  # num_key_value_heads (Chameleon-7B: no GQA)
    intermediate_size: int = 11008  # SwiGLU width
    rms_norm_eps: float = 1e-5  # official config.json
    rope_theta: float = 10000.0  # official, no RoPE scaling
    max_seq_len: int = 4096  # max_position_embeddings (training truncation; eval passes 8192)
    model_parallel_size: int = 1  # rows of the q/k-norm parameters (Chameleon's shard count; 7B: 1)
    swin_norm: bool = False  # True only for the 30B variant
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    dropout: float = 0.0  # residual-branch dropout (Lumina-mGPT); 0.05 in WorldVLA training (§6.2)
    mask_image_logits: bool = False  # official runs pass --unmask_image_logits
    pad_token_id: int | None = None  # embedding padding_idx, as transformers uses it
    bos_token_id: int | None = 0
    eos_token_id: int | None = V.END_OF_TURN_ID  # generation stops at the end-of-turn token (8710)
    initializer_range: float = 0.02  # std of the random init (transformers default)
    extra: dict = field(default_factory=dict)  # other config.json keys (z_loss_weight, ...), written back unchanged

    def __post_init__(self) -> None:
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        for heads in (self.n_heads, self.n_kv_heads):
            if heads % self.model_parallel_size:
                raise ValueError(f"{heads} heads cannot be split over model_parallel_size {self.model_parallel_size}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @classmethod
    def preset(cls, name: str, **overrides) -> ModelConfig:
        """`7b` (Chameleon-7B / Lumina-mGPT-7B / WorldVLA) or `tiny` (tests, CPU benchmarks)."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; valid: {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)


PRESETS = {
    "7b": ModelConfig(),
    # 2 layers, width 64, real id ranges: vocab covers every official special id (fixtures.FIXTURE_VOCAB_SIZE)
    "tiny": ModelConfig(vocab_size=16640, dim=64, n_layers=2, n_heads=4, n_kv_heads=4, intermediate_size=176),
}
