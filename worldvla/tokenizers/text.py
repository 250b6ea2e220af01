"""The Chameleon / Lumina-mGPT BPE text tokenizer (`text_tokenizer.json`), via `tokenizers`.

Where the file comes from is always an argument: a local file, a local directory (the file or
`tokenizer/text_tokenizer.json` inside it), or a model-hub repo id (downloaded with
huggingface_hub). The official code prepends BOS itself and never appends EOS; so do we.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import hf_hub_download
from tokenizers import Tokenizer

from worldvla.errors import InputFileError
from worldvla.recipe import sha256_file
from worldvla.vocab import OFFICIAL_NAMES, Vocab

TOKENIZER_FILENAME = "text_tokenizer.json"
# Where the file sits inside the official releases (Chameleon `tokenizer/`, WorldVLA ckpts).
SUBFOLDERS = ("", "tokenizer", "chameleon/tokenizer", "ckpts/chameleon/tokenizer")


def resolve_tokenizer_file(source: str | Path, filename: str = TOKENIZER_FILENAME) -> Path:
    """Find `filename` for a file path, a local dir, or a hub repo id (`owner/name`)."""
    path = Path(source)
    if path.is_file():
        return path
    if path.is_dir():
        for sub in SUBFOLDERS:
            cand = path / sub / filename
            if cand.is_file():
                return cand
        looked = ", ".join(str(path / s / filename) for s in SUBFOLDERS)
        raise FileNotFoundError(f"no {filename} under {path} (looked at {looked})")
    if str(source).count("/") == 1 and not str(source).startswith((".", "/")):
        errors = []
        for sub in SUBFOLDERS:
            try:
                return Path(hf_hub_download(str(source), filename, subfolder=sub or None))
            except Exception as err:  # noqa: BLE001 - try the next known location
                errors.append(f"{sub or '.'}: {type(err).__name__}")
        raise FileNotFoundError(
            f"could not download {filename} from hub repo {source!r} ({'; '.join(errors)}); "
            "pass a local directory instead"
        )
    raise FileNotFoundError(f"tokenizer source {source!r} is neither a file, a directory nor a hub id")


class TextTokenizer:
    """Encodes text pieces without special tokens; ids are the model's vocabulary ids."""

    def __init__(self, tokenizer_file: str | Path):
        self.path = Path(tokenizer_file)
        if not self.path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {self.path}")
        self.vocab = Vocab.from_tokenizer_file(self.path)  # asserts every official id by name; names a bad file
        try:
            self._tok = Tokenizer.from_file(str(self.path))
        except Exception as err:  # noqa: BLE001 - the tokenizers library raises its own bare Exception
            raise InputFileError(self.path, f"the tokenizers library cannot read it ({err})") from None
        for name, want in OFFICIAL_NAMES.items():  # and the encoder itself agrees (added_tokens vs model.vocab)
            got = self._tok.token_to_id(name)
            if got != want:
                raise ValueError(f"{self.path}: the tokenizer maps {name!r} to {got}, the official format needs {want}")

    @classmethod
    def from_pretrained(cls, source: str | Path) -> "TextTokenizer":
        return cls(resolve_tokenizer_file(source))

    def encode(self, text: str) -> list[int]:
        if not text:
            return []
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def token_to_id(self, name: str) -> int | None:
        return self._tok.token_to_id(name)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def sha256(self) -> str:
        return sha256_file(self.path)
