"""Training data: data sets -> one indexable set (kind-filtered) -> DataLoader of `Batch`es.

`data.source=shards` (default): the sets are the data pipeline's pretokenized outputs
(`worldvla.data.datasets.PretokenizedDataset`: pretokenize.py folders, concat.py indexes, official record
lists). Their manifests record the Recipe they were tokenised with (its fingerprint); where it differs
from the run's (`check_shards`, by Recipe.diff: resolution, statistics) training stops, rather than
mis-training silently.

`data.source=conversations` (the official "NoPretokenize" path): the sets are conversation JSON files
(conversations.py output), tokenised when indexed by `worldvla.data.datasets.OnTheFlyDataset` with the
Recipe of the data section (data.recipe), so they cannot disagree with the config. All files share one
dataset, hence one VQ-GAN and one image-token cache per loader process. The batch plan needs every
sample's length up front: `conversation_lengths` gets them exactly without touching an image (the text
is tokenised, each media placeholder counts as its block length), so the batches, and a resumed run's
data position, are those of the pretokenized path. Records without supervised tokens are left out, as
pretokenize leaves them out.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import numpy as np
import torch

from worldvla.config import ConfigError
from worldvla.data.augment import jitter_state
from worldvla.data.collate import collate
from worldvla.data.datasets import OnTheFlyDataset, PretokenizedDataset
from worldvla.data.frame_cache import FrameCache
from worldvla.data.pretokenize import record_name
from worldvla.data.sequence import RecordError, Sample, SequenceBuilder
from worldvla.data.tokenization import sample_kind, tokenizer_files, vqgan_fingerprint
from worldvla.errors import DataError
from worldvla.recipe import SAMPLE_KINDS, Recipe, stats_json, stats_of
from worldvla.tokenizers import ActionTokenizer, StateTokenizer, TextTokenizer
from worldvla.tokenizers.image import image_token_count
from worldvla.train.config import DataOptions
from worldvla.train.sampler import BatchPlan, PlanSampler

log = logging.getLogger(__name__)


class TrainSet(torch.utils.data.Dataset):
    """The concatenation of `paths`, restricted to samples whose kind is in `kinds`. `data`: the run's data
    section; with `data.source=conversations` the paths are conversation JSON files tokenised on the fly."""

    def __init__(self, paths: list[Path], kinds: list[str], max_len: int, where: str = "data.train",
                 data: DataOptions | None = None):
        self.paths = list(paths)
        if data is not None and data.source == "conversations":
            self.parts, part_lengths = _open_conversations(self.paths, data, where)
        else:
            self.parts, part_lengths = _open_shards(self.paths, where)
        index, lengths = [], []
        for i, (ds, n_tokens) in enumerate(zip(self.parts, part_lengths)):
            keep = np.ones(len(ds), dtype=bool)
            if set(kinds) != set(SAMPLE_KINDS):
                try:
                    keep = np.array([ds.kind(j) in kinds for j in range(len(ds))], dtype=bool)
                except (ValueError, OSError) as err:
                    raise DataError(f"{where}[{i}] = {self.paths[i]}: {err}") from None
            sel = np.flatnonzero(keep & (n_tokens >= 0))  # -1: a record conversation_lengths left out
            index.append(np.stack([np.full(len(sel), i), sel], axis=1))
            lengths.append(np.minimum(n_tokens[sel], max_len))
        self.index = np.concatenate(index) if index else np.zeros((0, 2), np.int64)  # (N, 2): (part, item)
        self.lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)  # (N,) tokens after cut
        if len(self.index) == 0:
            raise DataError(f"{where}: no samples of kind(s) {kinds} in {[str(p) for p in paths]}")

    def __len__(self) -> int:
        return len(self.index)

    state_jitter = 0  # data.state_jitter: bins each state token moves at random (augment.jitter_state)
    seed = 0  # with the epoch and the index, decides the jitter: a resumed run draws the same
    epoch = 0  # set by the training loop before each epoch's loader is made (workers get a copy)

    def __getitem__(self, i: int) -> Sample:
        part, item = self.index[int(i)]
        sample = self.parts[int(part)][int(item)]
        if self.state_jitter:
            sample = jitter_state(sample, self.state_jitter, np.random.default_rng([self.seed, self.epoch, int(i)]))
        return sample

    def check_vocab(self, vocab_size: int) -> None:
        """Token ids of every pretokenized source fit the model's vocabulary (data/shards.py check_ids)."""
        for i, ds in enumerate(self.parts):
            if hasattr(ds, "check_ids"):
                ds.check_ids(vocab_size)

    def manifests(self) -> list[dict]:
        """The pretokenize manifests of every source (official record lists and conversation files have none)."""
        out = []
        for ds in self.parts:
            out += [s.manifest for s in getattr(ds, "sources", []) if getattr(s, "manifest", None)]
        return out


