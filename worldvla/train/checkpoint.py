"""Checkpoints: one self-contained folder per save, written atomically, resumable step for step.

    <output_dir>/checkpoints/step_00005000/
        config.json, model*.safetensors, worldvla.json, tokenizer/   the inference checkpoint (docs/interfaces.md)
        train_config.yaml                                           the resolved run config
        trainer_state.json                                          step, epoch, position in the epoch, schedule, ...
        train_state/dcp/                                            model + AdamW state (fp32), torch.distributed.checkpoint
        train_state/rng_rank00000.json ...                          python / numpy / torch (/ cuda) RNG of every process
        (DeepSpeed runs: train_state/accelerate/ + deepspeed_sha256.json instead of dcp/, see safe_deepspeed.py)

Every process writes into `.tmp-step_XXXXXXXX/` and the main process renames it when all are done,
so a folder named `step_*` is always whole; a kill mid-save leaves only a `.tmp-*` folder, removed
at the next start. `keep_last` N > 0 deletes all but the newest N. The model and optimizer state
go through torch.distributed.checkpoint (each process writes its own shard; works unsharded, with
FSDP/FSDP2 and on a different process count), DeepSpeed runs use accelerate's save_state instead.
Multi-node runs need `output_dir` on a file system every node sees.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from worldvla.atomic import atomic_write_json, fsync_dir, fsync_tree
from worldvla.errors import InputFileError
from worldvla.model.convert import clean_key  # wrapper prefixes (checkpointing, compile, DDP)
from worldvla.train.safe_dcp import SafePlanner, SafeReader, failure_reason
from worldvla.train.safe_deepspeed import HASHES, check_deepspeed_folder, record_hashes, restricted_torch_load

log = logging.getLogger("worldvla.train")

PREFIX = "step_"
TMP_PREFIX = ".tmp-"
STATE_DIR = "train_state"
TRAINER_STATE = "trainer_state.json"
STEP_RE = re.compile(r"^step_(\d+)$")


class CheckpointError(RuntimeError):
    pass


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


RNG_SUFFIX = ".json"  # rng_rank00000.json; older checkpoints have rng_rank00000.pt (a torch pickle)


def rng_to_json(state: dict) -> dict:
    """The RNG state as plain JSON (no pickle): python's tuple, numpy's legacy tuple, torch byte tensors."""
    version, internal, gauss = state["python"]
    name, keys, pos, has_gauss, cached = state["numpy"]
    out = {"python": {"version": version, "state": list(internal), "gauss": gauss},
           "numpy": {"name": name, "keys": np.asarray(keys, dtype=np.uint32).tolist(), "pos": int(pos),
                     "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
           "torch": state["torch"].tolist()}
    if "cuda" in state:
        out["cuda"] = [t.tolist() for t in state["cuda"]]
    return out


def rng_from_json(data: dict) -> dict:
    p, n = data["python"], data["numpy"]
    state = {"python": (int(p["version"]), tuple(int(x) for x in p["state"]), p["gauss"]),
             "numpy": (str(n["name"]), np.asarray(n["keys"], dtype=np.uint32), int(n["pos"]), int(n["has_gauss"]),
                       float(n["cached_gaussian"])),
             "torch": torch.tensor(data["torch"], dtype=torch.uint8)}
    if "cuda" in data:
        state["cuda"] = [torch.tensor(t, dtype=torch.uint8) for t in data["cuda"]]
    return state


def read_rng_file(path: Path) -> dict:
    """An RNG file of any of our versions; never runs code from it (the old .pt with weights_only=True)."""
    try:
        if path.suffix == RNG_SUFFIX:
            return rng_from_json(json.loads(path.read_text()))
        numpy_array = [np.ndarray, np.dtype, np.dtypes.UInt32DType,
                       (np._core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
                       (np._core.multiarray._reconstruct, "numpy._core.multiarray._reconstruct")]
        with torch.serialization.safe_globals(numpy_array):
            return torch.load(path, weights_only=True)
    except Exception as err:  # noqa: BLE001 - corrupt JSON, truncated zip, refused global, missing key
        first = next((ln for ln in str(err).splitlines() if "WeightsUnpickler error" in ln), str(err).split("\n")[0])
        raise CheckpointError(f"{path}: unreadable or unsafe RNG state ({type(err).__name__}: {first[:300]})") from None


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def inner_optimizer(optimizer):
    """The torch optimizer inside accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)


def full_state_dict(model, accelerator, trainable_only: bool = False) -> dict:
    """The whole model state on the main process (CPU tensors; empty elsewhere). Collective: call on all.
    `trainable_only`: the parameters that train (a LoRA run's adapters), not the frozen base."""
    if _is_deepspeed(accelerator):
        return accelerator.get_state_dict(model)
    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True,
                                                              ignore_frozen_params=trainable_only))
    return {clean_key(k): v for k, v in sd.items()}


