"""The demo pipeline (worldvla/demo.py) end to end on a smaller setting: one scripted demo at 64 px,
a few training steps, one short LIBERO episode, one imagined trajectory. Checks that the report
folder is complete and well formed, and that a rerun skips every finished stage."""

import json
import re
import subprocess

import numpy as np
import pytest

pytestmark = [pytest.mark.sim, pytest.mark.slow]


def _small(out):
    from worldvla.demo import DemoConfig

    return DemoConfig(out=str(out), tasks="0", episodes="0", record_resolution=64, resolution=64, train_steps=12,
                      batch_size=4, eval_trials=1, eval_max_steps=10, workers=1, horizon=2,
                      imagine_trajectories=1, report_videos=1)


def test_demo_pipeline_writes_a_complete_report(tmp_path, monkeypatch):
    import imageio.v2 as imageio
    from PIL import Image

    from worldvla import demo

    cfg = _small(tmp_path / "demo")
    report = demo.run(cfg)

    summary = (report / "summary.md").read_text()
    for heading in ("Scripted expert", "Training", "LIBERO evaluation", "World-model imagination", "Stage times"):
        assert heading in summary, heading
    linked = set(re.findall(r"\]\(([^)]+)\)", summary))
    assert linked and all((report / name).is_file() for name in linked), linked  # every link resolves
    assert "loss_curve.png" in linked

    with Image.open(report / "loss_curve.png") as img:
        assert img.format == "PNG" and min(img.size) > 100
    gifs = sorted(report.glob("*.gif"))
    assert len(gifs) == cfg.imagine_trajectories and all(g.name in linked for g in gifs)
    frames = imageio.mimread(gifs[0])
    assert len(frames) == cfg.horizon and frames[0].shape[1] == 2 * cfg.resolution  # truth | imagined
    videos = sorted(report.glob("*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 1000
    with imageio.get_reader(videos[0]) as reader:
        assert reader.get_next_data().ndim == 3

    expert = json.loads((tmp_path / "demo" / "raw" / "success_report.json").read_text())
    assert expert["tasks"]["0"]["successes"] == 1  # the demo trains on the expert's demonstration
    assert "| 0 | 0 |" in summary  # the eval table lists task 0, trial 0
    log = [json.loads(line) for line in (tmp_path / "demo" / "train" / "train_log.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in log if "loss" in r) == cfg.train_steps
    assert all(np.isfinite(r["loss"]) for r in log if "loss" in r)

    def no_stage(*args, **kwargs):
        raise AssertionError(f"a finished stage ran again: {args}")

    monkeypatch.setattr(subprocess, "run", no_stage)
    before = (report / "summary.md").read_text()
    demo.run(cfg)  # every stage is stamped: only the report is rebuilt
    assert (report / "summary.md").read_text().split("## Stage times")[0] == before.split("## Stage times")[0]