def _open_shards(paths: list[Path], where: str) -> tuple[list, list[np.ndarray]]:
    parts, lengths = [], []
    for i, path in enumerate(paths):
        try:
            ds = PretokenizedDataset(path)
            lengths.append(np.asarray(ds.lengths, dtype=np.int64))
        except (FileNotFoundError, ValueError, OSError) as err:
            raise DataError(f"{where}[{i}] = {path}: {err}") from None
        parts.append(ds)
    return parts, lengths


# -- data.source = conversations ------------------------------------------------------------------
class ConversationFile(torch.utils.data.Dataset):
    """The records of one conversation file, a window on the `OnTheFlyDataset` that all files share."""

    def __init__(self, shared, first: int, records: list[dict], path: Path, lengths: np.ndarray):
        self.shared, self.first, self.records, self.path, self.lengths = shared, first, records, path, lengths
        self._warned = False

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, j: int) -> Sample:
        # Tokenising in the training process (num_workers=0) builds the VQ-GAN lazily, which draws from the
        # global RNGs that dropout uses: keep them untouched, so runs and resumed runs match the shards path.
        with torch.random.fork_rng(devices=[]):
            np_state = np.random.get_state()
            try:
                sample = self.shared[self.first + int(j)]
            finally:
                np.random.set_state(np_state)
        if len(sample) != self.lengths[j] and not self._warned:  # a block length that is not constant
            self._warned = True
            log.warning("%s[%d]: %d tokens, but %d were planned for it (data.source=conversations assumes every "
                        "action / state block as long as the first); batches group less well", self.path, j,
                        len(sample), self.lengths[j])
        return sample

    def kind(self, j: int) -> str:
        return self.shared.kind(self.first + int(j))

    def layout(self) -> dict:
        """probe_layout's answer from the records themselves (no tokenisation)."""
        action = [r for r in self.records if sample_kind(r) == "action"]
        return {"n_action": len(action), "max_images": max((len(r.get("image") or []) for r in action), default=0),
                "with_state": any(bool(r.get("state")) for r in action)}


class _LengthBuilder(SequenceBuilder):
    """A SequenceBuilder that reads no media: an image block is `image_token_count(resolution)` long, an
    action / state block as long as the first one of its kind (tokenised for real)."""

    def __init__(self, text, resolution: int, action, state):
        super().__init__(text, None, action, state)
        self.block = {"image": image_token_count(resolution)}

    def _media_tokens(self, kind: str, item, base_dir: Path | None) -> list[int]:
        if kind == "image" and isinstance(item, (list, tuple)) and item and isinstance(item[0], (int, np.integer)):
            return [int(x) for x in item]  # already image tokens
        if kind not in self.block:
            self.block[kind] = len(super()._media_tokens(kind, item, base_dir))
        return [0] * self.block[kind]


def _length_key(record) -> tuple | None:
    """What a record's length depends on, when its media are files (None: compute it)."""
    try:
        if any(not isinstance(x, (str, Path)) for x in record.get("image") or []):
            return None
        turns = tuple((t.get("from"), str(t.get("value"))) for t in record["conversations"])
        return turns, *(len(record.get(k) or []) for k in ("image", "action", "state"))
    except (AttributeError, KeyError, TypeError):
        return None


