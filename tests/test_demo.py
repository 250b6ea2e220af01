"""The demo pipeline (worldvla/demo.py) end to end on a smaller setting: two scripted demos at 64 px
(one trains, one is held out), a few training steps of the action-mask model and of the causal-mask
ablation, one short LIBERO episode, open-loop decoding and one imagined trajectory (true, shuffled and
zero actions) on the held-out demo. Checks that the report folder is complete and well formed, that
the two claims' measurements are on the held-out trajectory, and that a rerun skips every finished stage."""

import json
import re
import subprocess

import numpy as np
import pytest
import yaml

pytestmark = [pytest.mark.sim, pytest.mark.slow]


def _small(out):
    from worldvla.demo import DemoConfig
    from worldvla.recipe import Recipe

    return DemoConfig(out=str(out), tasks="0", episodes="0-1", train_ratio=0.5, record_resolution=64,
                      recipe=Recipe(resolution=64, with_state=True),
                      train_steps=12, batch_size=4, eval_trials=1, eval_held_out=1, eval_max_steps=10, eval_execute_steps=1, workers=1,
                      horizon=2, imagine_trajectories=1, report_videos=1, open_loop_samples=4, vqgan="", vqgan_fit_steps=3,
                      train_config="configs/tiny.yaml", train_epochs=0, causal=True, seed=3)


def test_demo_pipeline_writes_a_complete_report(tmp_path, monkeypatch):
    import imageio.v2 as imageio
    from PIL import Image

    from worldvla import demo

    cfg = _small(tmp_path / "demo")
    report = demo.run(cfg)

    summary = (report / "summary.md").read_text()
    for heading in ("Scripted expert", "Training", "LIBERO evaluation", "World-model imagination",
                    "two claims, measured on held-out trajectories", "Stage times"):
        assert heading in summary, heading
    linked = set(re.findall(r"\]\(([^)]+)\)", summary))
    assert linked and all((report / name).is_file() for name in linked), linked  # every link resolves
    assert "loss_curve.png" in linked

    with Image.open(report / "loss_curve.png") as img:
        assert img.format == "PNG" and min(img.size) > 100
    gifs = sorted(report.glob("*.gif"))
    assert len(gifs) == cfg.imagine_trajectories and all(g.name in linked for g in gifs)
    frames = imageio.mimread(gifs[0])
    assert len(frames) == cfg.horizon and frames[0].shape[1] == 2 * cfg.recipe.resolution  # truth | imagined
    videos = sorted(report.glob("*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 1000
    with imageio.get_reader(videos[0]) as reader:
        assert reader.get_next_data().ndim == 3

    expert = json.loads((tmp_path / "demo" / "raw" / "success_report.json").read_text())
    assert expert["tasks"]["0"]["successes"] == 2  # one demonstration trains, the other is held out
    assert "| 0 | 0 |" in summary  # the eval table lists task 0, trial 0 (its demonstration trained)
    assert "| 0 | 2 |" in summary and "never recorded nor trained on" in summary  # held out: after the recorded 0-1
    assert summary.count("Wilson 95 % interval") == 2
    held_run = json.loads((tmp_path / "demo" / "eval-held-out" / "run.json").read_text())
    assert held_run["protocol"]["first_trial"] == 2
    assert held_run["protocol"]["execute_steps"] == 1  # eval_execute_steps reaches the eval, and says so
    assert "1 of each chunk's 5 actions executed before re-planning" in summary
    tok = json.loads((tmp_path / "demo" / "tokenizer_report.json").read_text())
    assert tok["steps"] == 3 and "fitted to the demo's frames for 3 steps" in summary  # by steps, not wall clock
    log = [json.loads(line) for line in (tmp_path / "demo" / "train" / "train_log.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in log if "loss" in r) == cfg.train_steps
    (saved,) = (tmp_path / "demo" / "train" / "checkpoints").glob("step_*/train_config.yaml")
    assert yaml.safe_load(saved.read_text())["train"]["seed"] == 3  # the demo's seed reaches training
    assert all(np.isfinite(r["loss"]) for r in log if "loss" in r)
    causal_log = (tmp_path / "demo" / "train_causal" / "train_log.jsonl").read_text().splitlines()
    assert max(json.loads(line).get("step", 0) for line in causal_log) == cfg.train_steps  # same steps
    runs = {d: yaml.safe_load((tmp_path / "demo" / d / "config.yaml").read_text()) for d in ("train", "train_causal")}
    assert runs["train"]["model"]["action_mask"] is True and runs["train_causal"]["model"]["action_mask"] is False
    for key in ("seed", "max_steps", "lr", "batch_size"):
        assert runs["train"]["train"][key] == runs["train_causal"]["train"][key]
    assert runs["train"]["data"]["train"] == runs["train_causal"]["data"]["train"]

    # the claims: both models decoded the held-out samples; the world model imagined the held-out trajectory
    manifest = json.loads((tmp_path / "demo" / "convs" / "libero_object_64_conversations_manifest.json").read_text())
    assert len(manifest["splits"]["train"]) == 1 and len(manifest["splits"]["val_ind"]) == 1
    held = manifest["splits"]["val_ind"][0].replace("/", "__")
    for folder, decode in (("mask", "parallel"), ("causal", "sequential")):
        res = json.loads((tmp_path / "demo" / "open_loop" / folder / "open_loop_val_ind.json").read_text())
        assert res["n_samples"] == 4 and res["decode"] == decode and len(res["l1_by_position"]) == cfg.recipe.chunk_size
    assert {"open_loop_mask_vs_causal.png", "libero_object_action_gap_vs_horizon.png"} <= linked
    assert "each of 4 held-out action samples" in summary and "1 held-out trajectories imagined" in summary
    assert [g.name for g in gifs] == [f"{held}.gif"]  # the imagined trajectory is the held-out one
    metrics = json.loads((tmp_path / "demo" / "imagine" / "libero_object_metrics.json").read_text())
    assert len(metrics["action_sensitivity"]["inf"]["shuffled_actions"]["per_frame"]["psnr"]) == cfg.horizon

    def no_stage(*args, **kwargs):
        raise AssertionError(f"a finished stage ran again: {args}")

    monkeypatch.setattr(subprocess, "run", no_stage)
    before = (report / "summary.md").read_text()
    demo.run(cfg)  # every stage is stamped: only the report is rebuilt
    assert (report / "summary.md").read_text().split("## Stage times")[0] == before.split("## Stage times")[0]
