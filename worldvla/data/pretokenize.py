"""Conversation JSONs -> token shards (shards.py format) with a manifest; parallel and resumable.

Two phases, both spread over `workers` processes:
1. frames: every image file the records use is VQ-encoded once into a frame cache (frame_cache.py),
   in chunks; a frame shared by many samples, or by the world and action sets, costs one encoding.
2. shards: records of all inputs are numbered in order and cut into shards of `shard_size` records;
   shard k always holds the same records, so shards are independent jobs.
A rerun skips every shard already complete with the same fingerprint (tokenizer file hashes,
normalisation statistics, resolution, input file hashes, shard size) and every cached frame; killing
the job loses at most the chunks and shards in flight, and the rerun output is identical to an
uninterrupted run. Records without a supervised token are skipped and listed (the official
LabelAllZeroError); any other bad record (missing image, NaN action) stops the run with the record,
file and trajectory named, unless `skip_errors=true`.

Output:
    <out_dir>/manifest.json        written last: counts, token totals, tokenizer hashes, config, shard list
    <out_dir>/shards/shard_<k>/    see shards.py
    <out_dir>/frames/              the frame cache (unless frame_cache= points elsewhere); not needed for training
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from tqdm import tqdm

from worldvla.atomic import atomic_write_json
from worldvla.config import parse_cli, to_dict
from worldvla.data.frame_cache import FrameCache, frame_key, key_path
from worldvla.data.sequence import RecordError
from worldvla.data.shards import shard_name, write_shard
from worldvla.data.stage_cli import run, setup_logging
from worldvla.data.tokenization import (
    SampleTokenizer,
    fit_frame,
    media_key,
    sha256_file,
    tokenizer_files,
    vqgan_fingerprint,
)
from worldvla.errors import InputFileError
from worldvla.lockfile import FolderLock
from worldvla.recipe import SAMPLE_KINDS, Recipe
from worldvla.tokenizers import ImageTokenizer
from worldvla.tokenizers.image import to_rgb_array
from worldvla.vocab import Vocab

log = logging.getLogger(__name__)

FORMAT = "worldvla-pretokenized/1"
MANIFEST = "manifest.json"


@dataclass
class TokenizerOptions:
    """The `tokenizer.*` keys of the pretokenize CLI: where the tokenizer files are, how the VQ-GAN runs, and
    the Recipe whose fields change token ids (resolution, statistics; the manifest's `tokenizer` is the
    fingerprint of `recipe.with_tokenizer(path)`)."""

    renamed: ClassVar[dict[str, str]] = {k: f"recipe.{k}" for k in ("resolution", "action_stats",
                                                                    "world_action_stats", "state_stats")}
    path: Path = Path("ckpts/chameleon/tokenizer")  # folder with text_tokenizer.json, vqgan.yaml, vqgan.ckpt (or its parent)
    # recipe.resolution: the image side in px the VQ-GAN sees (256 or 512); recipe.action_stats / state_stats:
    # preset name or JSON file (min/max of the 7-D actions / 8-D state); recipe.world_action_stats: statistics
    # of world-model samples (null = action_stats)
    recipe: Recipe = field(default_factory=Recipe)
    device: str = "cpu"  # where the VQ-GAN runs
    resize: bool = False  # frames of another size (e.g. LeRobot 96 x 128) resized to resolution x resolution (PIL
    # bicubic, no crop: RynnVLA-002's LeRobot path); False refuses them. Frames at the resolution are never touched
    image_batch: int = 1  # images per VQ-GAN call; 1 is fastest on CPU and keeps codes independent of batching
    # (>1 speeds up GPUs but near-tie codes may then differ from the on-the-fly path, which encodes one by one)


@dataclass
class PretokenizeConfig:
    inputs: list[Path] = field(default_factory=list)  # conversation JSON files, concatenated in this order
    out_dir: Path = Path("data/processed/tokens/run")
    tokenizer: TokenizerOptions = field(default_factory=TokenizerOptions)
    base_dir: Path | None = None  # resolve relative media paths against this (default: the working directory)
    workers: int = 1  # processes; each loads its own VQ-GAN and uses `torch_threads` threads
    torch_threads: int = 1
    shard_size: int = 256  # records per shard (the unit of resumption)
    frame_chunk: int = 64  # frames per encoding job (phase 1)
    frame_cache: Path | None = None  # VQ-code cache folder; default <out_dir>/frames. Share it between the
    # world and action runs of one export so each frame is encoded once (one run at a time)
    skip_errors: bool = False  # skip (and list) bad records instead of stopping
    overwrite: bool = False  # discard shards of a different configuration in out_dir


def load_records(paths: list[Path]) -> tuple[list[dict], list[dict]]:
    """(records, per-input info) for the conversation files, in order."""
    records, info = [], []
    for path in paths:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"conversation file not found: {path} (run `worldvla conversations`)") from None
        except json.JSONDecodeError as err:
            raise InputFileError(path, f"not valid JSON ({err})") from None
        except UnicodeDecodeError as err:
            raise InputFileError(path, f"not UTF-8 text ({err}); expected a conversation JSON") from None
        if not isinstance(data, list):
            raise InputFileError(path, "expected a JSON list of conversation records")
        if not data:  # a set of 0 samples would train on nothing
            raise InputFileError(path, "the conversation list is empty (0 records); check the conversations stage")
        info.append({"path": str(path), "sha256": sha256_file(path), "n_records": len(data), "first": len(records)})
        records += data
    return records, info


def fingerprint(cfg: PretokenizeConfig, inputs: list[dict], tok: dict) -> str:
    key = {"inputs": [i["sha256"] for i in inputs], "tokenizer": tok, "shard_size": cfg.shard_size,
           "base_dir": str(cfg.base_dir) if cfg.base_dir else None}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def record_name(inputs: list[dict], gid: int) -> str:
    for inp in reversed(inputs):
        if gid >= inp["first"]:
            return f"{inp['path']}[{gid - inp['first']}]"
    return str(gid)


# -- workers ------------------------------------------------------------------------------------
_STATE: dict = {}
# Crash tests: with workers=1, hard-exit (as a SIGKILL would, no cleanup) after writing this many shards.
CRASH_ENV = "WORLDVLA_PRETOKENIZE_CRASH_AFTER_SHARDS"


def _init_frames(cfg: PretokenizeConfig, recipe: Recipe) -> None:
    torch.set_num_threads(max(1, cfg.torch_threads))
    files = tokenizer_files(cfg.tokenizer.path)
    vocab = Vocab.from_tokenizer_file(files["text_tokenizer.json"])
    _STATE["image"] = ImageTokenizer.from_files(files["vqgan.yaml"], files["vqgan.ckpt"], vocab,
                                                recipe.resolution, device=cfg.tokenizer.device)
    _STATE["cfg"] = cfg


def _frames_job(job: tuple[int, list[tuple[str, str]], str, dict]) -> int:
    """Encode one chunk of frames ((key, record name) pairs) into the frame cache."""
    k, items, folder, vq_fp = job
    cfg: PretokenizeConfig = _STATE["cfg"]
    image = _STATE["image"]
    codes = []
    for i in range(0, len(items), cfg.tokenizer.image_batch):
        batch = items[i: i + cfg.tokenizer.image_batch]
        arrays = []
        for key, name in batch:
            try:
                frame = to_rgb_array(key_path(key))
            except OSError as err:
                raise RecordError(f"record {name}: cannot read image {key_path(key)}: {err}") from None
            try:
                arrays.append(fit_frame(frame, image.resolution, cfg.tokenizer.resize))
            except ValueError as err:
                raise RecordError(f"record {name}: image {key_path(key)}: {err}") from None
        try:
            codes.append(image.encode(arrays))
        except ValueError as err:
            raise RecordError(f"record {batch[0][1]}: image {key_path(batch[0][0])}: {err}") from None
    FrameCache(folder, vq_fp).add_chunk(k, [key for key, _ in items], np.concatenate(codes))
    return len(items)


def _init_shards(cfg: PretokenizeConfig, recipe: Recipe, frames_dir: str) -> None:
    torch.set_num_threads(max(1, cfg.torch_threads))
    _STATE["tok"] = SampleTokenizer(recipe, cfg.tokenizer.path, cfg.base_dir, cache_size=4096,
                                    frame_cache=FrameCache(frames_dir, vqgan_fingerprint(recipe)),
                                    device=cfg.tokenizer.device, image_batch=cfg.tokenizer.image_batch,
                                    resize=cfg.tokenizer.resize)
    _STATE["cfg"] = cfg


def _shard_job(job: tuple[int, list[tuple[int, str, dict]], str, str]) -> dict:
    k, items, folder, fp = job
    cfg: PretokenizeConfig = _STATE["cfg"]
    tok: SampleTokenizer = _STATE["tok"]
    samples, kinds, ids, skipped = [], [], [], []
    t0 = time.perf_counter()
    for gid, name, record in items:
        try:
            sample, kind = tok.build(record, name)
        except RecordError as err:
            if "no supervised tokens" in str(err) or cfg.skip_errors:
                skipped.append({"id": gid, "record": name, "reason": str(err)})
                continue
            raise
        samples.append(sample)
        kinds.append(kind)
        ids.append(gid)
    info = {"fingerprint": fp, "shard": k, "records": [items[0][0], items[-1][0] + 1] if items else [0, 0],
            "skipped": skipped, "seconds": round(time.perf_counter() - t0, 3), "images_encoded": tok.n_encoded}
    tok.n_encoded = 0
    out = write_shard(Path(folder), samples, kinds, ids, info)
    _STATE["written"] = _STATE.get("written", 0) + 1
    if cfg.workers <= 1 and _STATE["written"] == int(os.environ.get(CRASH_ENV, "0") or 0):
        os._exit(137)
    return out


def _pool_map(cfg: PretokenizeConfig, fn, jobs: list, init, initargs: tuple, desc: str, unit: str) -> None:
    bar = tqdm(total=len(jobs), desc=desc, unit=unit)
    if cfg.workers <= 1 or len(jobs) <= 1:
        init(*initargs)
        for job in jobs:
            fn(job)
            bar.update()
    else:
        with mp.get_context("spawn").Pool(cfg.workers, initializer=init, initargs=initargs) as pool:
            for _ in pool.imap_unordered(fn, jobs):
                bar.update()
    bar.close()
    _STATE.clear()


def encode_frames(cfg: PretokenizeConfig, recipe: Recipe, records: list[dict], inputs: list[dict], gids: list[int],
                  frames_dir: Path) -> int:
    """Phase 1: every image of records `gids` not yet in the frame cache, encoded once. Returns the count."""
    vq_fp = vqgan_fingerprint(recipe)
    cache = FrameCache(frames_dir, vq_fp)
    todo: dict[str, str] = {}
    for g in gids:
        for item in records[g].get("image") or []:
            if not isinstance(item, (str, Path)):
                continue
            path = media_key(item, cfg.base_dir)
            try:
                key = frame_key(path)
            except OSError:
                if cfg.skip_errors:
                    continue  # the record is skipped with this error in phase 2
                trj = Path(path).parent.parent
                raise RecordError(f"record {record_name(inputs, g)}: image file not found: {path} "
                                  f"(trajectory {trj.name} of task {trj.parent.name})") from None
            if key not in cache and key not in todo:
                todo[key] = record_name(inputs, g)
    keys = list(todo)
    first = cache.next_chunk_id()
    jobs = [(first + i, [(k, todo[k]) for k in keys[lo: lo + cfg.frame_chunk]], str(frames_dir), vq_fp)
            for i, lo in enumerate(range(0, len(keys), cfg.frame_chunk))]
    if jobs:
        log.info("encoding %d new frames (%d already cached) -> %s", len(keys), len(cache), frames_dir)
        _pool_map(cfg, _frames_job, jobs, _init_frames, (cfg, recipe), "encode frames", "chunk")
    return len(keys)


# -- driver -------------------------------------------------------------------------------------
def _check_existing(out_dir: Path, fp: str, overwrite: bool) -> None:
    shards = out_dir / "shards"
    if not shards.is_dir():
        return
    for tmp in shards.glob(".tmp_*"):  # left by a killed run
        shutil.rmtree(tmp, ignore_errors=True)
    foreign = []
    for info in shards.glob("shard_*/info.json"):
        try:
            same = json.loads(info.read_text()).get("fingerprint") == fp
        except (OSError, json.JSONDecodeError):
            same = False
        if not same:
            foreign.append(info.parent)
    if foreign:
        if not overwrite:
            raise FileExistsError(f"{out_dir}: {len(foreign)} shard(s) (e.g. {foreign[0].name}) were made with another "
                                  "configuration, tokenizer or input; pass overwrite=true or use a new out_dir")
        for f in foreign:
            shutil.rmtree(f)
    for stale in shards.glob("shard_*"):
        if stale.is_dir() and not (stale / "info.json").is_file():
            shutil.rmtree(stale)


class FinishedSetError(FileExistsError):
    """out_dir holds a finished data set of another configuration; nothing was changed."""


def manifest_differences(old: dict, cfg: PretokenizeConfig, inputs: list[dict], tok_fp: dict) -> list[str]:
    """What makes a finished set's manifest differ from this run (field: old -> new), for the error message."""
    diffs = []
    old_inputs = old.get("inputs") or []
    if [i.get("path") for i in old_inputs] != [i["path"] for i in inputs]:
        diffs.append(f"inputs: {[i.get('path') for i in old_inputs]} -> {[i['path'] for i in inputs]}")
    for a, b in zip(old_inputs, inputs):
        if a.get("sha256") != b["sha256"]:
            diffs.append(f"inputs[{b['path']}].sha256: {str(a.get('sha256'))[:12]} -> {b['sha256'][:12]} "
                         f"(content changed; {a.get('n_records')} -> {b['n_records']} records)")
    for key in sorted(set(old.get("tokenizer") or {}) | set(tok_fp)):
        a, b = (old.get("tokenizer") or {}).get(key), tok_fp.get(key)
        if a != b:
            show = (lambda v: str(v)[:12]) if key.endswith("sha256") else repr
            diffs.append(f"tokenizer.{key}: {show(a)} -> {show(b)}")
    old_cfg = old.get("config") or {}
    for key, new in (("shard_size", cfg.shard_size), ("base_dir", str(cfg.base_dir) if cfg.base_dir else None)):
        if old_cfg.get(key) != new:
            diffs.append(f"{key}: {old_cfg.get(key)!r} -> {new!r}")
    return diffs or ["fingerprint (no single field identified)"]