@contextlib.contextmanager
def _quiet_single_process():
    """torch.distributed.checkpoint warns when it runs without a process group: expected for one process."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _is_deepspeed(accelerator) -> bool:
    return accelerator is not None and str(accelerator.distributed_type).endswith("DEEPSPEED")


class CheckpointManager:
    def __init__(self, root: str | Path, accelerator, keep_last: int = 0, trainable_only: bool = False):
        self.root = Path(root)
        self.acc = accelerator
        self.keep_last = keep_last
        # LoRA: train_state/ holds the trainable parameters and their AdamW state; the frozen base is rebuilt
        # from model.init_from on resume (a few MB per checkpoint instead of the 7B model's 84 GB)
        self.options = StateDictOptions(ignore_frozen_params=trainable_only)
        # set_state_dict would count the frozen base as missing; dcp.load already failed on any absent trainable key
        self.load_options = StateDictOptions(ignore_frozen_params=trainable_only, strict=not trainable_only)

    # -- listing ----------------------------------------------------------------------------------
    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.root.iterdir() if (m := STEP_RE.match(p.name)) and p.is_dir()]
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        ckpts = self.checkpoints()
        return ckpts[-1] if ckpts else None

    def clean_partial(self) -> None:
        """Remove folders of saves that a kill interrupted (main process, at start)."""
        if self.acc.is_main_process and self.root.is_dir():
            for p in self.root.glob(TMP_PREFIX + "*"):
                log.info("removing the interrupted save %s", p)
                shutil.rmtree(p, ignore_errors=True)
        self.acc.wait_for_everyone()

    # -- save -------------------------------------------------------------------------------------
    def save(self, step: int, model, optimizer, trainer_state: dict, export: Callable[[dict, Path], None],
             whole: bool = True) -> Path:
        """Write checkpoint `step` (collective). `export(full_state_dict, folder)` writes the inference files;
        `whole=False` gives it the trainable parameters only (a LoRA run's adapter-only step)."""
        name = f"{PREFIX}{step:08d}"
        final, tmp = self.root / name, self.root / (TMP_PREFIX + name)
        if final.is_dir():
            return final
        t0 = time.time()
        if self.acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            (tmp / STATE_DIR).mkdir(parents=True)
        self.acc.wait_for_everyone()
        self._save_train_state(tmp / STATE_DIR, model, optimizer)
        full = full_state_dict(model, self.acc, trainable_only=not whole)
        if self.acc.is_main_process:
            export(full, tmp)
            atomic_write_json(tmp / TRAINER_STATE, {**trainer_state, "step": step, "world_size": self.acc.num_processes})
        del full
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            fsync_tree(tmp)  # resume trusts any step_* folder: every file must be on disk before the rename
            os.replace(tmp, final)
            fsync_dir(self.root)
            self._prune()
            log.info("saved %s in %.1f s", final, time.time() - t0)
        self.acc.wait_for_everyone()
        return final

    def _save_train_state(self, folder: Path, model, optimizer) -> None:
        if _is_deepspeed(self.acc):
            self.acc.save_state(str(folder / "accelerate"))
            self.acc.wait_for_everyone()  # every rank's partitions are written before the main process hashes them
            if self.acc.is_main_process:
                atomic_write_json(folder / HASHES, record_hashes(folder / "accelerate"))
        else:
            msd, osd = get_state_dict(model, inner_optimizer(optimizer), options=self.options)
            with _quiet_single_process():
                dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(folder / "dcp"))
        atomic_write_json(folder / f"rng_rank{self.acc.process_index:05d}{RNG_SUFFIX}", rng_to_json(rng_state()), None)

    def _prune(self) -> None:
        if self.keep_last <= 0:
            return
        for old in self.checkpoints()[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)

    # -- load -------------------------------------------------------------------------------------
    def _rng_file(self, path: Path) -> Path:
        rng_file = path / STATE_DIR / f"rng_rank{self.acc.process_index:05d}{RNG_SUFFIX}"
        if not rng_file.is_file() and rng_file.with_suffix(".pt").is_file():  # written before the JSON format
            rng_file = rng_file.with_suffix(".pt")
        return rng_file

    def verify(self, path: str | Path) -> dict:
        """Check that checkpoint `path` is whole (readable trainer_state.json, DCP metadata whose shard files
        hold every byte it lists, a readable RNG file) without loading it; returns trainer_state.json.
        Raises CheckpointError naming the damaged file. Every process reaches the same verdict."""
        path = Path(path)
        state_file = path / TRAINER_STATE
        if not state_file.is_file() or not (path / STATE_DIR).is_dir():
            raise CheckpointError(f"{path} is not a training checkpoint (no {TRAINER_STATE} / {STATE_DIR}/); "
                                  "to start from inference weights use model.init_from instead of train.resume")
        trainer_state = read_trainer_state(state_file)
        if (path / STATE_DIR / "accelerate").is_dir():  # a DeepSpeed run's: its pickles are checked before any load
            try:
                check_deepspeed_folder(path / STATE_DIR / "accelerate", path / STATE_DIR / HASHES)
            except InputFileError as err:
                raise CheckpointError(str(err)) from None
        elif not _is_deepspeed(self.acc):
            check_dcp_folder(path / STATE_DIR / "dcp")
        for rng_file in sorted((path / STATE_DIR).glob("rng_rank*")):  # every rank's, so all processes agree
            read_rng_file(rng_file)
        return trainer_state

    def latest_intact(self) -> Path | None:
        """The newest checkpoint that `verify` accepts; damaged newer ones are reported and skipped.

        None only when there is no checkpoint at all (a fresh start). Checkpoints that are all damaged or
        refused raise CheckpointError: starting again from step 0 there would hide the damage, replace the
        run's history and collide with the damaged step folders at their steps."""
        ckpts = self.checkpoints()
        refused: list[str] = []
        for i, path in enumerate(reversed(ckpts)):
            try:
                self.verify(path)
            except CheckpointError as err:
                refused.append(str(err))
                older = "falling back to the previous checkpoint" if i + 1 < len(ckpts) else "no older checkpoint"
                log.warning("not resuming from %s, it is damaged: %s; %s", path.name, err, older)
                continue
            return path
        if ckpts:
            raise CheckpointError(
                f"{self.root}: train.resume=auto found {len(ckpts)} checkpoint(s) ({', '.join(p.name for p in ckpts)}) "
                f"and none is usable (newest: {refused[0]}); to start fresh use a new train.output_dir with "
                "train.resume=none, or move these step folders away")
        return None

    def load(self, path: str | Path, model, optimizer) -> dict:
        """Restore model, optimizer and this process's RNG from `path`; returns trainer_state.json."""
        path = Path(path)
        trainer_state = self.verify(path)
        folder = path / STATE_DIR
        rng_file = self._rng_file(path)
        rng = read_rng_file(rng_file) if rng_file.is_file() else None
        if _is_deepspeed(self.acc):
            try:  # verify() checked every pickle; the loaders themselves are restricted too (a file swapped since)
                with restricted_torch_load():
                    self.acc.load_state(str(folder / "accelerate"))
            except InputFileError as err:
                raise CheckpointError(str(err)) from None
        else:
            opt = inner_optimizer(optimizer)
            msd, osd = get_state_dict(model, opt, options=self.options)
            state = {"model": msd, "optim": osd}
            try:
                with _quiet_single_process():
                    dcp.load(state, storage_reader=SafeReader(str(folder / "dcp")), planner=SafePlanner())
            except (Exception, CheckpointException) as err:  # noqa: BLE001 - DCP's wrapper is a BaseException
                raise CheckpointError(f"{folder / 'dcp'}: cannot read the model/optimizer state "
                                      f"({failure_reason(err)})") from None
            set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"],
                           options=self.load_options)
        if rng is not None:
            set_rng_state(rng)
        else:
            log.warning("%s missing (saved with %s processes, now %d): RNG not restored, the curve will differ",
                        rng_file.name, trainer_state.get("world_size"), self.acc.num_processes)
        return trainer_state


