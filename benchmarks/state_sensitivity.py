"""Does a trained policy key its actions on exact proprio-state tokens? Its first chunk at a training init
state, from the regenerated training frame and from the evaluation's frame of the same init state.

    python benchmarks/state_sensitivity.py --checkpoint <ckpt dir with worldvla.json> \
        --export outputs/learn_object_clean20/export --init-states 0-9

For each init state the policy predicts the first chunk four times: from the training sample's frame 0
(the exported image and 8-D state), from the evaluation's frame 0 (what `worldvla eval` shows it after
its reset and settle steps), and from each image with the other's state. The two frame 0s differ by a
few mm of arm position (a regenerated demo is replayed from a recorded, already settled state and
settles again), about one state bin. The printed L1 to the expert's first K actions, per input, says
whether the image or the state moves the prediction; a large error from the evaluation's state alone is
a policy that has memorised state tokens and breaks one bin off the demonstrated path.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from worldvla.config import parse_ids
from worldvla.envs.libero import LiberoEnv, configure_libero
from worldvla.eval.rollout import RolloutOptions, observe

INPUTS = ("train image + train state", "eval image + train state", "train image + eval state", "eval image + eval state")


def clean_demo_index(report: Path, task: int) -> dict[int, int]:
    """init state -> index of its clean (noise-free) demo in the task's file, from record-demos' report."""
    if not report.is_file():
        return {}
    entries = json.loads(report.read_text())["tasks"][str(task)]["episodes"]
    return {e["episode"]: int(e["demo"].split("_")[1]) for e in entries if e.get("demo") and not e.get("copy")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="checkpoint folder (worldvla.json, with_state=true)")
    ap.add_argument("--export", required=True, help="regenerate's export folder (rynnvla layout) of its training data")
    ap.add_argument("--suite", default="libero_object")
    ap.add_argument("--task", type=int, default=0)
    ap.add_argument("--init-states", default="0-9", help="init states whose demos trained")
    ap.add_argument("--report", default="", help="record-demos' success_report.json, which maps an init state to its "
                    "clean demo (default: <export>/../raw/success_report.json; without one trj_<i> = init state i)")
    args = ap.parse_args()
    trj_of = clean_demo_index(Path(args.report or Path(args.export).parent / "raw" / "success_report.json"), args.task)

    import torch

    from worldvla.policy.policy import WorldVLAPolicy

    torch.set_num_threads(1)
    configure_libero()
    policy = WorldVLAPolicy.from_pretrained(args.checkpoint)
    if not policy.processor.recipe.with_state:
        raise SystemExit(f"{args.checkpoint}: worldvla.json with_state is false: this measures the state's role")
    env = LiberoEnv(args.suite, args.task, resolution=policy.processor.recipe.resolution)
    (task_dir,) = [p for p in Path(args.export).iterdir() if p.is_dir() and p.name in env.task.name]
    opts = RolloutOptions(max_steps=env.max_steps, model_resolution=policy.processor.recipe.resolution)
    k = policy.processor.recipe.chunk_size
    rows = []
    for ep in tqdm(parse_ids(args.init_states), desc="init states", unit="state"):
        trj = task_dir / f"trj_{trj_of.get(ep, ep)}"
        train_img = np.asarray(Image.open(trj / "imgs_third_view" / "image_0.png").convert("RGB"))
        train_state = np.load(trj / "eef_gripper_state" / "eef_gripper_state_0.npy")
        expert = np.stack([np.load(trj / "action" / f"action_{j}.npy") for j in range(k)])
        o = observe(env.reset(ep), opts)
        inputs = ((train_img, train_state), (o.agentview, train_state), (train_img, o.state), (o.agentview, o.state))
        l1 = [float(np.abs(policy.predict(env.language, [img], state=st) - expert)[:, :6].mean()) for img, st in inputs]
        dpos_mm = 1000 * float(np.linalg.norm(o.state[:3] - train_state[:3]))
        rows.append((ep, dpos_mm, *l1))
    env.close()
    load = os.getloadavg()
    print(f"\n{args.checkpoint}: first-chunk L1 to the expert (arm dims, action units), by input")
    print("| init state | eef offset eval vs train (mm) | " + " | ".join(INPUTS) + " |")
    print("|---" * (2 + len(INPUTS)) + "|")
    for ep, d, *l1 in rows:
        print(f"| {ep} | {d:.1f} | " + " | ".join(f"{x:.3f}" for x in l1) + " |")
    means = np.mean([r[2:] for r in rows], axis=0)
    print("| mean | " + f"{np.mean([r[1] for r in rows]):.1f} | " + " | ".join(f"{x:.3f}" for x in means) + " |")
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
