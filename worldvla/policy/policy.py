"""WorldVLAPolicy: a checkpoint folder -> `predict(instruction, images) -> (K, 7)` actions for the env.

Prompt (official_format.md §9): "What action should the robot take to {instruction}?" + one image
placeholder per history frame (the first query of an episode has one frame), human turn only, ending
with 8710; the frames of a batch are tokenised by the bundled VQ-GAN in one batched call whose codes
equal encoding each alone (ImageTokenizer.encode). The K action blocks are decoded greedily under the
action mask — in parallel by default, sequentially, or `official`: free generation and the official
parsing rule of the checkpoint's `family` (worldvla.policy.official_decode; a chunk may then hold another
number of actions than K, or end the episode as a failure) — and de-normalised with the checkpoint's
statistics. After each `predict_batch`, `last_decode_info` holds per query the failure of an official
parse (or None) and, in the constrained modes, whether the unconstrained argmax would have left the
action grammar. With `action_mode="continuous"` (RynnVLA-002) the actions come instead from the
checkpoint's action head reading the backbone's prompt states (worldvla.policy.continuous),
de-normalised with the same statistics. `imagine(image, action)` runs the world model: the official
world prompt and constrained image-token generation, decoded to pixels by the VQ-GAN; with
`wrist=` the bi-view world model (RynnVLA-002) returns the next third-person and wrist frames.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from worldvla.data.processor import Processor
from worldvla.errors import InputFileError
from worldvla.model import free_decode, image_decode
from worldvla.model import generate as G
from worldvla.model.loading import find_tokenizer_dir, load_checkpoint, resolve_source
from worldvla.recipe import FILE_NAME as RECIPE_FILE
from worldvla.recipe import Recipe
from worldvla.stats import ACTION_DIM
from worldvla.tokenizers.image import image_token_count, tokens_to_codes

from . import official_decode
from .continuous import build_action_head, predict_normalised
from .decode import DECODE_MODES
from .official_checkpoints import REQUIRED_FOR_UNKNOWN, find_official, unknown_folder_error

log = logging.getLogger(__name__)
SETTINGS_NAME = RECIPE_FILE


def resolve_decode(mode: str, is_worldvla_checkpoint: bool, action_mask: bool = True) -> str:
    """`auto`: parallel for a worldvla checkpoint (has worldvla.json) trained under the action mask,
    sequential for one trained with the causal mask, official for an official folder."""
    if mode == "auto":
        if not is_worldvla_checkpoint:
            return "official"
        return "parallel" if action_mask else "sequential"
    return mode


def checkpoint_action_mask(folder: str | Path) -> bool:
    """model.action_mask of the run that wrote a worldvla checkpoint (its train_config.yaml; true when not
    recorded, as for the official checkpoints). A model trained with the causal mask must also decode with
    it: each action then sees the earlier actions of its chunk, which the action mask would hide."""
    path = Path(folder) / "train_config.yaml"
    if not path.is_file():
        return True
    model = (yaml.safe_load(path.read_text()) or {}).get("model") or {}
    return bool(model.get("action_mask", True))


@dataclass
class DecodedChunk:
    """Action-bin ids of one prompt, (n, 7); `failure`: the official parse ends the episode after them;
    `grammar_violation`: constrained modes only, whether the free argmax left the action grammar."""

    bins: np.ndarray
    failure: str | None = None
    grammar_violation: bool | None = None


def _bins(blocks: list[list[int]]) -> np.ndarray:
    return np.asarray(blocks, dtype=np.int64).reshape(-1, ACTION_DIM)


def check_chunk_fits(settings: Recipe, max_seq_len: int, path: Path | None) -> None:
    """K action blocks after the prompt's frames fit the model's context; else every episode would fail
    at its first query. `path`: the worldvla.json the chunk_size came from (None: a keyword setting)."""
    frames = settings.history * (2 if settings.with_wrist else 1)
    needed = settings.chunk_size * G.BLOCK_LEN + frames * image_token_count(settings.resolution)
    if needed <= max_seq_len:
        return
    message = (f"chunk_size={settings.chunk_size}: {settings.chunk_size} action blocks after {frames} frame(s) need "
               f"at least {needed} positions, more than the model's max_seq_len {max_seq_len}")
    if path is not None and path.is_file():
        raise InputFileError(path, message, "chunk_size")
    raise ValueError(f"policy setting {message}")


def checkpoint_recipe(ckpt_dir: str | Path, folder: Path, overrides: dict) -> Recipe:
    """The Recipe a checkpoint runs with: its worldvla.json, else the released settings of an official folder
    (worldvla.policy.official_checkpoints, by hub id or folder name), else plain WorldVLA when `overrides` give
    the fields released setups differ in (an unknown folder is refused); `overrides` (None values dropped)
    win over either."""
    given = {k: v for k, v in overrides.items() if v is not None}
    path = folder / SETTINGS_NAME
    official = None if path.is_file() else (find_official(ckpt_dir) or find_official(folder))
    if path.is_file():
        base = Recipe.from_file(path)
    elif official is not None:  # a released checkpoint: its settings are known, not guessed
        base = official.recipe()
        log.info("%s: released checkpoint %s, settings %s%s", folder, official.hub_id, official.settings,
                 f" overridden by {given}" if given else "")
    elif all(k in given for k in REQUIRED_FOR_UNKNOWN):
        base = Recipe()
    else:
        raise unknown_folder_error(folder, given)
    return base.replace(**given)


class WorldVLAPolicy:
    def __init__(self, model, processor: Processor, decode: str = "parallel",
                 max_new_tokens: int = free_decode.OFFICIAL_MAX_NEW_TOKENS, action_mask: bool = True,
                 name: str = "worldvla", compile_step: bool = False, action_head=None):
        settings = processor.recipe
        if decode not in DECODE_MODES or decode == "auto":
            raise ValueError(f"decode={decode!r}; valid: {DECODE_MODES[1:]} (auto is resolved by from_pretrained)")
        if settings.action_mode == "continuous":
            if action_head is None:
                raise ValueError("action_mode=continuous needs the checkpoint's action head (action_head=...)")
            if action_head.cfg.chunk_size != settings.chunk_size:
                raise ValueError(f"the action head predicts {action_head.cfg.chunk_size} actions per chunk but "
                                 f"worldvla.json says chunk_size={settings.chunk_size}")
        self.action_head = action_head
        self.model, self.processor = model, processor
        self.text, self.images, self.action_tok = processor.text, processor.images, processor.action
        self.decode, self.max_new_tokens, self.action_mask, self.name = decode, max_new_tokens, action_mask, name
        self.compile_step = compile_step  # static-shape step: CUDA graphs on CUDA, compiled layers on CPU
        self.static: bool | None = None  # True: the static-shape step without capture/compile (None: = compile_step)
        self.last_decode_info: list[dict] = []
        self.image_ids = torch.as_tensor(self.text.vocab.image_ids(), dtype=torch.long)

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, ckpt_dir: str | Path, device: str = "cpu", dtype: torch.dtype | None = None,
                        tokenizer: str | Path | None = None, decode: str = "auto", compile_step: bool = False,
                        **settings) -> WorldVLAPolicy:
        """Our checkpoint folder (worldvla.json + tokenizer/), or an official one (config.json + shards)
        with `tokenizer=<dir>`: load the Recipe (checkpoint_recipe; keyword settings such as chunk_size,
        resolution, action_stats, action_mode always win), build its Processor from the tokenizer files (their
        sha256 checked against the recipe's), load the weights (and the continuous head).
        dtype None: fp32 on CPU, bf16 on GPU (the official eval precision).
        decode `auto`: parallel for our checkpoints (sequential for one trained with the causal mask, which
        also decodes with it), official for an official folder (resolve_decode)."""
        unknown = set(settings) - set(Recipe.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown policy setting(s) {sorted(unknown)}; "
                            f"valid: {sorted(Recipe.__dataclass_fields__)}")
        folder = resolve_source(ckpt_dir)
        path = folder / SETTINGS_NAME
        tok_dir = find_tokenizer_dir(folder, tokenizer)
        recipe = checkpoint_recipe(ckpt_dir, folder, settings)

        recipe.verify_tokenizer(tok_dir, path)
        processor = Processor.from_folder(recipe, tok_dir, device=device)
        if recipe.text_tokenizer_sha256 and processor.text.sha256() != recipe.text_tokenizer_sha256:
            raise ValueError(f"{tok_dir / 'text_tokenizer.json'} is not the tokenizer {folder} was trained with "
                             f"(sha256 {processor.text.sha256()[:12]} != {recipe.text_tokenizer_sha256[:12]})")

        if dtype is None:
            dtype = torch.float32 if torch.device(device).type == "cpu" else torch.bfloat16
        loaded = load_checkpoint(folder, dtype=dtype, device=device)
        check_chunk_fits(recipe, loaded.model.cfg.max_seq_len, path if settings.get("chunk_size") is None else None)
        head = None
        if recipe.action_mode == "continuous":
            head = build_action_head(loaded.extras, recipe.action_head, str(folder), device, dtype)
        mask = checkpoint_action_mask(folder)
        mode = resolve_decode(decode, path.is_file(), mask)
        log.info("%s: decode=%s, action_mask=%s", folder, mode, mask)
        return cls(loaded.model, processor, decode=mode, action_mask=mask, name=folder.name, compile_step=compile_step,
                   action_head=head)

    # -- attributes used by the evaluation ---------------------------------------------------------
    @property
    def settings(self) -> Recipe:
        return self.processor.recipe

    @property
    def chunk_size(self) -> int:
        return self.settings.chunk_size

    @property
    def history(self) -> int:
        return self.settings.history

    @property
    def resolution(self) -> int:
        return self.settings.resolution

    @property
    def uses_wrist(self) -> bool:
        return self.settings.with_wrist

    @property
    def uses_state(self) -> bool:
        return self.settings.with_state

    @property
    def action_mode(self) -> str:
        return self.settings.action_mode

    @property
    def decode_mode(self) -> str:
        return self.decode

    # -- prompts (the processor's: training builds the same sequences) ---------------------------------
    def prompt_ids(self, instruction: str, images: Sequence[np.ndarray], wrist: Sequence[np.ndarray] | None = None,
                   state: np.ndarray | None = None) -> list[int]:
        return self.processor.action_prompt(instruction, images, wrist, state)

    def world_prompt_ids(self, image, action, wrist=None) -> list[int]:
        return self.processor.world_prompt(image, action, wrist)

    def world_prompt_from_tokens(self, view_tokens: list[list[int]], action, human_text: str | None = None) -> list[int]:
        return self.processor.world_prompt_from_tokens(view_tokens, action, human_text)

    # -- inference ---------------------------------------------------------------------------------
    def predict_tokens(self, prompts: list[list[int]]) -> list[np.ndarray]:
        """Action-bin ids per prompt: (K, 7) arrays (another number of rows in official mode)."""
        return [d.bins for d in self.decode_tokens(prompts)]

    def decode_tokens(self, prompts: list[list[int]]) -> list[DecodedChunk]:
        """One `DecodedChunk` per prompt, decoded in `self.decode` mode."""
        if self.decode in ("official", "unconstrained"):
            failures: list[str | None] | None = [] if self.decode == "official" else None
            outs = free_decode.generate_greedy(self.model, prompts, self.max_new_tokens, action_mask=self.action_mask,
                                               compile_step=self.compile_step, static=self.static, failures=failures)
            result = []
            for b, ids in enumerate(outs):
                if failures and failures[b] is not None:  # unpairable tokens: no action, this episode fails
                    result.append(DecodedChunk(_bins([]), failures[b]))
                    continue
                if self.decode == "official":
                    parsed = official_decode.parse_official(ids, self.settings.family)
                    result.append(DecodedChunk(_bins(parsed.blocks), parsed.failure))
                    continue
                blocks = [blk for blk in official_decode.parse_action_blocks(ids) if len(blk) == ACTION_DIM]
                if not blocks:
                    raise RuntimeError(f"prompt {b}: unconstrained decoding produced no complete action block "
                                       f"(generated {ids[:20]}...)")
                result.append(DecodedChunk(_bins(blocks)))
            return result
        grammar: list[bool] = []
        blocks = G.decode_action_chunks(self.model, prompts, self.chunk_size, mode=self.decode,
                                        action_mask=self.action_mask, compile_step=self.compile_step,
                                        static=self.static, grammar=grammar)  # (B, K, 9)
        bins = blocks[..., 1:-1].cpu().numpy()
        return [DecodedChunk(bins[b], None, grammar[b]) for b in range(len(prompts))]

    def predict_batch(self, instructions: Sequence[str], images_per_episode: Sequence[Sequence[np.ndarray]],
                      wrists: Sequence[Sequence[np.ndarray]] | None = None,
                      states: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
        """One (K, 7) de-normalised action chunk per episode; batching does not change results.

        In official mode a chunk holds every action the official loop would execute (possibly not K, or
        none); `last_decode_info[i]["failure"]` then says whether the episode fails after them."""
        if len(instructions) != len(images_per_episode):
            raise ValueError(f"{len(instructions)} instructions but {len(images_per_episode)} image lists")
        frames = [f for imgs in images_per_episode for f in list(imgs)[-self.history:]]
        if self.uses_wrist and wrists is not None:
            frames += [f for w in wrists for f in list(w)[-self.history:]]
        with self.processor.pre_encoded(frames):  # one batched VQ-GAN call
            prompts = [self.prompt_ids(instr, imgs, None if wrists is None else wrists[i],
                                       None if states is None else states[i])
                       for i, (instr, imgs) in enumerate(zip(instructions, images_per_episode))]
        if self.action_mode == "continuous":
            self.last_decode_info = [{"failure": None, "grammar_violation": None} for _ in prompts]
            return [self.action_tok.unnormalize(a) for a in predict_normalised(self.model, self.action_head, prompts)]
        decoded = self.decode_tokens(prompts)
        self.last_decode_info = [{"failure": d.failure, "grammar_violation": d.grammar_violation} for d in decoded]
        return [self.action_tok.decode(d.bins) for d in decoded]

    def predict(self, instruction: str, images: Sequence[np.ndarray], wrist=None, state=None) -> np.ndarray:
        return self.predict_batch([instruction], [images], None if wrist is None else [wrist],
                                  None if state is None else [state])[0]

    __call__ = predict

    def imagine(self, image, action, wrist=None, return_tokens: bool = False):
        """World model: current frame(s) + action(s) -> the next frame (H, W, 3) uint8.

        `image`/`action` may be one frame / one 7-D action or equal-length lists (history). With
        `wrist` (the wrist frame(s), as many as `image`) the bi-view world model of RynnVLA-002 runs:
        both next images are generated (third person, then wrist) and returned as `(third, wrist)`.
        `return_tokens` also returns the generated image span(s)."""
        prompt = self.world_prompt_ids(image, action, wrist)
        views = 1 if wrist is None else 2
        latent = self.resolution // 16  # VQ-GAN downsampling
        span = image_decode.generate_image(self.model, [prompt], latent, latent, self.image_ids, self.action_mask,
                                           self.compile_step, n_images=views, static=self.static)[0]
        span = span.cpu().tolist()
        if wrist is None:
            picture = self.images.tokens_to_image(span)
            return (picture, span) if return_tokens else picture
        spans = tuple(image_decode.split_image_spans(span, views))
        pictures = tuple(self.images.tokens_to_image(s) for s in spans)
        return (pictures, spans) if return_tokens else pictures

    # -- batched world model (worldvla.eval.imagine rolls it out) ----------------------------------
    def frame_tokens(self, frames) -> list[list[int]]:
        """(R, R, 3) uint8 frames -> the image tokens of each, one batched VQ-GAN encode."""
        return self.images.images_to_tokens(list(frames))

    def imagine_tokens(self, prompts: list[list[int]], views: int = 1) -> tuple[np.ndarray, list[list[list[int]]]]:
        """Batched world model on ready prompts: the `views` next images of every prompt, generated in one
        constrained decode. Returns the frames (B, views, R, R, 3) uint8 and the image token span of
        each (B lists of `views` token lists)."""
        latent = self.resolution // 16  # VQ-GAN downsampling
        spans = image_decode.generate_image(self.model, prompts, latent, latent, self.image_ids, self.action_mask,
                                            self.compile_step, n_images=views, static=self.static).cpu().numpy()
        per_view = [[v.tolist() for v in image_decode.split_image_spans(s, views)] for s in spans]
        codes = np.stack([tokens_to_codes(v, self.text.vocab) for row in per_view for v in row])
        res = self.resolution
        return self.images.decode(codes).reshape(len(prompts), views, res, res, 3), per_view