def conversation_lengths(records: list[dict], names, recipe: Recipe, tokenizer: Path,
                         base_dir: Path | None = None) -> np.ndarray:
    """Token count of every record as the on-the-fly tokenizer will build it with `recipe` and the tokenizer
    files in `tokenizer` (-1: no supervised token, a record pretokenize skips). Only the text is tokenised
    (once per distinct conversation); raises RecordError naming the record (`names(i)`) for a record that
    cannot be built."""
    text = TextTokenizer(tokenizer_files(tokenizer)["text_tokenizer.json"])
    builder = _LengthBuilder(text, recipe.resolution, ActionTokenizer(stats_of(recipe.action_stats)),
                             StateTokenizer(stats_of(recipe.state_stats)))
    out = np.empty(len(records), dtype=np.int64)
    memo: dict[tuple, int] = {}
    for i, record in enumerate(records):
        key = _length_key(record)
        if key is None or key not in memo:
            try:
                n = len(builder.build(record, training=True, base_dir=base_dir, name=names(i)))
            except RecordError as err:
                if "no supervised tokens" not in str(err):
                    raise
                n = -1
            if key is not None:
                memo[key] = n
        out[i] = memo[key] if key is not None else n
    return out


def _open_conversations(paths: list[Path], cfg: DataOptions, where: str) -> tuple[list, list[np.ndarray]]:
    for i, path in enumerate(paths):
        if not Path(path).is_file():
            raise DataError(f"{where}[{i}] = {path}: conversation file not found (data.source=conversations reads "
                            "conversations.py's JSON files; set data.source=shards for pretokenized sets)")
    try:
        recipe = cfg.recipe.with_tokenizer(cfg.tokenizer)
    except FileNotFoundError as err:
        raise DataError(f"data.tokenizer = {cfg.tokenizer}: {err}") from None
    if cfg.frame_cache is not None:
        if not (Path(cfg.frame_cache) / "cache.json").is_file():
            raise DataError(f"data.frame_cache = {cfg.frame_cache}: not a frame cache (no cache.json); point it at "
                            "pretokenize's frames folder or leave it empty")
        try:
            FrameCache(cfg.frame_cache, vqgan_fingerprint(recipe))
        except (FileExistsError, ValueError, OSError) as err:
            raise DataError(f"data.frame_cache = {cfg.frame_cache}: {err}") from None
    try:
        shared = OnTheFlyDataset(paths, recipe, cfg.tokenizer, cfg.base_dir, cfg.image_cache, cfg.frame_cache,
                                 cfg.resize)
    except (ValueError, OSError) as err:
        i = next((k for k, p in enumerate(paths) if str(p) in str(err)), None)
        raise DataError(f"{where}[{i}] = {paths[i]}: {err}" if i is not None else f"{where}: {err}") from None
    conv = shared.sources[0]
    parts, lengths = [], []
    for i, (path, info) in enumerate(zip(paths, conv.inputs)):
        first, n = info["first"], info["n_records"]
        records = conv.records[first: first + n]
        try:
            n_tokens = conversation_lengths(records, lambda j, f=first: record_name(conv.inputs, f + j), recipe,
                                            cfg.tokenizer, cfg.base_dir)
        except RecordError as err:
            raise DataError(f"{where}[{i}] = {path}: {err}") from None
        skipped = int((n_tokens < 0).sum())
        if skipped:
            log.warning("%s[%d] = %s: %d record(s) without supervised tokens left out (as pretokenize does)", where,
                        i, path, skipped)
        parts.append(ConversationFile(shared, first, records, Path(path), n_tokens))
        lengths.append(n_tokens)
    return parts, lengths


def check_shards(manifests: list[dict], recipe: Recipe) -> None:
    """The shards' Recipe (their manifest's tokenizer fingerprint, Recipe.from_fingerprint) must agree with the
    run's (data.recipe) on every field Recipe.diff compares: resolution and action / state statistics go
    into checkpoints and decide how evaluation de-normalises. Only fields a manifest records are compared;
    statistics of a sample kind the shards do not hold are not; state statistics only with_state."""
    fields = ["resolution", "action_stats", "world_action_stats"] + (["state_stats"] if recipe.with_state else [])
    for m in manifests:
        tok = m.get("tokenizer") or {}
        where = (m.get("config") or {}).get("out_dir", "a pretokenized set")
        kinds = m.get("kinds") or {}
        recorded = [f for f in fields if (f in tok if f == "resolution" else bool(tok.get(f)))
                    and (f not in _STATS_KIND or kinds.get(_STATS_KIND[f], 1))]
        shards = Recipe.from_fingerprint(tok)
        differing = recipe.differing(shards, recorded)  # the fields Recipe.diff would list
        if differing:
            raise ConfigError(_mismatch_message(differing[0], recipe, shards, where))


