"""The training run's typed config: model / data / train / logging sections.

Defaults are the released WorldVLA recipe (official_format.md §8); `configs/*.yaml` presets are
partial instances of `TrainConfig` (precedence: these defaults < YAML (with `base:`) < CLI
`key.sub=value`). Unknown keys are errors (worldvla.config.from_dict). `validate()` checks the
values that a type cannot express and names the field and the allowed values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal, get_args

from worldvla.config import ConfigError, literal_errors
from worldvla.recipe import SAMPLE_KINDS, Recipe, SampleKind

LossForm = Literal["official", "paper"]  # worldvla.train.loss reads it too
# the decoder layers' linears LoRA may adapt
LoraTarget = Literal["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA_TARGETS = get_args(LoraTarget)


@dataclass
class ModelOptions:
    preset: str = "7b"  # worldvla.model.config.ModelConfig preset (7b | tiny)
    overrides: dict = field(default_factory=dict)  # ModelConfig field overrides, e.g. {n_layers: 2}
    init_from: str = ""  # official HF-layout checkpoint (folder or hub id) to start from; "" = random init
    dropout: float = 0.05  # official --dropout 0.05 (§8)
    action_mask: bool = True  # WorldVLA attention mask: action blocks do not see earlier action blocks (§5)
    activation_checkpointing: bool = True  # per decoder layer, non-reentrant (official --checkpointing)
    action_head: bool = False  # RynnVLA-002 continuous action head trained jointly (L1, train.action_head_weight)
    action_head_config: dict = field(default_factory=dict)  # ActionHeadConfig overrides (official sizes by default)
    # The head's encoder in training: false = official (attends the zero padding of shorter prompts in a batch),
    # true = mask that padding. Recorded in worldvla.json action_head.mask_padding; evaluation always masks.
    action_head_mask_padding: bool = False


# The Recipe fields the data section used to spell out itself: `data.chunk_size` is now `data.recipe.chunk_size`.
RECIPE_KEYS = ("chunk_size", "history", "resolution", "action_stats", "world_action_stats", "state_stats",
               "with_state", "with_wrist")


@dataclass
class DataOptions:
    renamed: ClassVar[dict[str, str]] = {k: f"recipe.{k}" for k in RECIPE_KEYS}
    # What data.train / data.val hold. shards: pretokenized sets (pretokenize.py folders, concat.py indexes,
    # official record lists). conversations: conversation JSON files (conversations.py output) tokenised on
    # the fly with data.tokenizer and data.recipe (official "NoPretokenize"; same samples and batches).
    source: Literal["shards", "conversations"] = "shards"
    # Concatenated in order. Official order: world-model samples first, then action-model samples (§3.3).
    train: list[Path] = field(default_factory=list)
    val: list[Path] = field(default_factory=list)  # evaluated after each epoch (official val_ind / val_ood)
    kinds: list[SampleKind] = field(default_factory=lambda: list(SAMPLE_KINDS))  # sample kinds kept (ablations)
    tokenizer: Path = Path("ckpts/chameleon/tokenizer")  # text_tokenizer.json + vqgan.{yaml,ckpt}; copied into checkpoints
    # How the data was tokenised (resolution, K, history, statistics, views, state): checked against the shards
    # and written into every checkpoint as worldvla.json. RynnVLA-002's pretokenize path binned world samples
    # with `worldvla` and action samples with `rynnvla_action`: recipe.world_action_stats then differs.
    recipe: Recipe = field(default_factory=Recipe)
    max_seq_len: int = 4096  # official --max_seq_len: rows are cut at this length
    batching: Literal["random", "length_grouped"] = "length_grouped"  # random (official order) | less padding
    group_batches: int = 32  # length_grouped: global batches per sorting window
    num_workers: int = 2  # DataLoader worker processes (official 8)
    # training augmentation, not official (0 = off): each proprio-state token of a prompt moves by a uniform
    # integer in [-n, n] bins, drawn from (train.seed, epoch, sample), so that the policy does not key its
    # actions on exact state bins (worldvla/data/augment.py)
    state_jitter: int = 0
    # data.source=conversations only:
    base_dir: Path | None = None  # relative media paths of the records are resolved against this (default: cwd)
    frame_cache: Path | None = None  # a pretokenize frames/ folder to read VQ codes from (others: VQ-GAN on CPU)
    image_cache: int = 4096  # images whose tokens each loader process keeps in memory (0 = unbounded)
    resize: bool = False  # frames not at data.recipe.resolution are resized to it (pretokenize's tokenizer.resize)


@dataclass
class LoraOptions:
    # LoRA (peft) on the decoder layers' linears: the base stays frozen (bf16 on a GPU with train.precision=bf16,
    # else fp32), adapters (and a continuous action head, whole) train in fp32. Step checkpoints then hold the
    # adapters alone; the merged inference checkpoint is written at the end (or at every save, merge=every_save).
    rank: int = 0  # 0 = off (full fine-tuning)
    alpha: float = 0.0  # scaling alpha / rank; 0 = rank (scaling 1)
    dropout: float = 0.05  # on the adapters' input
    target_modules: list[LoraTarget] = field(default_factory=lambda: list(LORA_TARGETS))
    merge: Literal["end", "every_save"] = "end"  # which step folders get the merged model (eval / serve load those)


@dataclass
class TrainOptions:
    output_dir: Path = Path("outputs/run")  # logs, resolved config, checkpoints/
    epochs: float = 40.0  # official 40
    max_steps: int = 0  # > 0: stop after this many optimizer steps (smoke tests, benchmarks)
    batch_size: int = 8  # samples per process per micro-step (official 8 / GPU)
    grad_accum: int = 1  # official accum_iter 1
    lr: float = 5e-6  # official 5e-6
    min_lr: float = 5e-6  # official 5e-6: constant after warm-up
    warmup_epochs: float = 0.01  # official: linear warm-up over 0.01 epoch (per-iteration)
    weight_decay: float = 0.1  # official 0.1, applied to every parameter
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])  # official AdamW betas
    eps: float = 1e-8  # torch AdamW default
    clip_grad: float = 4.0  # official max grad norm; <= 0 disables clipping
    z_loss_weight: float = 1e-5  # official z-loss weight
    world_weight: float = 0.04  # official CE class weight of image-code targets
    action_head_weight: float = 10.0  # weight of the continuous head's L1 (RynnVLA-002 --loss_ct_weights 10)
    loss_form: LossForm = "official"  # official (class-weighted mean CE) | paper (L_action + world_weight * L_world)
    seed: int = 0  # official seed 0
    precision: Literal["bf16", "fp32"] = "bf16"  # bf16 (autocast + FSDP bf16 params, fp32 master/reduce) | fp32
    save_every_steps: int = 5000  # official: every 5000 iterations (0 = off)
    save_every_epochs: int = 1  # official: every epoch (0 = off)
    keep_last: int = 0  # keep only the newest N checkpoints (0 = keep all, official)
    save_dtype: Literal["bfloat16", "float32"] = "bfloat16"  # exported model weights (the resume state stays fp32)
    resume: str = "auto"  # auto (newest checkpoint in output_dir, if any) | none | a checkpoint folder
    nan_check: bool = True  # stop with the step and batch named when the loss is not finite
    # > 0: after each validation and at the end, decode up to this many action samples of data.val free-running
    # (worldvla.eval.open_loop: L1 to the expert by chunk position; single process only). 0 = off
    open_loop_samples: int = 0
    # > 0: the loss reads the logits this many positions at a time, each chunk's fp32 copy recomputed in
    # backward (same loss to fp32 rounding; saves the B x T x 65536 fp32 copy, benchmarks/lora_budget.py)
    loss_chunk: int = 0
    lora: LoraOptions = field(default_factory=LoraOptions)


@dataclass
class LogOptions:
    run_name: str = ""  # wandb / log name; "" = output_dir's folder name
    project: str = "worldvla"  # wandb project
    wandb: bool = True  # log to wandb when it is installed (else JSONL only, with a notice)
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"  # offline: the default, sync later
    log_every: int = 10  # steps between log lines / wandb points
    progress_bar: bool = True  # tqdm bar on the main process
    plot: bool = True  # write loss_curve.png at the end
    peak_tflops: float = 0.0  # per-device peak for the MFU estimate; 0 = guess from the GPU name


@dataclass
class TrainConfig:
    model: ModelOptions = field(default_factory=ModelOptions)
    data: DataOptions = field(default_factory=DataOptions)
    train: TrainOptions = field(default_factory=TrainOptions)
    logging: LogOptions = field(default_factory=LogOptions)

    def validate(self) -> TrainConfig:
        d, t, lg = self.data, self.train, self.logging

        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(msg)

        bad = literal_errors(self)  # the loader checked these already; a config built in Python did not
        need(not bad, bad[0] if bad else "")

        need(bool(d.train), "data.train is empty: pass data.train=[path/to/tokens] (pretokenize.py output; with "
                            "data.source=conversations: conversation JSON files)")
        need(d.image_cache >= 0, f"data.image_cache must be >= 0 (0 = unbounded), got {d.image_cache}")
        need(0 <= d.state_jitter <= 64, f"data.state_jitter must be 0 (off) .. 64 bins, got {d.state_jitter}")
        need(bool(d.kinds), f"data.kinds is empty: keep some of {list(SAMPLE_KINDS)}")
        r = d.recipe
        need(r.resolution % 32 == 0 and r.resolution > 0,
             f"data.recipe.resolution must be a multiple of 32, got {r.resolution}")
        need(r.chunk_size >= 1 and r.history >= 1, "data.recipe.chunk_size and data.recipe.history must be >= 1")
        need(d.max_seq_len >= 2, f"data.max_seq_len must be >= 2, got {d.max_seq_len}")
        need(d.group_batches >= 1, "data.group_batches must be >= 1")
        need(t.batch_size >= 1 and t.grad_accum >= 1, "train.batch_size and train.grad_accum must be >= 1")
        need(t.epochs > 0 or t.max_steps > 0, "set train.epochs > 0 or train.max_steps > 0")
        need(len(t.betas) == 2, f"train.betas must have two values, got {t.betas}")
        need(t.lr >= 0 and t.min_lr >= 0 and t.warmup_epochs >= 0, "train.lr, train.min_lr, train.warmup_epochs must be >= 0")
        need(t.lr >= t.min_lr, f"train.lr={t.lr} is below train.min_lr={t.min_lr}: the schedule would decay upwards "
                               "(lr == min_lr is a constant rate)")
        need(t.keep_last >= 0, "train.keep_last must be >= 0 (0 keeps all)")
        need(lg.log_every >= 1, "logging.log_every must be >= 1")
        need(t.action_head_weight >= 0, f"train.action_head_weight must be >= 0, got {t.action_head_weight}")
        need(t.loss_chunk >= 0, f"train.loss_chunk must be >= 0 (0 = whole logits), got {t.loss_chunk}")
        lo = t.lora
        need(lo.rank >= 0, f"train.lora.rank must be >= 0 (0 = off), got {lo.rank}")
        need(lo.alpha >= 0, f"train.lora.alpha must be >= 0 (0 = rank), got {lo.alpha}")
        need(0 <= lo.dropout < 1, f"train.lora.dropout must be in [0, 1), got {lo.dropout}")
        need(bool(lo.target_modules), f"train.lora.target_modules is empty: name some of {list(LORA_TARGETS)}")
        need(not self.model.action_head or r.chunk_size >= 2,
             "model.action_head needs data.recipe.chunk_size >= 2 (the head reads rows with more than one action block)")
        return self
