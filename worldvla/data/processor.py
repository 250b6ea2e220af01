"""The Processor: a Recipe's tokenizers and prompts, one object for training and for inference.

Built from a Recipe and its tokenizer files, it holds the text and image tokenizers, the action tokenizers
(action samples and world-model samples may be binned with different statistics, official_format.md §10.1),
the state tokenizer, and the `SequenceBuilder` of each sample kind. Training tokenises conversation records
through `builders` (worldvla.data.tokenization.SampleTokenizer); the policy builds its queries with
`action_prompt` / `world_prompt` and reads actions back with `action` (de-normalisation: `decode` of bin
ids, `unnormalize` of continuous values), so both sides bin and prompt the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from worldvla.data.sequence import IMAGE, SequenceBuilder, action_conversation, world_conversation
from worldvla.recipe import Recipe, same_stats, stats_of, tokenizer_files
from worldvla.stats import ACTION_DIM
from worldvla.tokenizers import ActionTokenizer, ImageTokenizer, StateTokenizer, TextTokenizer


def interleave_views(third: Sequence, wrist: Sequence) -> list:
    """Per history step, its third-person frame then its wrist frame: [third_t-1, wrist_t-1, third_t, wrist_t]
    (the order conversations.py writes a bi-view sample in)."""
    return [img for pair in zip(third, wrist) for img in pair]


class Processor:
    """`recipe`'s tokenizers and prompt builders. `image_tokens(item) -> ids` tokenises one image entry of
    a record (default: the frame's pre-encoded tokens inside `pre_encoded`, else the VQ-GAN)."""

    def __init__(self, recipe: Recipe, text: TextTokenizer, images: ImageTokenizer,
                 image_tokens: Callable | None = None):
        self.recipe, self.text, self.images = recipe, text, images
        self.action = ActionTokenizer(stats_of(recipe.action_stats))
        self.state = StateTokenizer(stats_of(recipe.state_stats))
        world = recipe.value("world_action_stats")
        self.world_action = self.action if same_stats(world, recipe.action_stats) else ActionTokenizer(stats_of(world))
        self._encoded: dict[int, list[int]] = {}  # id(frame) -> tokens, while `pre_encoded` is open
        loader = image_tokens or self._frame_tokens
        action_builder = SequenceBuilder(text, loader, self.action, self.state)
        self.builders = {"action": action_builder,
                         "world": action_builder if self.world_action is self.action else
                         SequenceBuilder(text, loader, self.world_action, self.state)}

    @classmethod
    def from_folder(cls, recipe: Recipe, folder: str | Path, device: str = "cpu",
                    image_tokens: Callable | None = None) -> Processor:
        """The processor of `recipe` with the tokenizer files in `folder` (or `folder/tokenizer`); the VQ-GAN
        runs on `device` at the recipe's resolution."""
        files = tokenizer_files(folder)
        text = TextTokenizer(files["text_tokenizer.json"])
        images = ImageTokenizer.from_files(files["vqgan.yaml"], files["vqgan.ckpt"], text.vocab, recipe.resolution,
                                           device=device)
        return cls(recipe, text, images, image_tokens)

    # -- images ------------------------------------------------------------------------------------
    def _frame_tokens(self, image) -> list[int]:
        found = self._encoded.get(id(image))
        return found if found is not None else self.images.image_to_tokens(image)

    @contextlib.contextmanager
    def pre_encoded(self, frames: Sequence[np.ndarray]):
        """Within the block, prompts read these frames' tokens from one batched VQ-GAN call (whose codes equal
        encoding each frame alone, ImageTokenizer.encode)."""
        self._encoded = {id(f): t for f, t in zip(frames, self.images.images_to_tokens(list(frames)))}
        try:
            yield
        finally:
            self._encoded = {}

    # -- prompts -----------------------------------------------------------------------------------
    def action_prompt(self, instruction: str, images: Sequence[np.ndarray], wrist: Sequence[np.ndarray] | None = None,
                      state: np.ndarray | None = None) -> list[int]:
        """The action model's query (official_format.md §9): the last `history` frames (a first query has one),
        each followed by its wrist frame with_wrist, the 8-D state with_state, K action placeholders."""
        r = self.recipe
        frames = list(images)[-r.history:]
        if not frames:
            raise ValueError("predict needs at least the current image")
        if r.with_wrist:
            if wrist is None or len(wrist) < len(frames):
                raise ValueError(f"this checkpoint needs a wrist image per frame ({len(frames)}), got "
                                 f"{0 if wrist is None else len(wrist)}")
            wrist = list(wrist)[-len(frames):]
            frames = interleave_views(frames, wrist)
        states = []
        if r.with_state:
            if state is None:
                raise ValueError("this checkpoint needs the 8-D robot state (state=...)")
            states = [np.asarray(state, dtype=np.float64).reshape(-1)]
        turns = action_conversation(instruction, len(frames), r.chunk_size, n_states=len(states))
        return self.builders["action"].prompt(turns, frames, states=states).input_ids

    def world_prompt(self, image, action, wrist=None) -> list[int]:
        """The world model's prompt: frame(s) + action(s); with `wrist` the bi-view prompt, each history
        step holding its third-person and wrist images interleaved `[third, wrist]` before its action."""
        frames = list(image) if isinstance(image, (list, tuple)) else [image]
        acts = np.asarray(action, dtype=np.float64).reshape(-1, ACTION_DIM)
        if len(frames) != len(acts):
            raise ValueError(f"{len(frames)} frames but {len(acts)} actions (one action per history frame)")
        views = 1
        if wrist is not None:
            wrists = list(wrist) if isinstance(wrist, (list, tuple)) else [wrist]
            if len(wrists) != len(frames):
                raise ValueError(f"{len(frames)} third-person frames but {len(wrists)} wrist frames")
            frames = interleave_views(frames, wrists)
            views = 2
        conv = world_conversation(len(acts), views=views)
        return self.builders["world"].prompt(conv, frames, actions=list(acts)).input_ids

    def world_prompt_from_tokens(self, view_tokens: list[list[int]], action,
                                 human_text: str | None = None) -> list[int]:
        """One-step world prompt from ready image tokens: [BOS] prompt I(t) [I_wrist(t)] A(t) SEP.

        `view_tokens` holds the image tokens of each view of frame t (1: third person, 2: + wrist);
        `human_text` replaces the training prompt's text (e.g. RynnVLA-002's eval wording)."""
        conv = world_conversation(1, views=len(view_tokens))
        if human_text is not None:
            turn = conv[0]["value"]
            conv[0] = {"from": "human", "value": human_text + turn[turn.index(IMAGE):]}
        return self.builders["world"].prompt(conv, list(view_tokens), actions=[action]).input_ids