_STATS_KIND = {"world_action_stats": "world", "state_stats": "action"}  # the samples a statistics set binned


def _mismatch_message(name: str, want: Recipe, shards: Recipe, where: str) -> str:
    """The one-line error for a Recipe field where the shards differ from the data section (`data.<field>`)."""
    if name == "resolution":
        return (f"{where} was tokenised at {shards.resolution} px but data.recipe.resolution={want.resolution}; "
                "fix data.recipe.resolution or point data.train at the matching shards")
    if name == "world_action_stats":
        field_name = "data.recipe.world_action_stats" if want.world_action_stats else \
            "data.recipe.world_action_stats (null: data.recipe.action_stats)"
        what = "world action stats"
    else:
        field_name, what = f"data.recipe.{name}", "action" if name == "action_stats" else "state stats"
    spec = want.value(name)
    return (f"{where} was tokenised with {what} min/max {stats_json(shards.value(name))} but {field_name}={spec!r} "
            f"is {stats_json(spec)}")


def probe_layout(ds, n_probe: int = 512) -> dict:
    """Image and state blocks of up to `n_probe` evenly spaced samples of one data set (action samples only):
    {"n_action", "max_images", "with_state"}. Evenly spaced so that world-first concatenations are covered."""
    if hasattr(ds, "layout"):  # conversation files: read from the records, nothing tokenised
        return ds.layout()
    idx = np.unique(np.linspace(0, len(ds) - 1, min(n_probe, len(ds))).astype(np.int64))
    n_action = max_images = 0
    with_state = False
    for i in idx:
        if ds.kind(int(i)) != "action":
            continue
        sample = ds[int(i)]
        n_action += 1
        max_images = max(max_images, len(sample.spans_of("image")))
        with_state |= bool(sample.spans_of("state"))
    return {"n_action": n_action, "max_images": max_images, "with_state": with_state}


def check_views(dataset: TrainSet, cfg: DataOptions, where: str = "data.train") -> None:
    """data.recipe's with_wrist / with_state / history must describe the shards: the checkpoint tells evaluation
    to build its prompts that way. Action samples hold history x views images (views = 2 with the wrist)."""
    r = cfg.recipe
    views = 2 if r.with_wrist else 1
    for i, (path, ds) in enumerate(zip(dataset.paths, dataset.parts)):
        got = probe_layout(ds)
        if got["n_action"] == 0:
            continue
        if got["with_state"] != r.with_state:
            has = "carry" if got["with_state"] else "have no"
            raise ConfigError(f"{where}[{i}] = {path}: its action samples {has} a state block but "
                              f"data.recipe.with_state={str(r.with_state).lower()}; set "
                              f"data.recipe.with_state={str(got['with_state']).lower()} "
                              "or point at shards made with(out) conversations recipe.with_state")
        if got["max_images"] != r.history * views:
            raise ConfigError(f"{where}[{i}] = {path}: action samples hold up to {got['max_images']} images, but "
                              f"data.recipe.history={r.history} x {views} view(s) (data.recipe.with_wrist="
                              f"{str(r.with_wrist).lower()}) means {r.history * views}; fix data.recipe.with_wrist / "
                              "data.recipe.history or the shards")


def make_loader(dataset: TrainSet, plan: BatchPlan, epoch: int, rank: int, start_step: int, max_len: int,
                num_workers: int) -> torch.utils.data.DataLoader:
    """This process's micro-batches of `epoch` from optimizer step `start_step`.

    The loader gets its own torch generator, so creating it does not draw from the global RNG that
    dropout uses (a resumed run creates its loader at another point of the RNG stream).
    """
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=PlanSampler(plan, epoch, rank, start_step), num_workers=num_workers,
        collate_fn=partial(collate, max_len=max_len), generator=torch.Generator().manual_seed(0),
        persistent_workers=False, prefetch_factor=4 if num_workers > 0 else None,
    )
