"""The whole WorldVLA pipeline on an embedded default, on CPU, in minutes: a policy that is trained and then
evaluated in the LIBERO simulator under the standard protocol.

    bash exps/demo.sh [key=value ...]        (or: python -m worldvla.demo [--config PRESET] [key=value ...])

Stages (each through the same CLI a full-scale user runs):
  record       scripted-expert demos in LIBERO -> raw LIBERO demo HDF5      libero_util/record_scripted_demos.py
  regenerate   replay at the model resolution, no-op filter, export          libero_util/regenerate.py
  convs        action (M=2, K, state) and world samples, official splits    data/conversations.py
  tokenizer    the embedded fitted VQ-GAN (vqgan=embedded), or the tiny one  worldvla/assets, worldvla.testing.fit_vqgan
               fitted here for vqgan_fit_steps steps (vqgan="")
  pretokenize  token shards of each sample kind, one frame cache            data/pretokenize.py
  concat       the kinds -> one training set                                data/concatenate.py
  train        small Chameleon (train_config), action mask, official loss   python -m worldvla.train
  train-causal (causal=true) the same run with the causal mask               ... model.action_mask=false
  eval         LIBERO rollouts on seen init states (eval_trials)            python -m worldvla.eval.libero
  eval-held-out  ... and on init states never recorded (eval_held_out)      ... first_trial=<after the recorded>
  open-loop    the held-out demos' action samples decoded free-running       python -m worldvla.eval.open_loop
  imagine      world-model rollouts of held-out trajectories with true,     python -m worldvla.eval.imagine
               shuffled and zero actions: GIFs, metrics, the action gap
and a report folder `<out>/report/` with the success tables (Wilson intervals), a frame strip of a
successful rollout, the loss curve, videos, GIFs and summary.md.

Held out: `train_ratio` of each task's demos train the models, the remaining whole trajectories (the
official `val_ind` split) are where the open-loop error and the imagination are measured (`claims`).
Presets for longer runs: configs/pipeline/*.yaml (exps/learn_object.sh; results in benchmarks/README.md).

Resumable: a finished stage leaves `<out>/.stages/<stage>.json` (its arguments and time) and is
skipped when rerun with the same arguments; an interrupted stage resumes through its own CLI.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import imageio.v2 as imageio
import numpy as np
from PIL import Image
from safetensors import safe_open

from worldvla.config import parse_cli, parse_ids
from worldvla.data.conversations import ConversationsConfig, output_names
from worldvla.data.recording import NoiseLabel, machine_info
from worldvla.eval.open_loop import markdown_table, plot_l1_vs_position
from worldvla.eval.results import wilson_interval
from worldvla.recipe import SAMPLE_KINDS, Recipe
from worldvla.testing.fixtures import make_tiny_assets

log = logging.getLogger("worldvla.demo")
REPO = Path(__file__).resolve().parents[1]
STAMPS = ".stages"
EMBEDDED = "embedded"
# The tiny VQ-GAN fitted on libero_object frames at 128 px (safetensors, fp16), rebuilt by the command in
# worldvla/assets/README.md; `vqgan=embedded` skips the fit.
EMBEDDED_VQGAN = Path(__file__).resolve().parent / "assets" / "tiny_vqgan_libero_128"


@dataclass
class DemoConfig:
    renamed: ClassVar[dict[str, str]] = {k: f"recipe.{k}" for k in ("resolution", "with_state", "with_wrist",
                                                                    "chunk_size")}
    out: str = "outputs/demo"  # everything the demo writes
    suite: str = "libero_object"  # tasks the scripted expert solves (docs/scripted_expert.md)
    tasks: str = "0"  # task ids, e.g. 0 or 0,1 or 0-2
    episodes: str = "0-5"  # init states recorded per task (only successes become demos)
    noisy_copies: int = 0  # per init state, extra expert attempts with action noise (recovery demos)
    action_noise: float = 0.2  # std of that noise on the six arm dims, action units
    noise_label: NoiseLabel = "intended"  # a noisy step's label: the expert's intended action (DART) or the one that ran
    train_ratio: float = 0.8  # share of each task's demos that train; the other whole trajectories are val_ind
    record_resolution: int = 128  # camera px of the recorded raw demos (released LIBERO files: 128)
    # what every stage makes tokens with: recipe.resolution (model / regenerated image px, a multiple of 16:
    # (px/16)^2 VQ codes per view), recipe.with_state (RynnVLA-002's 8-D proprio state in the action prompt),
    # recipe.with_wrist (its wrist view next to the third view), recipe.chunk_size (K), recipe.history (M)
    recipe: Recipe = field(default_factory=lambda: Recipe(resolution=128, with_state=True))
    train_config: str = "configs/tiny_learn.yaml"  # the train preset; the fields below override it
    train_steps: int = 300  # tiny-model optimizer steps (both runs); with train_epochs > 0 the epochs decide
    train_epochs: float = 8.0  # > 0: train this many epochs, the cosine schedule (lr -> min_lr) spanning them
    causal: bool = False  # also train the causal-mask ablation (configs/ablation_no_action_mask.yaml's switch)
    model_dim: int = 0  # model width (0 = train_config's)
    model_layers: int = 0  # decoder layers (0 = train_config's)
    batch_size: int = 8
    # training augmentation (not official): each prompt state token moves by up to this many bins. Without it
    # a small policy keys its actions on exact state bins and fails one bin off its demonstrations
    # (benchmarks/README.md, "the state tokens are the key"); 0 = off, the official recipe
    state_jitter: int = 3
    seed: int = 0  # training seed (init and data order; official 0): another seed measures run-to-run spread
    lr: float = 2.0e-3  # a small model on a few demos learns at a toy learning rate
    min_lr: float = 2.0e-4  # end of the cosine schedule (0 = lr: constant)
    world_weight: float = 0.04  # official world-loss weight
    kinds: str = "action,world"  # sample kinds trained (official: both; action = the action-only ablation)
    eval_trials: int = 5  # LIBERO episodes per task on init states the policy trained on (0 = none)
    eval_held_out: int = 5  # LIBERO episodes per task on init states after the recorded ones (never trained)
    eval_max_steps: int = 0  # policy steps per eval episode (0 = the suite's protocol budget: 280 for libero_object)
    eval_execute_steps: int = 0  # actions executed per predicted chunk before re-planning (0 = all K, open loop, as official)
    workers: int = 2  # simulator processes (regenerate, eval)
    horizon: int = 6  # imagined frames per trajectory
    imagine_trajectories: int = 3  # held-out (val_ind) trajectories imagined with true / shuffled / zero actions
    open_loop_samples: int = 0  # held-out action samples decoded per model (0 = all)
    claims: bool = True  # the open-loop and imagine stages on the held-out (val_ind) demos (needs train_ratio < 1)
    report_videos: int = 2  # rollout videos copied into the report
    vqgan: str = "embedded"  # "" = fit the tiny VQ-GAN here; "embedded" = the one shipped in worldvla/assets (fitted on
    # libero_object frames at 128 px); or a tokenizer folder (text_tokenizer.json, vqgan.yaml, vqgan.ckpt) used as is
    vqgan_fit_steps: int = 200  # optimizer steps of the tiny VQ-GAN's fit to the demo's frames (machine-independent)
    data_from: str = ""  # another demo's out folder: reuse its recorded + regenerated data (no record/regenerate)


def _recipe_args(prefix: str, cfg) -> list[str]:
    """The demo's Recipe as `prefix.field=value` overrides (the same for conversations and training)."""
    r = cfg.recipe
    return [f"{prefix}.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in (
        ("resolution", r.resolution), ("history", r.history), ("chunk_size", r.chunk_size),
        ("with_state", r.with_state), ("with_wrist", r.with_wrist))]


