"""Training datasets; every item is a `Sample(input_ids, labels, spans)`.

- `PretokenizedDataset(path)`: token shards of pretokenize.py (a folder with manifest.json), a
  concatenation index of concat.py, an official `record.json` list (pickles read safely), or an
  official data YAML (`META: - path: ...`), memory-mapped, no tokenizer needed.
- `OnTheFlyDataset(inputs, recipe, tokenizer)`: tokenises conversation records when indexed (the
  "NoPretokenize" pipeline) with a `Recipe`'s resolution and statistics and the tokenizer files of a
  folder, with an LRU cache of image tokens per worker process. Given the same conversation files and
  recipe it yields exactly the samples of the pretokenized path
  (provided no record is skipped there for lacking supervised tokens, which generated
  conversations never do).
"""

from __future__ import annotations

import bisect
import json
from pathlib import Path

import numpy as np
import torch
import yaml

from worldvla.data.frame_cache import FrameCache
from worldvla.data.official_records import OfficialRecords
from worldvla.data.pretokenize import FORMAT, MANIFEST, load_records, record_name
from worldvla.data.sequence import Sample, sample_kind
from worldvla.data.shards import ShardReader
from worldvla.data.tokenization import SampleTokenizer, vqgan_fingerprint, with_tokenizer_files
from worldvla.recipe import Recipe

CONCAT_FORMAT = "worldvla-concat/1"


class PretokenizedDir:
    """One pretokenize.py output folder."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        manifest = self.folder / MANIFEST
        if not manifest.is_file():
            raise FileNotFoundError(f"{self.folder}: no {MANIFEST} (pretokenize did not finish; rerun it to resume)")
        self.manifest = json.loads(manifest.read_text())
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{manifest}: format {self.manifest.get('format')!r}, expected {FORMAT!r}")
        self.shards = [ShardReader(self.folder / "shards" / s["name"]) for s in self.manifest["shards"]]
        for s, meta in zip(self.shards, self.manifest["shards"]):
            if len(s) != meta["n_samples"]:
                raise ValueError(f"{s.folder}: {len(s)} samples but the manifest says {meta['n_samples']}")
        self.starts = np.concatenate([[0], np.cumsum([len(s) for s in self.shards])]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _locate(self, i: int) -> tuple[ShardReader, int]:
        k = bisect.bisect_right(self.starts, i) - 1
        return self.shards[k], i - int(self.starts[k])

    def sample(self, i: int) -> Sample:
        shard, j = self._locate(i)
        return shard.sample(j)

    def kind(self, i: int) -> str:
        shard, j = self._locate(i)
        return shard.kind(j)

    def check_ids(self, vocab_size: int) -> None:
        for shard in self.shards:
            shard.check_ids(vocab_size)

    @property
    def lengths(self) -> np.ndarray:
        return np.concatenate([s.lengths for s in self.shards]) if self.shards else np.zeros(0, np.int64)


def open_sources(path: str | Path, root: str | Path | None = None) -> list:
    """The list of sources a path stands for (see the module docstring)."""
    path = Path(path)
    if path.is_dir():
        return [PretokenizedDir(path)]
    if not path.is_file():
        raise FileNotFoundError(f"dataset not found: {path}")
    if path.suffix in (".yaml", ".yml"):
        meta = (yaml.safe_load(path.read_text()) or {}).get("META")
        if not isinstance(meta, list):
            raise ValueError(f"{path}: expected `META:` with a list of {{path: ...}}")
        out = []
        for entry in meta:
            out += open_sources(entry["path"], root)
        return out
    data = json.loads(path.read_text())
    if isinstance(data, dict) and data.get("format") == CONCAT_FORMAT:
        out = []
        for src in data["sources"]:
            p = Path(src["path"])
            out += open_sources(p if p.is_absolute() else path.parent / p, root)
        return out
    if isinstance(data, list):
        return [OfficialRecords(path, root)]
    raise ValueError(f"{path}: neither a pretokenized folder, a {CONCAT_FORMAT} index, a record list nor a META yaml")


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, sources: list):
        self.sources = sources
        self.starts = np.concatenate([[0], np.cumsum([len(s) for s in sources])]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _locate(self, i: int):
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        k = bisect.bisect_right(self.starts, i) - 1
        return self.sources[k], i - int(self.starts[k])

    def __getitem__(self, i: int) -> Sample:
        src, j = self._locate(int(i))
        return src.sample(j)

    def kind(self, i: int) -> str:
        src, j = self._locate(int(i))
        return src.kind(j)

    def check_ids(self, vocab_size: int) -> None:
        """Token ids of the memory-mapped sources below `vocab_size` (official pickles and on-the-fly
        conversations are checked by the model's embedding when used)."""
        for src in self.sources:
            if hasattr(src, "check_ids"):
                src.check_ids(vocab_size)


class PretokenizedDataset(_Indexed):
    def __init__(self, path: str | Path, root: str | Path | None = None):
        """`root`: folder that relative pickle paths of official record lists are resolved against."""
        self.path = Path(path)
        super().__init__(open_sources(path, root))

    @property
    def lengths(self) -> np.ndarray:
        return np.concatenate([np.asarray(s.lengths, dtype=np.int64) for s in self.sources]) if self.sources \
            else np.zeros(0, np.int64)


class _Conversations:
    """Conversation records tokenised on demand (one SampleTokenizer per process, made lazily)."""

    def __init__(self, inputs: list[Path], recipe: Recipe, tokenizer: Path, base_dir, cache_size: int, frame_cache,
                 resize: bool = False):
        self.records, self.inputs = load_records(list(inputs))
        self.resize = resize
        self.recipe = with_tokenizer_files(recipe, tokenizer)  # hashed once here, not in every loader worker
        self.tokenizer = Path(tokenizer)
        self.base_dir = base_dir
        self.cache_size = cache_size
        self.frame_cache = frame_cache
        self._tok = None

    def __len__(self) -> int:
        return len(self.records)

    def __getstate__(self):  # DataLoader workers build their own tokenizer
        return {**self.__dict__, "_tok": None}

    @property
    def tok(self):
        if self._tok is None:
            frames = FrameCache(self.frame_cache, vqgan_fingerprint(self.recipe)) if self.frame_cache else None
            self._tok = SampleTokenizer(self.recipe, self.tokenizer, self.base_dir, cache_size=self.cache_size,
                                        frame_cache=frames, resize=self.resize)
        return self._tok

    def sample(self, i: int) -> Sample:
        return self.tok.build(self.records[i], record_name(self.inputs, i))[0]

    def kind(self, i: int) -> str:
        return sample_kind(self.records[i])


class OnTheFlyDataset(_Indexed):
    def __init__(self, inputs: list[str | Path], recipe: Recipe, tokenizer: str | Path, base_dir: str | Path | None = None,
                 cache_size: int = 4096, frame_cache: str | Path | None = None, resize: bool = False):
        """`inputs`: conversation JSON files (in order); `recipe`: the Recipe they are tokenised with (its
        resolution and statistics); `tokenizer`: the folder of its tokenizer files (sha256 checked against
        the recipe's when it records them); `cache_size`: images whose tokens each process keeps in memory;
        `frame_cache`: a pretokenize frame-cache folder to read VQ codes from (frames not in it are encoded
        on the fly); `resize`: frames not at the recipe's resolution are resized to it (pretokenize's
        tokenizer.resize) instead of refused."""
        super().__init__([_Conversations([Path(p) for p in inputs], recipe, Path(tokenizer), base_dir, cache_size,
                                         frame_cache, resize)])
