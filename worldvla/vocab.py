"""Single source of truth for the token ids of the official WorldVLA / RynnVLA-002 format.

Every id below is the one hard-coded (or derived by the `<reservedNNNNN>` -> NNNNN + 4 rule) in the
official code; see docs/compatibility.md and docs/official_format.md section 0.
`Vocab.from_tokenizer_file` looks each one up by *name* in `text_tokenizer.json` and refuses a file
where a name does not sit at its official id, so a wrong tokenizer fails at start-up, not as 0 %.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from worldvla.errors import InputFileError

# --- official special ids (official_format.md §0) ---------------------------------------------
BOS_ID = 0  # "<s>" (the tokenizer's bos_token), prepended once to every sample; checked against the file
PAD_ID = 0  # the trainer's collate pads input ids with 0 and labels with IGNORE_INDEX
IGNORE_INDEX = -100  # label value of positions that carry no loss
END_OF_TURN_ID = 8710  # "<reserved08706>": closes every conversation turn; generation EOS
BOI_ID = 8197  # "<racm3:break>": begin of image (note: boi > eoi)
EOI_ID = 8196  # "<eoss>": end of image
ROW_BREAK_ID = 8803  # "<reserved08799>": ends every latent row, the last one included
SIZE_TOKEN_BASE = 8804  # "<reserved{8800+n:05d}>" = 8804 + n encodes n grids of 32 px
ACTION_START_ID = 10004  # "<reserved10000>"
ACTION_END_ID = 15004  # "<reserved15000>"
STATE_START_ID = 15504  # "<reserved15500>" (RynnVLA-002)
STATE_END_ID = 16004  # "<reserved16000>" (RynnVLA-002)
NUM_IMAGE_CODES = 8192  # VQ-GAN codebook size
FIRST_IMAGE_ID = 4  # the official tokenizer's IMGIMG* names sit at ids 4 .. 4 + NUM_IMAGE_CODES - 1 (4..8195)
N_ACTION_BINS = 256  # bins d = 1..256 of np.digitize over linspace(-1, 1, 256) (official_format.md §2.2)
ACTION_FIRST_BIN_ID = ACTION_START_ID + 2  # 10006: token = d + start + 1 for d = 1
ACTION_LAST_BIN_ID = ACTION_START_ID + 1 + N_ACTION_BINS  # 10261 (d = 256, only at norm == 1)
IMAGE_CODE_LOSS_SLICE = (3, 8195)  # official CE class-weight slice w[3:8195] (off by one, kept)

# name -> official id, asserted against the tokenizer file that is loaded (Vocab, TextTokenizer)
OFFICIAL_NAMES: dict[str, int] = {
    "<s>": BOS_ID,
    "<reserved08706>": END_OF_TURN_ID,
    "<racm3:break>": BOI_ID,
    "<eoss>": EOI_ID,
    "<reserved08799>": ROW_BREAK_ID,
    "<reserved10000>": ACTION_START_ID,
    "<reserved15000>": ACTION_END_ID,
    "<reserved15500>": STATE_START_ID,
    "<reserved16000>": STATE_END_ID,
    "<reserved08808>": SIZE_TOKEN_BASE + 8,  # size token of a 256 px side (8 grids)
    "<reserved08816>": SIZE_TOKEN_BASE + 16,  # size token of a 512 px side (16 grids)
}
IMAGE_TOKEN_PREFIX = "IMGIMG"


def size_token_id(n_grids: int) -> int:
    """Id of the token that encodes an image side of `n_grids` x 32 pixels."""
    return SIZE_TOKEN_BASE + n_grids


def reserved_name(token_id: int) -> str:
    """Vocabulary name of a reserved token (`<reservedNNNNN>` has id NNNNN + 4)."""
    return f"<reserved{token_id - 4:05d}>"


def image_code_from_name(name: str) -> int:
    """Decode an `IMGIMG...` vocabulary name into its VQ code: letters A..J are digits 0..9.

    The characters between the prefix and the final character spell the code (Chameleon's
    img2bpe convention).
    """
    body = name[len(IMAGE_TOKEN_PREFIX) : -1]
    digits = "".join(str(ord(c) - ord("A")) if "A" <= c <= "J" else c for c in body)
    if not digits.isdigit():
        raise ValueError(f"image token name {name!r} does not spell a code")
    return int(digits)


def image_name_from_code(code: int, suffix: str = "Z") -> str:
    """Inverse of `image_code_from_name` (used by the test fixtures)."""
    return IMAGE_TOKEN_PREFIX + "".join(chr(ord("A") + int(d)) for d in str(code)) + suffix


@dataclass
class Vocab:
    """Ids plus the VQ-code <-> BPE-id mapping, built from a tokenizer vocabulary."""

    name_to_id: dict[str, int]
    source: str = "<memory>"
    code_to_id: np.ndarray = field(init=False)  # (8192,) int64
    id_to_code: dict[int, int] = field(init=False)

    def __post_init__(self) -> None:
        for name, want in OFFICIAL_NAMES.items():
            got = self.name_to_id.get(name)
            if got != want:
                raise ValueError(
                    f"{self.source}: token {name!r} has id {got}, the official format needs {want}; "
                    "this is not the Chameleon / Lumina-mGPT text_tokenizer.json"
                )
        self.id_to_code = {
            tid: image_code_from_name(name)
            for name, tid in self.name_to_id.items()
            if name.startswith(IMAGE_TOKEN_PREFIX)
        }
        if len(self.id_to_code) != NUM_IMAGE_CODES:
            raise ValueError(
                f"{self.source}: found {len(self.id_to_code)} {IMAGE_TOKEN_PREFIX}* image tokens, "
                f"expected {NUM_IMAGE_CODES}"
            )
        self.code_to_id = np.full(NUM_IMAGE_CODES, -1, dtype=np.int64)
        for tid, code in self.id_to_code.items():
            self.code_to_id[code] = tid
        if (self.code_to_id < 0).any():
            raise ValueError(f"{self.source}: image codes do not cover 0..{NUM_IMAGE_CODES - 1}")

    @classmethod
    def from_tokenizer_file(cls, path: str | Path) -> "Vocab":
        """Read `model.vocab` and `added_tokens` of a tokenizers-library JSON file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:  # e.g. a download cut short
            raise InputFileError(path, f"not valid JSON ({err}); a truncated tokenizer file? download it again") from None
        try:
            names = dict(data.get("model", {}).get("vocab", {}))
            for tok in data.get("added_tokens", []):
                names[tok["content"]] = tok["id"]
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            raise InputFileError(path, f"not a tokenizers-library file ({type(err).__name__}: {err})",
                                 "model.vocab") from None
        if not names:
            raise ValueError(f"{path}: no 'model.vocab' or 'added_tokens' entries")
        return cls(names, source=str(path))

    def check_size_token(self, n_grids: int) -> int:
        """The size token of `n_grids` x 32 px, asserted by name (any resolution, not only 256/512)."""
        want = size_token_id(n_grids)
        got = self.name_to_id.get(reserved_name(want))
        if got != want:
            raise ValueError(f"{self.source}: size token {reserved_name(want)!r} has id {got}, the official "
                             f"format needs {want} ({n_grids * 32} px images)")
        return want

    def image_ids(self) -> np.ndarray:
        """Sorted ids of all image-code tokens."""
        return np.sort(self.code_to_id)