def read_trainer_state(path: Path) -> dict:
    """trainer_state.json with the fields resume needs, or a CheckpointError naming the file and field."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err}); the checkpoint is damaged") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    step = data.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"{path}: step: expected a non-negative integer, got {step!r}")
    return data


def check_dcp_folder(folder: Path) -> None:
    """A torch.distributed.checkpoint folder is whole: `.metadata` reads and every byte range it lists exists."""
    if not (folder / ".metadata").is_file():
        raise CheckpointError(f"{folder / '.metadata'}: missing; the model/optimizer state is incomplete")
    try:
        meta = SafeReader(str(folder)).read_metadata()
    except Exception as err:  # noqa: BLE001 - a truncated metadata pickle raises EOFError, UnpicklingError, ...
        raise CheckpointError(f"{folder / '.metadata'}: unreadable ({type(err).__name__}: {err})") from None
    need: dict[str, int] = {}
    for info in (meta.storage_data or {}).values():
        need[info.relative_path] = max(need.get(info.relative_path, 0), info.offset + info.length)
    for rel, end in sorted(need.items()):
        f = folder / rel
        size = f.stat().st_size if f.is_file() else -1
        if size < end:
            what = "missing" if size < 0 else f"truncated ({size} of {end} bytes)"
            raise CheckpointError(f"{f}: {what}; the model/optimizer state is damaged")