def _read_manifest(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputFileError(path, f"not valid JSON ({err}); a finished set's manifest is damaged: restore it, "
                                   "or pass overwrite=true to rebuild the set") from None
    return data if isinstance(data, dict) else None


def pretokenize(cfg: PretokenizeConfig) -> dict:
    """Run (or finish) the job; returns the manifest. One run at a time per out_dir and per frame cache
    (lock files, worldvla/lockfile.py)."""
    if not cfg.inputs:
        raise ValueError("pretokenize: no inputs (pass inputs=[a.json,b.json])")
    if cfg.shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    if cfg.frame_chunk < 1:  # 0 would make range() step 0 after the inputs were read
        raise ValueError(f"frame_chunk must be >= 1, got {cfg.frame_chunk}")
    out_dir = Path(cfg.out_dir)
    frames_dir = Path(cfg.frame_cache) if cfg.frame_cache else out_dir / "frames"
    with FolderLock(out_dir, "pretokenize run"), FolderLock(frames_dir, "pretokenize run (frame cache)"):
        return _pretokenize(cfg, out_dir, frames_dir)


def _pretokenize(cfg: PretokenizeConfig, out_dir: Path, frames_dir: Path) -> dict:
    t0 = time.time()
    records, inputs = load_records(cfg.inputs)
    recipe = cfg.tokenizer.recipe.with_tokenizer(cfg.tokenizer.path)
    recipe.check_stats()  # before phase 1: a wrong dimension would otherwise show after every frame is encoded
    tok_fp = recipe.fingerprint()
    fp = fingerprint(cfg, inputs, tok_fp)
    manifest_path = out_dir / MANIFEST
    if manifest_path.is_file() and not cfg.overwrite:
        old = _read_manifest(manifest_path) or {}
        if old.get("fingerprint") == fp:
            log.info("%s is complete (same fingerprint); nothing to do", out_dir)
            return old
        raise FinishedSetError(
            f"{manifest_path}: {out_dir} holds a finished data set made with another configuration, tokenizer or "
            f"input; it differs in: {'; '.join(manifest_differences(old, cfg, inputs, tok_fp))}. Nothing was "
            "changed: use a new out_dir, or pass overwrite=true to replace that set")
    _check_existing(out_dir, fp, cfg.overwrite)
    if manifest_path.is_file():  # overwrite=true: the old set is being replaced
        manifest_path.unlink()
    (out_dir / "shards").mkdir(parents=True, exist_ok=True)

    n_shards = (len(records) + cfg.shard_size - 1) // cfg.shard_size
    jobs = []
    for k in range(n_shards):
        folder = out_dir / "shards" / shard_name(k)
        if (folder / "info.json").is_file():
            continue
        lo, hi = k * cfg.shard_size, min((k + 1) * cfg.shard_size, len(records))
        items = [(g, record_name(inputs, g), records[g]) for g in range(lo, hi)]
        jobs.append((k, items, str(folder), fp))
    if len(jobs) < n_shards:
        log.info("resuming: %d of %d shards already done", n_shards - len(jobs), n_shards)
    n_new = encode_frames(cfg, recipe, records, inputs, [g for job in jobs for g, _, _ in job[1]], frames_dir)
    _pool_map(cfg, _shard_job, jobs, _init_shards, (cfg, recipe, str(frames_dir)), f"pretokenize -> {out_dir.name}",
              "shard")

    shards, skipped = [], []
    totals = {"n_samples": 0, "n_tokens": 0, "n_supervised": 0, "max_len": 0, "kinds": dict.fromkeys(SAMPLE_KINDS, 0)}
    seconds = 0.0
    for k in range(n_shards):
        info = json.loads((out_dir / "shards" / shard_name(k) / "info.json").read_text())
        shards.append({"name": shard_name(k), "n_samples": info["n_samples"], "n_tokens": info["n_tokens"]})
        skipped += info["skipped"]
        for key in ("n_samples", "n_tokens", "n_supervised"):
            totals[key] += info[key]
        totals["max_len"] = max(totals["max_len"], info["max_len"])
        for kind, n in info["kinds"].items():
            totals["kinds"][kind] += n
        seconds += info["seconds"]
    manifest = {
        "format": FORMAT, "fingerprint": fp, "n_records": len(records), **totals,
        "inputs": inputs, "tokenizer": tok_fp, "config": to_dict(cfg), "shards": shards, "skipped": skipped,
        "frame_cache": str(frames_dir),
        "timing": {"wall_seconds": round(time.time() - t0, 2), "shard_seconds_sum": round(seconds, 2),
                   "frames_encoded_this_run": n_new,
                   "workers": cfg.workers, "torch_threads": cfg.torch_threads},
    }
    atomic_write_json(manifest_path, manifest)
    log.info("pretokenized %d samples (%d tokens, %d skipped) in %d shards -> %s",
             totals["n_samples"], totals["n_tokens"], len(skipped), n_shards, out_dir)
    return manifest


def cli(argv: list[str] | None = None) -> dict:
    """Conversation JSONs -> memory-mappable token shards + manifest (parallel, resumable)."""
    cfg = parse_cli(PretokenizeConfig, argv, description=cli.__doc__)
    setup_logging()
    return pretokenize(cfg)


def main(argv: list[str] | None = None) -> int:
    """`worldvla pretokenize` / `python -m worldvla.data.pretokenize [--config f.yaml] key=value ...`; --help lists every key."""
    run(cli, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