def _stamp(out: Path, stage: str) -> Path:
    return out / STAMPS / f"{stage}.json"


def _run(out: Path, stage: str, args: list[str]) -> float:
    """Run one stage's CLI in a subprocess (it shows its own progress bars); skip it when its stamp
    says it finished with the same arguments. Returns the stage's wall time (from the stamp when skipped)."""
    stamp = _stamp(out, stage)
    if stamp.is_file():
        done = json.loads(stamp.read_text())
        if done.get("args") == args:
            log.info("[%s] done in an earlier run (%.0f s), skipped", stage, done["seconds"])
            return float(done["seconds"])
    log.info("[%s] %s", stage, " ".join(args))
    t0 = time.time()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, *args], cwd=REPO, env=env, check=False)
    if res.returncode != 0:
        raise SystemExit(f"[demo] stage {stage} failed (exit {res.returncode}); fix it and rerun the demo to resume")
    seconds = time.time() - t0
    _write_stamp(stamp, {"args": args, "seconds": seconds, "load_avg": list(os.getloadavg())})  # shared machines
    return seconds


def _load_of(out: Path, stage: str) -> str:
    """The 1 / 5 / 15 min load average recorded when a stage finished ('' when not recorded)."""
    stamp = _stamp(out, "pretokenize-world" if stage == "pretokenize" else stage)
    load = json.loads(stamp.read_text()).get("load_avg") if stamp.is_file() else None
    return " / ".join(f"{x:.1f}" for x in load) if load else ""


def _write_stamp(stamp: Path, payload: dict) -> None:
    stamp.parent.mkdir(parents=True, exist_ok=True)
    tmp = stamp.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(stamp)


def newest_checkpoint(train_dir: Path) -> Path:
    """The last `step_*` checkpoint a training run wrote under `train_dir`/checkpoints."""
    found = sorted((train_dir / "checkpoints").glob("step_*"))
    if not found:
        raise SystemExit(f"[demo] expected a step_* checkpoint in {train_dir / 'checkpoints'}")
    return found[-1]


