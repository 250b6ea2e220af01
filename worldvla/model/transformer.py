"""Compact Chameleon decoder (the WorldVLA / Lumina-mGPT backbone), gpt-fast style.

    logits = Transformer(cfg)(tokens (B, L), input_pos=None, mask=None)   # (B, L, V)

Architecture (official_format.md §6.2): token embedding -> N pre-norm decoder layers (RMSNorm,
attention with per-head q/k LayerNorm applied before rotate-half RoPE, SwiGLU MLP) -> RMSNorm ->
untied LM head. `swin_norm=True` moves the norms after the sub-blocks (Chameleon-30B variant).
Lumina-mGPT adds `dropout` on both residual branches (0.05 in the WorldVLA runs).

Parameter names are the Hugging Face Chameleon names (`model.layers.{i}.self_attn.q_proj.weight`, ...)
so official checkpoints load without renaming (worldvla.model.convert, which also reads and writes
config.json). Differences from
transformers' `ChameleonForConditionalGeneration`, which the parity tests compare against:
- image-code logits are *not* masked unless `mask_image_logits` (the released WorldVLA runs pass
  `--unmask_image_logits`; the world model must be able to emit image codes);
- q/k-norm affine parameters keep the original (model_parallel_size, head_dim) shape and are
  repeat-interleaved over heads at run time, as in the Lumina-mGPT code the checkpoints were trained
  with (transformers >= 4.45 stores them expanded to (n_heads, head_dim); convert.py handles both);
- a static KV cache (`setup_caches`). `mask` is an additive float mask (0 = may attend, a large negative
  number = may not; worldvla.model.masks builds it from the action rule: `to_additive`) of shape
  (L, S), (B, L, S) or (B, 1|H, L, S), or None for plain causal attention (SDPA's causal kernel, no mask
  tensor). Cache slot = position. The cache is used iff caches are set up and `input_pos` is given;
  queries then attend to slots [0, S) where S is the mask's last dimension; mask=None there means a
  causal prefill of slots [0, L) (input_pos = arange(L)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from worldvla.model.config import ModelConfig

QK_NORM_EPS = 1e-5  # hard-coded in Chameleon's qk LayerNorm (not the config's rms_norm_eps)


# -- building blocks ---------------------------------------------------------------------------
class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:  # no cast calls: they cost dispatch time in every decode step
            return self.weight * F.rms_norm(x, x.shape[-1:], eps=self.eps)
        h = F.rms_norm(x.float(), x.shape[-1:], eps=self.eps)  # x * rsqrt(mean(x^2) + eps) in fp32
        return self.weight * h.to(x.dtype)  # cast back before the weight, as transformers does


class QKNorm(nn.Module):
    """Chameleon's qk LayerNorm: statistics per head over head_dim, affine parameters per shard."""

    def __init__(self, n_heads: int, head_dim: int, groups: int):
        super().__init__()
        self.repeat = n_heads // groups  # heads that share one parameter row
        self.weight = nn.Parameter(torch.ones(groups, head_dim))
        self.bias = nn.Parameter(torch.zeros(groups, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, H, D)
        B, L, H, D = x.shape
        if self.weight.shape[0] == 1:  # one shard (7B): the same affine for every head, fused
            return F.layer_norm(x, (D,), self.weight[0], self.bias[0], eps=QK_NORM_EPS)
        x = F.layer_norm(x, (D,), eps=QK_NORM_EPS).view(B, L, H // self.repeat, self.repeat, D)  # heads by shard
        x = x * self.weight[:, None] + self.bias[:, None]  # (groups, 1, D) broadcast over each shard's heads
        return x.view(B, L, H, D)


def rope_table(max_len: int, head_dim: int, theta: float, device=None) -> torch.Tensor:
    """(2, max_len, D) fp32 cos and signed sin of rotate-half RoPE, inv_freq = theta^(-2i/D) (transformers'
    default). The sin half that multiplies -x2 is stored negated (see apply_rope)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    freqs = torch.arange(max_len, device=device, dtype=torch.float32)[:, None] * inv_freq  # (max_len, D/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (max_len, D)
    sign = torch.ones(head_dim, device=device)
    sign[: head_dim // 2] = -1.0
    return torch.stack([emb.cos(), emb.sin() * sign])


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:  # x (B, H, L, D)
    """Rotate-half RoPE, x * cos + [-x2, x1] * sin, written as x * cos + [x2, x1] * [-sin, sin]: one roll
    instead of chunk + neg + cat (decode steps are dispatch-bound); bit-identical (negation is exact)."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin


class KVCache(nn.Module):
    """Static cache of keys/values, slot = position: (B, H_kv, max_len, D)."""

    def __init__(self, batch: int, n_kv_heads: int, max_len: int, head_dim: int, dtype, device):
        super().__init__()
        shape = (batch, n_kv_heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Write k, v (B, H_kv, L, D) at `input_pos` ((L,) or (B, L)); returns the whole cache."""
        if k.shape[0] != self.k.shape[0]:
            raise ValueError(f"batch {k.shape[0]} does not match the cache batch {self.k.shape[0]}; call setup_caches")
        if input_pos.ndim == 2 and input_pos.shape[0] == 1:
            input_pos = input_pos[0]  # one row: the cheaper index_copy_ path
        if input_pos.ndim == 1:
            self.k.index_copy_(2, input_pos, k)
            self.v.index_copy_(2, input_pos, v)
        else:  # per-row positions
            index = input_pos[:, None, :, None].expand_as(k)  # (B, H_kv, L, D)
            self.k.scatter_(2, index, k)
            self.v.scatter_(2, index, v)
        return self.k, self.v


def attend(q, k, v, mask: torch.Tensor | None) -> torch.Tensor:
    """q (B, H, L, D), k/v (B, H_kv, S, D); mask: None (causal, L == S) or additive (see the module docstring)."""
    gqa = q.shape[1] != k.shape[1]
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    if mask.ndim == 2:
        mask = mask[None, None]  # (1, 1, L, S)
    elif mask.ndim == 3:
        mask = mask[:, None]  # (B, 1, L, S)
    if q.device.type == "cuda":  # cuDNN's fused attention failed on these masks in bf16 (H200, torch 2.11)
        with sdpa_kernel(MASKED_SDPA_BACKENDS):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


MASKED_SDPA_BACKENDS = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=cfg.attention_bias)
        self.q_norm = QKNorm(cfg.n_heads, cfg.head_dim, cfg.model_parallel_size)
        self.k_norm = QKNorm(cfg.n_kv_heads, cfg.head_dim, cfg.model_parallel_size)
        self.kv_cache: KVCache | None = None

    def forward(self, x, cos, sin, mask, input_pos):
        B, L, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(B, L, self.n_heads, self.head_dim))  # (B, L, H, D)
        k = self.k_norm(self.k_proj(x).view(B, L, self.n_kv, self.head_dim))  # (B, L, H_kv, D)
        v = self.v_proj(x).view(B, L, self.n_kv, self.head_dim)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, L, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if input_pos is not None:  # cached decoding: keys are cache slots [0, S)
            k, v = self.kv_cache.update(input_pos, k, v)
            S = L if mask is None else mask.shape[-1]  # None: a causal prefill of slots [0, L)
            k, v = k[:, :, :S], v[:, :, :S]
        y = attend(q, k, v, mask)  # (B, H, L, D)
        return self.o_proj(y.transpose(1, 2).reshape(B, L, self.n_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.dim, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.dim, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, dim) -> (B, L, dim), SwiGLU at intermediate_size
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg  # shared object: a changed cfg.dropout takes effect at the next forward
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.dim, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.rms_norm_eps)

    def drop(self, x: torch.Tensor) -> torch.Tensor:
        p = self.cfg.dropout if self.training else 0.0
        return F.dropout(x, p) if p > 0 else x

    def forward(self, x, cos, sin, mask=None, input_pos=None):
        if self.cfg.swin_norm:  # x + norm(f(x))
            h = x + self.drop(self.input_layernorm(self.self_attn(x, cos, sin, mask, input_pos)))
            return h + self.drop(self.post_attention_layernorm(self.mlp(h)))
        h = x + self.drop(self.self_attn(self.input_layernorm(x), cos, sin, mask, input_pos))
        return h + self.drop(self.mlp(self.post_attention_layernorm(h)))


class Backbone(nn.Module):
    """Holds the `model.*` parameters (embedding, layers, final norm) under their official names."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim, padding_idx=cfg.pad_token_id)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.rms_norm_eps)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.image_token_ids: torch.Tensor | None = None  # for mask_image_logits (set_image_token_ids)
        self.cache_shape: tuple[int, int] | None = None  # (batch, max_len) after setup_caches
        self._rope: torch.Tensor | None = None  # (2, max_seq_len, head_dim) cos/sin, made on first use
        self.reset_parameters()

    @property
    def layers(self) -> nn.ModuleList:
        """The decoder blocks (unit of activation checkpointing / FSDP wrapping)."""
        return self.model.layers

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @torch.no_grad()
    def reset_parameters(self, std: float | None = None) -> None:
        """transformers' init: normal(0, initializer_range) for linears/embedding, norms at identity."""
        std = self.cfg.initializer_range if std is None else std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, std)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
        pad = self.cfg.pad_token_id
        if pad is not None and not self.cfg.tie_word_embeddings:
            self.model.embed_tokens.weight[pad].zero_()

    def set_image_token_ids(self, ids) -> None:
        """Ids whose logits `mask_image_logits` sets to the dtype minimum (the VQ code tokens)."""
        self.image_token_ids = torch.as_tensor(list(ids), dtype=torch.long)

    # -- KV cache --------------------------------------------------------------------------------
    def setup_caches(self, batch: int, max_len: int, dtype: torch.dtype | None = None, device=None) -> None:
        if max_len > self.cfg.max_seq_len:
            raise ValueError(f"cache length {max_len} exceeds max_seq_len {self.cfg.max_seq_len}")
        dtype, device = dtype or self.dtype, torch.device(device or self.device)
        cache = self.layers[0].self_attn.kv_cache
        if cache is not None and cache.k.shape[0] == batch and cache.k.shape[2] == max_len \
                and cache.k.dtype == dtype and cache.k.device == device:
            return  # same shape: reuse (stale slots are never attended: masks only open written slots)
        for layer in self.layers:
            attn = layer.self_attn
            attn.kv_cache = KVCache(batch, self.cfg.n_kv_heads, max_len, self.cfg.head_dim, dtype, device)
        self.cache_shape = (batch, max_len)

    def clear_caches(self) -> None:
        for layer in self.layers:
            layer.self_attn.kv_cache = None
        self.cache_shape = None

    # -- forward ---------------------------------------------------------------------------------
    def forward_hidden(self, tokens: torch.Tensor, input_pos: torch.Tensor | None = None,
                       mask: torch.Tensor | None = None, run_layer=None) -> torch.Tensor:
        """Final-norm hidden states (B, L, dim). `run_layer(layer, x, cos, sin, mask, input_pos)`, if given,
        runs each decoder layer (decoding passes one compiled function shared by all layers)."""
        L = tokens.shape[1]
        cached = input_pos is not None and self.cache_shape is not None
        if mask is not None and not mask.is_floating_point():
            raise TypeError(f"mask must be additive float (masks.to_additive), got {mask.dtype}")
        if input_pos is None:
            if L > self.cfg.max_seq_len:
                raise ValueError(f"{L} tokens exceed max_seq_len {self.cfg.max_seq_len}; truncate the batch")
            positions = torch.arange(L, device=tokens.device)
        else:
            positions = input_pos.to(tokens.device)
            if positions.shape[-1] != L:
                raise ValueError(f"input_pos {tuple(positions.shape)} does not match tokens {tuple(tokens.shape)}")
        if cached and mask is None and (positions.ndim != 1 or int(positions[0]) != 0):
            raise ValueError("mask=None with the cache is a causal prefill: input_pos = arange(L), one row for all")
        if mask is not None and not cached and mask.shape[-1] != L:
            raise ValueError(f"mask covers {mask.shape[-1]} keys but the input has {L} tokens (no cache in use)")
        x = self.model.embed_tokens(tokens)  # (B, L, dim)
        if self._rope is None or self._rope.device != x.device:
            self._rope = rope_table(self.cfg.max_seq_len, self.cfg.head_dim, self.cfg.rope_theta, x.device)
        pos = positions if positions.ndim == 2 else positions[None]  # (B|1, L)
        cos, sin = self._rope[:, pos].to(x.dtype)[:, :, None]  # each (B|1, 1, L, D)
        pos_arg = positions if cached else None
        run_layer = run_layer or (lambda layer, *args: layer(*args))
        for layer in self.layers:
            x = run_layer(layer, x, cos, sin, mask, pos_arg)
        return self.model.norm(x)

    def logits(self, hidden: torch.Tensor, vocab_ids: torch.Tensor | slice | None = None) -> torch.Tensor:
        """LM head (+ optional image-logit masking) on hidden states (..., dim).

        `vocab_ids` (a slice or an id tensor) computes only those columns, in that order, without
        image-logit masking: constrained decoding reads 256 of 65536 rows of the head per step."""
        if vocab_ids is not None:
            return F.linear(hidden, self.lm_head.weight[vocab_ids])
        out = self.lm_head(hidden)
        if self.cfg.mask_image_logits:
            if self.image_token_ids is None:
                raise RuntimeError("mask_image_logits=True needs set_image_token_ids(vocab.image_ids())")
            out[..., self.image_token_ids.to(out.device)] = torch.finfo(out.dtype).min
        return out

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                at: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, L) -> logits (B, L, V). See the module docstring for `input_pos` and `mask`.
        `at` (B, L) bool: only those positions' logits, packed (N, V) in row-major order: training reads
        the logits of supervised positions only, and the LM head is the largest matmul of a small model."""
        hidden = self.forward_hidden(tokens, input_pos, mask)
        return self.logits(hidden if at is None else hidden[at])
