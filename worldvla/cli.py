"""`worldvla <command> ...`: one console script that forwards to each stage's own CLI module.

Every command is a module of the package with a `main(argv) -> exit code` (a package: its
`__main__`), also runnable as `python -m <module>`; this only saves typing. Nothing here may name a
module outside the package: a wheel installs `worldvla/` only (tests/test_front_door.py checks it).
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "demo": ("worldvla.demo", "end-to-end CPU demo on the embedded default"),
    "record-demos": ("worldvla.data.record_scripted", "scripted expert -> raw LIBERO demo HDF5"),
    "lerobot-import": ("worldvla.data.lerobot", "LeRobot v2.x / v3.0 dataset -> per-episode HDF5 (+ frame folders)"),
    "regenerate": ("worldvla.data.regenerate", "replay raw demos at 256/512 px with the no-op filter"),
    "export": ("worldvla.data.export", "regenerated HDF5 -> the official per-frame folders (regenerate does it with export_dir)"),
    "conversations": ("worldvla.data.conversations", "regenerated HDF5 -> conversation JSON splits"),
    "pretokenize": ("worldvla.data.pretokenize", "conversation JSON -> token shards"),
    "concat": ("worldvla.data.concat", "concatenate action + world shards into one training set"),
    "train": ("worldvla.train", "train (accelerate: single process, FSDP or DeepSpeed)"),
    "lora-merge": ("worldvla.train.lora_merge", "a LoRA run's adapter checkpoint -> merged inference checkpoint"),
    "eval": ("worldvla.eval.libero", "LIBERO rollout evaluation"),
    "imagine": ("worldvla.eval.imagine", "world-model imagination and video metrics"),
    "open-loop": ("worldvla.eval.open_loop", "free-running action error vs the expert, by chunk position"),
    "metrics": ("worldvla.eval.video_metrics", "PSNR / SSIM / LPIPS / FVD of rollout videos"),
    "serve": ("worldvla.serve", "websocket policy server"),
}


def usage() -> str:
    rows = "\n".join(f"  {name:<14} {desc}" for name, (_, desc) in COMMANDS.items())
    return f"usage: worldvla <command> [args...]  (worldvla <command> --help)\n\ncommands:\n{rows}\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    entry = getattr(module, "main", None)
    if entry is None:  # package with __main__
        module = importlib.import_module(COMMANDS[name][0] + ".__main__")
        entry = module.main
    sys.argv = [f"worldvla {name}", *rest]
    result = entry(rest)
    return result if isinstance(result, int) else 0  # some stages return what they wrote


if __name__ == "__main__":
    sys.exit(main())
