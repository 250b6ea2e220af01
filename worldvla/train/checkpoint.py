"""Checkpoints: one self-contained folder per save, written atomically, resumable step for step.

    <output_dir>/checkpoints/step_00005000/
        config.json, model*.safetensors, worldvla.json, tokenizer/   the inference checkpoint (docs/interfaces.md)
        train_config.yaml                                           the resolved run config
        trainer_state.json                                          step, epoch, position in the epoch, schedule, ...
        train_state/dcp/                                            model + AdamW state (fp32), torch.distributed.checkpoint
        train_state/rng_rank00000.pt ...                            python / numpy / torch (/ cuda) RNG of every process

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


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def inner_optimizer(optimizer):
    """The torch optimizer inside accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)


def full_state_dict(model, accelerator) -> dict:
    """The whole model state on the main process (CPU tensors; empty elsewhere). Collective: call on all."""
    if _is_deepspeed(accelerator):
        return accelerator.get_state_dict(model)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from worldvla.model.convert import clean_key  # wrapper prefixes (checkpointing, compile, DDP)

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
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
    def __init__(self, root: str | Path, accelerator, keep_last: int = 0):
        self.root = Path(root)
        self.acc = accelerator
        self.keep_last = keep_last

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
    def save(self, step: int, model, optimizer, trainer_state: dict, export: Callable[[dict, Path], None]) -> Path:
        """Write checkpoint `step` (collective). `export(full_state_dict, folder)` writes the inference files."""
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
        full = full_state_dict(model, self.acc)
        if self.acc.is_main_process:
            export(full, tmp)
            (tmp / TRAINER_STATE).write_text(json.dumps({**trainer_state, "step": step,
                                                         "world_size": self.acc.num_processes}, indent=1))
        del full
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            os.replace(tmp, final)
            self._prune()
            log.info("saved %s in %.1f s", final, time.time() - t0)
        self.acc.wait_for_everyone()
        return final

    def _save_train_state(self, folder: Path, model, optimizer) -> None:
        if _is_deepspeed(self.acc):
            self.acc.save_state(str(folder / "accelerate"))
        else:
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_state_dict

            msd, osd = get_state_dict(model, inner_optimizer(optimizer))
            with _quiet_single_process():
                dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(folder / "dcp"))
        torch.save(rng_state(), folder / f"rng_rank{self.acc.process_index:05d}.pt")

    def _prune(self) -> None:
        if self.keep_last <= 0:
            return
        for old in self.checkpoints()[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)

    # -- load -------------------------------------------------------------------------------------
    def load(self, path: str | Path, model, optimizer) -> dict:
        """Restore model, optimizer and this process's RNG from `path`; returns trainer_state.json."""
        path = Path(path)
        state_file = path / TRAINER_STATE
        if not state_file.is_file() or not (path / STATE_DIR).is_dir():
            raise CheckpointError(f"{path} is not a training checkpoint (no {TRAINER_STATE} / {STATE_DIR}/); "
                                  "to start from inference weights use model.init_from instead of train.resume")
        trainer_state = json.loads(state_file.read_text())
        folder = path / STATE_DIR
        if _is_deepspeed(self.acc):
            self.acc.load_state(str(folder / "accelerate"))
        else:
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

            opt = inner_optimizer(optimizer)
            msd, osd = get_state_dict(model, opt)
            state = {"model": msd, "optim": osd}
            with _quiet_single_process():
                dcp.load(state, checkpoint_id=str(folder / "dcp"))
            set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
        rng_file = folder / f"rng_rank{self.acc.process_index:05d}.pt"
        if rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=False))  # our own file (python RNG state is a tuple)
        else:
            log.warning("%s missing (saved with %s processes, now %d): RNG not restored, the curve will differ",
                        rng_file.name, trainer_state.get("world_size"), self.acc.num_processes)
        return trainer_state
