"""One conversation record (official JSON format) -> input ids, labels and span metadata.

Official construction (official_format.md §1.6, §4): the turns are joined as
`human + SEP + gpt + SEP` (SEP = "<reserved08706>", no role strings), BOS is prepended, no EOS.
The whole string is tokenised at once with the media placeholders `<|image|>`, `<|action|>`,
`<|state|>` registered as added tokens; each placeholder is then replaced in order by the tokens
of the next image / action / state of the record. Human-turn positions (BOS, text, media, their
SEP) get label -100; assistant-turn positions are labelled with themselves.
The spans (kind, start, end) tell the attention mask where image and action blocks are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from worldvla import vocab as V
from worldvla.errors import InputFileError
from worldvla.recipe import SAMPLE_KINDS
from worldvla.spans import Span  # noqa: F401 (re-exported: Sample.spans holds them)
from worldvla.tokenizers.action import ActionTokenizer, StateTokenizer
from worldvla.tokenizers.text import TextTokenizer

SEP = "<reserved08706>"
IMAGE, ACTION, STATE = "<|image|>", "<|action|>", "<|state|>"
PLACEHOLDERS = {IMAGE: "image", ACTION: "action", STATE: "state"}
ACTION_PROMPT = "What action should the robot take to {instruction}?"
WORLD_PROMPT = "Generate the next image based on the provided sequence of historical images and corresponding actions."


def sample_kind(record: dict) -> str:
    """"world" when the assistant turn contains an image placeholder, else "action" (SAMPLE_KINDS)."""
    for turn in record.get("conversations") or []:
        if turn.get("from") == "gpt" and IMAGE in str(turn.get("value", "")):
            return "world"
    return "action"


@dataclass
class Sample:
    input_ids: list[int]
    labels: list[int]
    spans: list[Span] = field(default_factory=list)
    # "action" | "world", decided where the sample is made (from its record, or the shard's kinds.npy) and
    # carried through collate into the loss and the action head; a sample built from bare ids and labels
    # (official record lists) is a world sample when an image is among its targets
    kind: str | None = None

    def __post_init__(self) -> None:
        if self.kind is None:
            self.kind = "world" if V.BOI_ID in self.labels else "action"
        elif self.kind not in SAMPLE_KINDS:
            raise ValueError(f"sample kind {self.kind!r}; valid: {SAMPLE_KINDS}")

    def __len__(self) -> int:
        return len(self.input_ids)

    def spans_of(self, kind: str) -> list[Span]:
        return [s for s in self.spans if s.kind == kind]


class RecordError(ValueError):
    """A conversation record that cannot be turned into a sample; names the record."""


def action_conversation(instruction: str, n_images: int, n_actions: int, n_states: int = 0) -> list[dict]:
    """The official action-model turns: question + state + images, then K action placeholders."""
    human = ACTION_PROMPT.format(instruction=instruction) + STATE * n_states + IMAGE * n_images
    return [{"from": "human", "value": human}, {"from": "gpt", "value": ACTION * n_actions}]


def world_conversation(n_history: int, views: int = 1) -> list[dict]:
    """The official world-model turns: (images + action) per history step, then the next image(s)."""
    human = WORLD_PROMPT + (IMAGE * views + ACTION) * n_history
    return [{"from": "human", "value": human}, {"from": "gpt", "value": IMAGE * views}]


MediaLoader = Callable[[object], list[int]]


class SequenceBuilder:
    """Turns conversation records into `Sample`s; media are tokenised by the given tokenizers."""

    def __init__(
        self,
        text: TextTokenizer,
        image_tokens: MediaLoader | None = None,
        action: ActionTokenizer | None = None,
        state: StateTokenizer | None = None,
    ):
        """`image_tokens(item) -> ids` tokenises one image entry (a path or an array)."""
        self.text = text
        self.image_tokens = image_tokens
        self.action = action or ActionTokenizer()
        self.state = state or StateTokenizer()
        self._tok = text._tok  # one tokenizer instance per builder, with the placeholders added
        self._tok.add_tokens([SEP])  # make sure SEP is split out even if only in model.vocab
        self._tok.add_tokens(list(PLACEHOLDERS))
        self.placeholder_ids = {self._tok.token_to_id(p): kind for p, kind in PLACEHOLDERS.items()}

    # -- media --------------------------------------------------------------------------------
    def _vector(self, item, tokenizer, base_dir: Path | None) -> list[int]:
        if isinstance(item, (str, Path)):
            path = Path(item) if base_dir is None else base_dir / item
            item = np.load(path)
        return tokenizer.encode_block(np.asarray(item, dtype=np.float64).reshape(-1))

    def _media_tokens(self, kind: str, item, base_dir: Path | None) -> list[int]:
        if kind == "action":
            return self._vector(item, self.action, base_dir)
        if kind == "state":
            return self._vector(item, self.state, base_dir)
        if isinstance(item, (list, tuple)) and item and isinstance(item[0], (int, np.integer)):
            return [int(x) for x in item]  # already image tokens
        if self.image_tokens is None:
            raise RecordError("this builder has no image tokenizer but the record holds images")
        if isinstance(item, (str, Path)) and base_dir is not None:
            item = base_dir / item
        return list(self.image_tokens(item))

    # -- main entry ---------------------------------------------------------------------------
    def build(self, record: dict, training: bool = True, base_dir: str | Path | None = None, name: str = "") -> Sample:
        """`record` = {"conversations": [...], "image": [...], "action": [...], "state": [...]}.

        training=False drops a trailing assistant turn and returns the generation prompt.
        """
        where = f"record {name}: " if name else ""
        try:
            turns = list(record["conversations"])
        except (KeyError, TypeError):
            raise RecordError(f"{where}missing 'conversations' list") from None
        what = sample_kind(record)  # "action" | "world"
        if not training and turns and turns[-1].get("from") == "gpt":
            turns = turns[:-1]
        media = {"image": list(record.get("image") or []), "action": list(record.get("action") or []),
                 "state": list(record.get("state") or [])}
        base = Path(base_dir) if base_dir is not None else None

        text, roles = "", []  # roles: (char_end, is_assistant) per turn
        for turn in turns:
            if turn.get("from") not in ("human", "gpt"):
                raise RecordError(f"{where}turn 'from' must be human or gpt, got {turn.get('from')!r}")
            text += str(turn["value"]) + SEP
            roles.append((len(text), turn["from"] == "gpt"))
        enc = self._tok.encode(text, add_special_tokens=False)

        ids, labels, spans = [V.BOS_ID], [V.IGNORE_INDEX], []
        used = {"image": 0, "action": 0, "state": 0}
        turn = 0
        for tok, (start, _) in zip(enc.ids, enc.offsets):
            while start >= roles[turn][0]:
                turn += 1
            supervised = roles[turn][1]
            kind = self.placeholder_ids.get(tok)
            if kind is None:
                ids.append(tok)
                labels.append(tok if supervised else V.IGNORE_INDEX)
                continue
            if used[kind] >= len(media[kind]):
                raise RecordError(f"{where}more {kind} placeholders than entries in '{kind}' ({len(media[kind])})")
            try:
                block = self._media_tokens(kind, media[kind][used[kind]], base)
            except InputFileError:  # a damaged cache file, not this record's media: name the file alone
                raise
            except (OSError, ValueError) as err:
                raise RecordError(f"{where}{kind} {used[kind]} ({media[kind][used[kind]]!r}): {err}") from err
            used[kind] += 1
            spans.append(Span(kind, len(ids), len(ids) + len(block)))
            ids.extend(block)
            labels.extend(block if supervised else [V.IGNORE_INDEX] * len(block))
        if training:
            for kind, n in used.items():
                if n != len(media[kind]):
                    raise RecordError(f"{where}{len(media[kind])} '{kind}' entries but {n} placeholders")
            if all(lab == V.IGNORE_INDEX for lab in labels):
                raise RecordError(f"{where}no supervised tokens (empty assistant turn?)")
        return Sample(ids, labels, spans, what)

    def prompt(self, conversations: list[dict], images: Sequence, actions: Sequence = (), states: Sequence = ()) -> Sample:
        """Generation prompt for in-memory media (eval): human turn(s) only, ending with SEP."""
        record = {"conversations": conversations, "image": list(images), "action": list(actions), "state": list(states)}
        return self.build(record, training=False)
