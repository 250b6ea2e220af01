"""The static-shape wrapper of the decode step (worldvla.model.generate.step) that CUDA can capture as one
graph (gpt-fast's recipe): the step function is the same, only how it is run differs.

What makes a step capturable, and what this module does for it:
- static KV caches per (batch bucket, cache bucket), allocated once and kept across calls (graphs hold
  their addresses; the eager path frees and re-allocates them per call instead);
- the key length is the whole cache bucket (masks are S = bucket wide), never sliced per step;
- every per-step input (token ids, positions, mask rows) is copied in place into preallocated tensors,
  and the step's outputs (chosen ids, grammar flag) are written into preallocated ones: the caller reads
  them on the device;
- the greedy choice (argmax over the allowed ids) is part of the step, so nothing returns to the host.

On CUDA with `capture=True` each (batch bucket, cache bucket, query rows, head, grammar) gets one explicit
`torch.cuda.CUDAGraph` (warm-up on a side stream, then capture; all graphs share one memory pool). On
CPU the same code runs without capture (optionally with each decoder layer through one `torch.compile`d
function shared by all layers): the tests compare it token for token with the eager reference step.

Batch buckets: a batch of B prompts runs as the next size in BATCH_BUCKETS (the caller pads with copies
of a real prompt and drops their rows), so a long evaluation replays a handful of graphs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch

from worldvla.model.transformer import KVCache, Transformer

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
# (batch, cache) buckets kept per model, the least recently used going first: an evaluation with 16 workers
# uses batch buckets 1..16 at two prompt lengths (first query: one frame), ~20 GB of 7B bf16 caches in all
KEPT_CACHE_BUCKETS = 10
WARMUP_RUNS = 2  # eager runs on a side stream before a capture (cuBLAS / allocator set-up)


def batch_bucket(batch: int) -> int:
    """Smallest bucket >= batch (multiples of the largest bucket beyond it)."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    for size in BATCH_BUCKETS:
        if batch <= size:
            return size
    top = BATCH_BUCKETS[-1]
    return -(-batch // top) * top


def _head_key(head) -> tuple:
    """A step's `head` (generate.choose): None, an inclusive (lo, hi) id range or a 1-D id tensor."""
    if head is None:
        return ("full",)
    if isinstance(head, tuple):
        return ("range", int(head[0]), int(head[1]))
    return ("ids", head.data_ptr(), head.numel())  # the same id tensor object is passed at every step


class StepProgram:
    """One static step shape: preallocated inputs and output, optionally captured as a CUDA graph."""

    def __init__(self, fn: Callable, model: Transformer, batch: int, rows: int, keys: int, head, grammar: bool,
                 run_layer: Callable | None, capture: bool, pool):
        device = model.device
        self.fn, self.model, self.head, self.grammar, self.run_layer = fn, model, head, grammar, run_layer
        self.tokens = torch.zeros(batch, rows, dtype=torch.long, device=device)
        self.pos = torch.zeros(batch, rows, dtype=torch.long, device=device)
        self.mask = torch.zeros(batch, 1, rows, keys, dtype=model.dtype, device=device)
        self.out = torch.zeros(batch, rows, dtype=torch.long, device=device)
        self.flag = torch.zeros(batch, rows, dtype=torch.bool, device=device) if grammar else None
        self.capture, self.pool = capture, pool
        self.graph: torch.cuda.CUDAGraph | None = None

    def _body(self) -> None:
        ids, flag = self.fn(self.model, self.tokens, self.pos, self.mask, self.head, self.grammar, self.run_layer)
        self.out.copy_(ids)
        if self.flag is not None:
            self.flag.copy_(flag)

    def _capture(self) -> None:
        side = torch.cuda.Stream(device=self.tokens.device)
        side.wait_stream(torch.cuda.current_stream(self.tokens.device))
        with torch.cuda.stream(side):  # warm-up: the same writes as the real step (idempotent)
            for _ in range(WARMUP_RUNS):
                self._body()
        torch.cuda.current_stream(self.tokens.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            self._body()
        self.graph = graph

    def __call__(self, tokens: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor):
        """Copy the step's inputs in place, run it; returns the static outputs (ids (B, rows), flag or None):
        read them before the next call."""
        self.tokens.copy_(tokens)
        self.pos.copy_(pos)
        self.mask.copy_(mask)
        if not self.capture:
            self._body()
        elif self.graph is None:
            self._capture()
            self.graph.replay()  # the capture itself ran nothing
        else:
            self.graph.replay()
        return self.out, self.flag


class CacheBucket:
    """The static KV caches of one (batch, cache length) bucket and its step programs."""

    def __init__(self, model: Transformer, batch: int, keys: int):
        cfg = model.cfg
        self.batch, self.keys = batch, keys
        self.caches = [KVCache(batch, cfg.n_kv_heads, keys, cfg.head_dim, model.dtype, model.device)
                       for _ in model.layers]
        self.programs: dict[tuple, StepProgram] = {}

    def install(self, model: Transformer) -> None:
        for layer, cache in zip(model.layers, self.caches):
            layer.self_attn.kv_cache = cache
        model.cache_shape = (self.batch, self.keys)


class StaticDecoder:
    """Per model: cache buckets (LRU) and their step programs. Get it with `static_decoder(model, ...)`."""

    def __init__(self, model: Transformer, capture: bool, run_layer: Callable | None = None):
        if capture and model.device.type != "cuda":
            raise ValueError(f"CUDA-graph capture needs a CUDA model, this one is on {model.device}")
        self.model, self.capture, self.run_layer = model, capture, run_layer
        self.buckets: OrderedDict[tuple[int, int], CacheBucket] = OrderedDict()
        self.constants: dict[tuple, torch.Tensor] = {}
        self.pool = torch.cuda.graph_pool_handle() if capture else None
        self.fingerprint = self._fingerprint()
        if model.image_token_ids is not None:  # model.logits masks with it: keep it on the device
            model.image_token_ids = model.image_token_ids.to(model.device)

    def _fingerprint(self) -> tuple:
        """Graphs hold the weights' addresses: moved or re-cast weights invalidate them."""
        m = self.model
        return (m.lm_head.weight.data_ptr(), m.model.embed_tokens.weight.data_ptr(), m.dtype, m.device)

    def stale(self) -> bool:
        return self._fingerprint() != self.fingerprint

    def constant(self, ids: torch.Tensor) -> torch.Tensor:
        """One device tensor per distinct id list (a head's ids), so its step programs are found again."""
        key = tuple(ids.tolist())
        found = self.constants.get(key)
        if found is None:
            found = self.constants[key] = ids.to(self.model.device, torch.long).clone()
        return found

    def bucket(self, batch: int, keys: int) -> CacheBucket:
        """The (batch, keys) bucket, installed as the model's caches (batch and keys already bucketed)."""
        key = (batch, keys)
        found = self.buckets.pop(key, None)
        if found is None:
            while len(self.buckets) >= KEPT_CACHE_BUCKETS:
                self.buckets.popitem(last=False)  # frees its caches and graphs
            found = CacheBucket(self.model, batch, keys)
        self.buckets[key] = found
        found.install(self.model)
        return found

    def program(self, fn: Callable, bucket: CacheBucket, rows: int, head, grammar: bool) -> StepProgram:
        key = (fn, rows, _head_key(head), bool(grammar))
        prog = bucket.programs.get(key)
        if prog is None:
            prog = bucket.programs[key] = StepProgram(fn, self.model, bucket.batch, rows, bucket.keys, head,
                                                      bool(grammar), self.run_layer, self.capture, self.pool)
        return prog

    def runner(self, fn: Callable, batch: int, keys: int) -> StaticRunner:
        """`fn` (the decode step) run statically in the (batch, keys) bucket, installed as the model's caches."""
        return StaticRunner(self, fn, self.bucket(batch, keys))


class StaticRunner:
    """`run(tokens, pos, mask, head, grammar=False) -> (ids, flag)`, the step's own signature, through the
    bucket's static programs; `constant(ids)` gives a head's id tensor that finds its programs again."""

    def __init__(self, decoder: StaticDecoder, fn: Callable, bucket: CacheBucket):
        self.decoder, self.fn, self.bucket = decoder, fn, bucket

    def __call__(self, tokens, pos, mask, head, grammar: bool = False):
        return self.decoder.program(self.fn, self.bucket, tokens.shape[1], head, grammar)(tokens, pos, mask)

    def constant(self, ids: torch.Tensor) -> torch.Tensor:
        return self.decoder.constant(ids)


def static_decoder(model: Transformer, capture: bool, run_layer: Callable | None = None) -> StaticDecoder:
    """The model's StaticDecoder for these settings, one per (capture, run_layer), kept on the model so
    that alternating settings (benchmarks) does not re-capture; rebuilt if the weights moved."""
    decoders = model.__dict__.setdefault("_static_decoders", {})
    key = (capture, id(run_layer))
    dec = decoders.get(key)
    if dec is None or dec.run_layer is not run_layer or dec.stale():
        if dec is not None:
            dec.buckets.clear()
        dec = decoders[key] = StaticDecoder(model, capture, run_layer)
    model._static_decoder = dec  # the one used last (tests, benchmarks)
    return dec