def eval_command(policy: Path, suite: str, tasks: str, first: int, count: int, workers: int, out: Path,
                 max_steps: int = 0, execute_steps: int = 0) -> list[str]:
    """`worldvla eval` of `count` init states from `first` under the standard protocol (the suite's step
    budget unless `max_steps` is set), every rollout filmed."""
    return ["-m", "worldvla.eval.libero", f"policy={policy}", f"suites=[{suite}]", f"tasks=[{tasks}]",
            f"first_trial={first}", f"num_trials={count}", f"num_workers={workers}",
            *([f"max_steps={max_steps}"] if max_steps else []),
            *([f"execute_steps={execute_steps}"] if execute_steps else []),
            f"output_dir={out}", "videos=all", "video_fps=20"]


def _make_assets(out: Path, assets_dir: Path) -> float:
    """Tiny tokenizer files (text tokenizer, VQ-GAN yaml + ckpt), written once."""
    stamp = _stamp(out, "assets")
    if stamp.is_file() and (assets_dir / "tokenizer" / "vqgan.ckpt").is_file():
        return float(json.loads(stamp.read_text())["seconds"])

    t0 = time.time()
    tmp = assets_dir.with_name(assets_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    make_tiny_assets(tmp)
    shutil.rmtree(assets_dir, ignore_errors=True)
    tmp.replace(assets_dir)
    _stamp(out, "fit-vqgan").unlink(missing_ok=True)  # fresh random weights: fit them again
    seconds = time.time() - t0
    _write_stamp(stamp, {"args": [], "seconds": seconds})
    log.info("[assets] tiny tokenizer files in %s", assets_dir / "tokenizer")
    return seconds


def _model_args(cfg: DemoConfig) -> list[str]:
    """Train overrides for a model width / depth other than the train preset's (none when 0)."""
    args = []
    if cfg.model_dim:
        args += [f"model.overrides.dim={cfg.model_dim}", f"model.overrides.intermediate_size={cfg.model_dim * 11 // 4}"]
    if cfg.model_layers:
        args.append(f"model.overrides.n_layers={cfg.model_layers}")
    return args


def held_out(manifest: Path) -> dict:
    """Trajectories and action samples of the held-out split (val_ind) from the conversations manifest."""
    data = json.loads(manifest.read_text())
    n_traj = len(data["splits"].get("val_ind", []))
    n_samples = data["counts"].get("val_ind", {}).get("action", 0)
    if n_traj == 0 or n_samples == 0:
        raise SystemExit(f"[demo] {manifest}: no held-out trajectory in val_ind (train={len(data['splits']['train'])}); "
                         "record more episodes or lower train_ratio")
    return {"trajectories": n_traj, "action_samples": n_samples, "train_trajectories": len(data["splits"]["train"]),
            "names": data["splits"]["val_ind"]}


def _length(cfg: DemoConfig) -> list[str]:
    """How long the runs train: whole epochs (the schedule spans them) or a step count; one checkpoint at the end."""
    if cfg.train_epochs > 0:
        return [f"train.epochs={cfg.train_epochs}", "train.max_steps=0", "train.save_every_steps=0",
                "train.save_every_epochs=0"]
    return [f"train.max_steps={cfg.train_steps}", f"train.save_every_steps={cfg.train_steps}"]


def _kinds(cfg: DemoConfig) -> list[str]:
    """Sample kinds to tokenise and train, world first (the official concat order)."""
    kinds = [k.strip() for k in cfg.kinds.split(",") if k.strip()]
    if not kinds or set(kinds) - set(SAMPLE_KINDS):
        raise SystemExit(f"[demo] kinds={cfg.kinds!r}: a non-empty subset of action,world")
    return sorted(set(kinds), key=["world", "action"].index)


def _tokenizer(cfg: DemoConfig, out: Path, export: Path) -> tuple[Path, float]:
    """The tokenizer folder: `cfg.vqgan` as given, else the tiny assets with their VQ-GAN fitted to the
    demo's frames for `vqgan_fit_steps` steps (held-out PSNR and code statistics in the fit's log)."""
    if cfg.vqgan and cfg.vqgan != EMBEDDED:
        return Path(cfg.vqgan).resolve(), 0.0
    if cfg.vqgan == EMBEDDED:  # the tiny text tokenizer (deterministic) + the shipped fitted VQ-GAN
        tok_dir = out / "assets_embedded" / "tokenizer"  # its own folder: stages made with another tokenizer rerun
        if not (tok_dir / "vqgan.ckpt").is_file():
            tmp = tok_dir.parent.with_name("assets_embedded.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            make_tiny_assets(tmp)
            for name in ("vqgan.yaml", "vqgan.ckpt"):
                shutil.copyfile(EMBEDDED_VQGAN / name.replace(".ckpt", ".safetensors"), tmp / "tokenizer" / name)
            shutil.rmtree(tok_dir.parent, ignore_errors=True)
            tmp.replace(tok_dir.parent)
        return tok_dir, 0.0
    assets_dir = out / "assets"
    seconds = _make_assets(out, assets_dir)
    tok_dir = assets_dir / "tokenizer"
    if cfg.vqgan_fit_steps > 0:
        fit_args = ["-m", "worldvla.testing.fit_vqgan", f"tokenizer={tok_dir}", f"frames={export}",
                    f"max_steps={cfg.vqgan_fit_steps}", f"report={out / 'tokenizer_report.json'}"]
        stamp = _stamp(out, "fit-vqgan")
        refit = not (stamp.is_file() and json.loads(stamp.read_text()).get("args") == fit_args)
        seconds += _run(out, "fit-vqgan", fit_args)
        if refit:  # new VQ-GAN weights: the tokens and everything after them are stale, outputs included
            for stamp_file in (out / STAMPS).glob("*.json"):
                if stamp_file.stem.startswith(("pretokenize", "concat", "train", "eval", "open-loop", "imagine")):
                    stamp_file.unlink()
            for stale in ("tokens", "train", "train_causal", "eval", "eval-held-out", "open_loop", "imagine"):
                shutil.rmtree(out / stale, ignore_errors=True)
    return tok_dir, seconds


def eval_init_states(cfg: DemoConfig, raw: Path, manifest: Path) -> tuple[tuple[int, int], tuple[int, int]]:
    """(first, count) of the seen and of the held-out evaluation: seen = the longest run of init states from
    0 whose demos all trained (at most eval_trials); held-out = init states after every recorded one."""
    report = json.loads((raw / "success_report.json").read_text())
    train = set(json.loads(manifest.read_text())["splits"]["train"])
    seen, last = None, -1
    for entry in report["tasks"].values():
        kept = [e["episode"] for e in entry["episodes"] if e["success"]]  # demo_i: the i-th successful attempt
        trained = {ep for i, ep in enumerate(kept) if f"{entry['task_name']}/trj_{i}" in train}
        run = 0
        while run in trained:
            run += 1
        seen = run if seen is None else min(seen, run)
        last = max([last, *(e["episode"] for e in entry["episodes"])])
    return (0, min(cfg.eval_trials, seen or 0)), (last + 1, cfg.eval_held_out)


def run(cfg: DemoConfig) -> Path:
    out = Path(cfg.out).resolve()
    raw, h5, export, convs, tokens = (out / d for d in ("raw", "regenerated", "export", "convs", "tokens"))
    train_dir, imagine_dir = out / "train", out / "imagine"
    causal_dir, open_loop_dir = out / "train_causal", out / "open_loop"
    short = cfg.suite.removeprefix("libero_")
    task_list = ",".join(str(t) for t in parse_ids(cfg.tasks))
    started = time.time()
    times: dict[str, float] = {}

    if cfg.data_from:  # another demo's recorded and regenerated frames (e.g. the same demos at another K)
        source = Path(cfg.data_from).resolve()
        raw, export = source / "raw", source / "export"
        if not (export.is_dir() and _stamp(source, "regenerate").is_file()):
            raise SystemExit(f"[demo] data_from={cfg.data_from}: no finished regenerate stage there")
    else:
        times["record"] = _run(out, "record", [
            "libero_util/record_scripted_demos.py", f"suite={cfg.suite}", f"tasks={task_list}",
            f"episodes={cfg.episodes}", f"out={raw}", f"resolution={cfg.record_resolution}",
            *([f"noisy_copies={cfg.noisy_copies}", f"action_noise={cfg.action_noise}", f"noise_label={cfg.noise_label}"]
              if cfg.noisy_copies else [])])
        times["regenerate"] = _run(out, "regenerate", [
            "libero_util/regenerate.py", f"suite={cfg.suite}", f"raw_dir={raw}", f"out_dir={h5}",
            f"tasks=[{task_list}]", f"resolution={cfg.recipe.resolution}", f"workers={cfg.workers}", f"export_dir={export}",
            "export_layout=rynnvla"])  # third view, wrist view and state: each recipe picks what it reads
    views = "[imgs_third_view,imgs_wrist]" if cfg.recipe.with_wrist else "[imgs_third_view]"
    times["convs"] = _run(out, "convs", [
        "data/conversations.py", f"base_dir={export}", f"output_dir={convs}", f"task_name={short}",
        *_recipe_args("recipe", cfg), f"train_ratio={cfg.train_ratio}", f"img_dirs={views}"])
    manifest = convs / f"libero_{short}_{cfg.recipe.resolution}_conversations_manifest.json"
    if cfg.claims:
        held_out(manifest)  # fail early when nothing is held out

    tok_dir, times["tokenizer"] = _tokenizer(cfg, out, export)
    names = output_names(ConversationsConfig(task_name=short, recipe=cfg.recipe), "train")
    common = [f"tokenizer.path={tok_dir}", f"tokenizer.recipe.resolution={cfg.recipe.resolution}",
              f"frame_cache={tokens / 'frames'}"]
    times["pretokenize"] = 0.0
    for kind in _kinds(cfg):
        times["pretokenize"] += _run(out, f"pretokenize-{kind}", [
            "data/pretokenize.py", f"inputs=[{convs / names[kind]}]", f"out_dir={tokens / kind}", *common])
    train_set = tokens / f"train_{'_'.join(_kinds(cfg))}.json"
    times["concat"] = _run(out, "concat", [
        "data/concatenate.py", f"inputs=[{','.join(str(tokens / k) for k in _kinds(cfg))}]", f"output={train_set}"])

    def train_args(folder: Path, extra: list[str]) -> list[str]:
        return ["-m", "worldvla.train", "--config", cfg.train_config, f"data.train=[{train_set}]",
                f"data.tokenizer={tok_dir}", *_recipe_args("data.recipe", cfg),
                f"data.kinds=[{','.join(_kinds(cfg))}]",
                f"train.output_dir={folder}", *_length(cfg), f"train.batch_size={cfg.batch_size}",
                f"train.lr={cfg.lr}", f"train.min_lr={cfg.min_lr or cfg.lr}", f"train.world_weight={cfg.world_weight}",
                # passed only when set, so that the stamps of runs made before these fields existed still match
                *([f"train.seed={cfg.seed}"] if cfg.seed else []),
                *([f"data.state_jitter={cfg.state_jitter}"] if cfg.state_jitter else []),
                "train.keep_last=1", "logging.wandb=false",
                *_model_args(cfg), *extra]

    times["train"] = _run(out, "train", train_args(train_dir, []))
    ckpt = newest_checkpoint(train_dir)
    causal_ckpt = None
    if cfg.causal:  # the ablation: same data, steps and seed, plain causal attention
        times["train-causal"] = _run(out, "train-causal", train_args(causal_dir, ["model.action_mask=false"]))
        causal_ckpt = newest_checkpoint(causal_dir)

    seen, unseen = eval_init_states(cfg, raw, manifest)
    for stage, (first, count) in (("eval", seen), ("eval-held-out", unseen)):
        if count > 0:  # the suite's step budget unless eval_max_steps says otherwise
            times[stage] = _run(out, stage, eval_command(ckpt, cfg.suite, task_list, first, count, cfg.workers,
                                                         out / stage, cfg.eval_max_steps, cfg.eval_execute_steps))
    if not cfg.claims:
        return write_report(cfg, out, ckpt, times, time.time() - started, raw, None)
    for stage, model, folder in (("open-loop", ckpt, "mask"), ("open-loop-causal", causal_ckpt, "causal")):
        if model is not None:  # decode mode from the checkpoint's mask: parallel (mask) / sequential (causal)
            times[stage] = _run(out, stage, [
                "-m", "worldvla.eval.open_loop", f"policy={model}", f"manifest={manifest}", "splits=[val_ind]",
                f"max_samples={cfg.open_loop_samples}", f"out_dir={open_loop_dir / folder}"])
    times["imagine"] = _run(out, "imagine", [
        "-m", "worldvla.eval.imagine", f"policy={ckpt}", f"data_dir={export}", "split=val_ind",
        f"horizon={cfg.horizon}", f"max_trajectories={cfg.imagine_trajectories}", f"suite={cfg.suite}",
        f"train_ratio={cfg.train_ratio}", "sensitivity=true", f"out_dir={imagine_dir}",
        "image_dir=imgs_third_view", f"wrist={str(cfg.recipe.with_wrist).lower()}"])  # the rynnvla export layout
    return write_report(cfg, out, ckpt, times, time.time() - started, raw, manifest)


# -- report -----------------------------------------------------------------------------------------
def _copy(files: list[Path], report: Path) -> list[str]:
    names = []
    for src in files:
        name = src.name if src.parent.name in ("train", "imagine", "strips") else f"{src.parent.name}_{src.name}"
        shutil.copy2(src, report / name)
        names.append(name)
    return names


def _loss_summary(train_dir: Path) -> dict:
    """First and last logged losses of the tiny run (train_log.jsonl)."""
    rows = [json.loads(line) for line in (train_dir / "train_log.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss" in r]
    if not rows:
        raise SystemExit(f"[demo] {train_dir / 'train_log.jsonl'} has no logged loss")
    keys = [k for k in ("loss", "action_ce", "world_ce") if k in rows[0]]
    first, last = rows[0], rows[-1]
    return {"steps": last.get("step"), "first": {k: first[k] for k in keys}, "last": {k: last[k] for k in keys}}


def _eval_table(eval_dir: Path) -> tuple[list[str], dict]:
    episodes = [json.loads(line) for line in (eval_dir / "episodes.jsonl").read_text().splitlines() if line.strip()]
    lines = ["| task | init state | result | steps | seconds |", "|---|---|---|---|---|"]
    for e in sorted(episodes, key=lambda e: (e["task"], e["trial"])):
        lines.append(f"| {e['task']} | {e['trial']} | {e['status']} | {e['steps']} | {e['seconds']:.0f} |")
    n_ok = sum(e["status"] == "success" for e in episodes)
    lo, hi = wilson_interval(n_ok, len(episodes))
    return lines, {"episodes": len(episodes), "successes": n_ok, "wilson95": [lo, hi]}


def _eval_section(cfg: DemoConfig, out: Path) -> list[str]:
    """Success on the init states the policy trained on and on held-out ones, each with its Wilson interval."""
    lines = []
    for stage, what in (("eval", "init states whose demonstrations trained the policy (seen)"),
                        ("eval-held-out", "init states never recorded nor trained on (held out)")):
        if not (out / stage / "episodes.jsonl").is_file():
            continue
        rows, c = _eval_table(out / stage)
        budget = f"max {cfg.eval_max_steps} policy steps" if cfg.eval_max_steps else "the suite's protocol step budget"
        if cfg.eval_execute_steps:  # a deviation from the official open-loop chunk: say so next to the figure
            budget += f", {cfg.eval_execute_steps} of each chunk's {cfg.recipe.chunk_size} actions executed before re-planning"
        lines += [f"### {what}", "",
                  (f"**{c['successes']} / {c['episodes']}** episodes succeeded ({c['successes'] / c['episodes']:.0%}, "
                   f"Wilson 95 % interval {c['wilson95'][0]:.0%} - {c['wilson95'][1]:.0%}; {budget}, 10 wait steps, "
                   f"`{stage}/` has the per-episode JSON lines and videos)."), "", *rows, ""]
    return lines or ["Not run (eval_trials=0, eval_held_out=0)."]


def _tokenizer_line(cfg: DemoConfig, out: Path) -> str:
    path = out / "tokenizer_report.json"
    if cfg.vqgan == EMBEDDED:
        with safe_open(str(EMBEDDED_VQGAN / "vqgan.safetensors"), framework="pt") as f:
            meta = f.metadata() or {}
        return (f"Tokenizer: the embedded tiny VQ-GAN (`worldvla/assets/{EMBEDDED_VQGAN.name}`, fitted on "
                f"{meta.get('fitted_on', '?')} for {meta.get('steps', '?')} steps; held-out PSNR "
                f"{meta.get('held_out_psnr_db', '?')} dB, {meta.get('codes_per_frame', '?')} codes per frame).")
    if cfg.vqgan:
        return f"Tokenizer: `{cfg.vqgan}` as given."
    if not path.is_file():
        return "Tokenizer: the tiny VQ-GAN, random (not fitted): decoded images are not meant to look like the scene."
    r = json.loads(path.read_text())
    held = r.get("held_out", {})
    return (f"Tokenizer: the tiny VQ-GAN fitted to the demo's frames for {r['steps']} steps (MSE only, so decoded "
            f"images are blurry); on {held.get('frames', 0)} held-out frames: PSNR {held.get('psnr_db', float('nan')):.1f} dB, "
            f"{held.get('codes_per_frame', '?')} codes per frame, {held.get('distinct_codes', '?')} distinct codes, "
            f"per-position code entropy {held.get('position_entropy_bits', float('nan')):.2f} bits.")


def _overview(loss_png: Path, strip_png: Path | None, path: Path) -> None:
    """One picture for the README: the loss curve, and below it a truth-vs-imagined strip."""
    with Image.open(loss_png) as loss_img:
        parts = [loss_img.convert("RGB")]
    if strip_png is not None:
        with Image.open(strip_png) as strip_img:
            strip = strip_img.convert("RGB")
        scale = parts[0].width / strip.width
        parts.append(strip.resize((parts[0].width, max(1, round(strip.height * scale))), Image.NEAREST))
    canvas = Image.new("RGB", (parts[0].width, sum(p.height for p in parts)), "white")
    y = 0
    for part in parts:
        canvas.paste(part, (0, y))
        y += part.height
    canvas.save(path, optimize=True)


def rollout_strip(video: Path, path: Path, frames: int = 8) -> Path | None:
    """Evenly spaced frames of a rollout video side by side (what the README shows of a successful episode)."""

    with imageio.get_reader(video) as reader:
        images = [np.asarray(f) for f in reader]
    if not images:
        return None
    picked = [images[i] for i in np.linspace(0, len(images) - 1, frames).round().astype(int)]
    Image.fromarray(np.concatenate(picked, axis=1)).save(path, optimize=True)
    return path


def _fmt_curve(values: list[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


def _claims(cfg: DemoConfig, out: Path, report: Path, manifest: Path) -> list[str]:
    """Section 5: the open-loop error by chunk position (mask vs causal) and the world model's action gap,
    each with what was measured and on how many samples, whatever the numbers are."""
    held = held_out(manifest)
    lines = ["## 5. The paper's two claims, measured on held-out trajectories", "",
             (f"Held out: {held['trajectories']} whole demonstration(s) of the training task(s) (`val_ind`: "
              f"{', '.join(held['names'])}), never seen in training; {held['train_trajectories']} demonstration(s) "
              "trained both models."), "",
             "### 5.1 Open-loop action error by position in the chunk", ""]
    results = {}
    for label, folder in (("action mask", "mask"), ("causal mask", "causal")):
        path = out / "open_loop" / folder / "open_loop_val_ind.json"
        if path.is_file():
            results[label] = json.loads(path.read_text())
    if results:
        plot_l1_vs_position(results, report / "open_loop_mask_vs_causal.png",
                            "held-out samples: L1 to the expert by chunk position")
        n = next(iter(results.values()))["n_samples"]
        k = cfg.recipe.chunk_size
        text = (f"Measured: each of {n} held-out action samples (instruction + last 2 frames) decoded free-running "
                f"into a chunk of K = {k} actions, exactly as in a rollout, by the action-mask model (parallel decoding: "
                "action k sees text and images only) and by the causal-mask ablation trained on the same data for the "
                f"same {cfg.train_steps} steps with the same seed (sequential decoding: action k sees the model's own "
                "actions 1..k-1); the number is the L1 distance to the expert's action in env units, mean over the 7 "
                "dimensions, at each position k. ")
        for label, r in results.items():
            c = r["l1_by_position"]
            text += (f"{label.capitalize()}: {_fmt_curve(c)} (k = 1..{k}; k = {k} minus k = 1: {c[-1] - c[0]:+.3f}; "
                     f"gripper sign agreement {r['gripper_agreement']:.2f}, token accuracy {r['token_accuracy']:.2f}). ")
        if len(results) == 2:
            m, c = (results[x]["l1_by_position"] for x in ("action mask", "causal mask"))
            text += (f"Causal minus mask at k = {k}: {c[-1] - m[-1]:+.3f}, at k = 1: {c[0] - m[0]:+.3f} "
                     "(the paper's claim predicts the causal error to grow with k faster than the mask's; "
                     "at this scale the difference may be within noise).")
        lines += [text, "", "![open-loop L1 vs chunk position, mask vs causal](open_loop_mask_vs_causal.png)", "",
                  markdown_table(results), ""]
    else:
        lines += ["No open-loop results (stage not run).", ""]

    lines += ["### 5.2 Does the world model use the action?", ""]
    metrics = sorted((out / "imagine").glob("*_metrics.json"))
    gaps = json.loads(metrics[0].read_text()).get("action_sensitivity", {}).get("inf") if metrics else None
    if gaps:
        sh, ze = gaps["shuffled_actions"], gaps["zero_actions"]
        lines += [(f"Measured: {sh['num_clips']} held-out trajectories imagined for {cfg.horizon} steps from their "
                   "first frame (each imagined frame fed back) with their recorded actions, with the same actions "
                   f"shuffled within the trajectory (seeded) and with all-zero actions; the gap is PSNR (and SSIM) of "
                   "the imagined vs the recorded frames with the true actions minus with the altered ones, per "
                   f"horizon h = 1..{cfg.horizon}; > 0 means the true actions explain the frames better, 0 means the "
                   "predictions ignore the action. "
                   f"True minus shuffled: PSNR {sh['summary'].get('psnr', float('nan')):+.3f} dB "
                   f"(by horizon {_fmt_curve(sh['per_frame'].get('psnr', []))}), SSIM "
                   f"{sh['summary'].get('ssim', float('nan')):+.4f}; true minus zero: PSNR "
                   f"{ze['summary'].get('psnr', float('nan')):+.3f} dB, SSIM {ze['summary'].get('ssim', float('nan')):+.4f}."),
                  ""]
        gap_png = sorted((out / "imagine").glob("*_action_gap_vs_horizon.png"))
        lines += [f"![world model: true minus shuffled / zero actions]({p.name})" for p in gap_png] + [""]
    else:
        lines += ["No action-sensitivity results (imagine stage without sensitivity).", ""]
    return lines


def write_report(cfg: DemoConfig, out: Path, ckpt: Path, times: dict, wall: float, raw: Path | None = None,
                 manifest: Path | None = None) -> Path:
    """Collect the loss curve, rollout videos and imagined-frame GIFs into `report/` and write summary.md."""
    report = out / "report"
    shutil.rmtree(report, ignore_errors=True)
    report.mkdir(parents=True)
    loss_png = _copy([out / "train" / "loss_curve.png"], report)
    videos = _copy(sorted((out / "eval" / "videos").rglob("*success*.mp4"))[: cfg.report_videos]
                   or sorted((out / "eval" / "videos").rglob("*.mp4"))[: cfg.report_videos], report) \
        if (out / "eval" / "videos").is_dir() else []
    strips = sorted((out / "imagine" / "strips").glob("*.png"))
    gifs = _copy([s.with_suffix(".gif") for s in strips], report)
    pngs = _copy(strips, report)
    plots = [n for n in _copy(sorted((out / "imagine").glob("*.png")), report)
             if not n.endswith("_action_gap_vs_horizon.png")]  # the gap plot is shown in section 5
    wins = sorted((out / "eval" / "videos").rglob("*success*.mp4")) if (out / "eval" / "videos").is_dir() else []
    strip = rollout_strip(wins[0], report / "success_strip.png") if wins else None
    _overview(report / loss_png[0], report / pngs[0] if pngs else strip, report / "overview.png")
    expert = json.loads(((raw or out / "raw") / "success_report.json").read_text())
    losses = _loss_summary(out / "train")
    causal_losses = _loss_summary(out / "train_causal") if (out / "train_causal" / "train_log.jsonl").is_file() else None
    claims = _claims(cfg, out, report, manifest) if manifest is not None else []
    metrics_md = sorted((out / "imagine").glob("*.md"))
    machine = machine_info()
    expert_rows = [f"| {tid} {t['task_name']} | {t['attempts']} | {t['successes']} | "
                   f"{t['mean_steps_success'] or '-'} | `{t['file']}` |"
                   for tid, t in sorted(expert["tasks"].items(), key=lambda kv: int(kv[0]))]
    lines = [
        "# worldvla demo report", "",
        "![overview: loss curve; ground truth vs imagined frames](overview.png)", "",
        (f"{cfg.suite}, tasks {cfg.tasks}, {cfg.recipe.resolution} px, chunk K = {cfg.recipe.chunk_size}, "
         f"history M = {cfg.recipe.history}; "
         f"{'with' if cfg.recipe.with_state else 'without'} the proprio state, {'with' if cfg.recipe.with_wrist else 'without'} "
         f"the wrist view; tiny random-initialised model (`{cfg.train_config}` {' '.join(_model_args(cfg))}) "
         f"trained for {f'{cfg.train_epochs:g} epochs' if cfg.train_epochs > 0 else f'{cfg.train_steps} steps'} "
         f"on CPU on {cfg.kinds} samples. "
         f"Checkpoint: `{ckpt.relative_to(out)}` (under `{out.name}/`)."), "",
        _tokenizer_line(cfg, out), "",
        "## 1. Scripted expert demonstrations", "",
        "| task | attempts | successes | mean steps | file |", "|---|---|---|---|---|", *expert_rows, "",
        "## 2. Training", "",
        (f"Loss over {losses['steps']} steps: first logged {json.dumps(losses['first'])}, "
         f"last {json.dumps(losses['last'])}."), "",
        *[f"![loss curve]({n})" for n in loss_png], "",
        *([(f"Causal-mask ablation (same data, steps, seed): first logged {json.dumps(causal_losses['first'])}, "
            f"last {json.dumps(causal_losses['last'])}."), ""] if causal_losses else []),
        "## 3. LIBERO evaluation of the tiny model (closed loop, the standard protocol)", "",
        *_eval_section(cfg, out),
        *[f"- [{n}]({n})" for n in videos], "",
        "## 4. World-model imagination (left or top: ground truth, right or bottom: imagined)", "",
        *[f"![{n}]({n})" for n in gifs + pngs], "",
        *(p.read_text() for p in metrics_md), "",
        *[f"![{n}]({n})" for n in plots], "",
        *([] if cfg.claims else
          ["Not run: with `claims: false` the pipeline skips the open-loop and imagination stages.", ""]),
        *claims,
        "## Stage times (s)", "",
        *[f"- {k}: {v:.0f}" + (f" (load average at its end {_load_of(out, k)})" if _load_of(out, k) else "")
          for k, v in times.items()],
        f"- total of this run (stages skipped as done count above, not here): {wall:.0f}", "",
        (f"Machine: {machine['cpu']}, {machine['cores']} cores, load average at the end "
         f"{' / '.join(f'{x:.1f}' for x in machine['load_avg_1_5_15'])} (1 / 5 / 15 min; other jobs count too)."), "",
        f"Demo settings: `{json.dumps(asdict(cfg))}`",
    ]
    (report / "summary.md").write_text("\n".join(lines) + "\n")
    log.info("report written to %s (%d files)", report, len(list(report.iterdir())))
    return report


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    cfg = parse_cli(DemoConfig, argv, description=__doc__)
    t0 = time.time()
    report = run(cfg)
    print(f"\nworldvla demo finished in {time.time() - t0:.0f} s: open {report / 'summary.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
