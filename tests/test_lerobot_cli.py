"""Issue 23, item 9: the LeRobot importer is `worldvla lerobot-import`, and `python -m worldvla.data.lerobot`
runs it (it printed nothing and exited 0)."""

import subprocess
import sys
from pathlib import Path

from worldvla.cli import main, usage

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "lerobot" / "lr_v21_0"
KEYS = ("observation.images.image", "observation.images.wrist_image")


def test_module_help_lists_the_options():
    proc = subprocess.run([sys.executable, "-m", "worldvla.data.lerobot", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout and "front_key" in proc.stdout and "export_dir" in proc.stdout


def test_module_reports_a_bad_input_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "worldvla.data.lerobot", "--input", str(tmp_path / "none"),
                           "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode != 0 and proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr


def test_worldvla_lerobot_import_converts_an_episode(tmp_path):
    assert "lerobot-import" in usage()
    out = tmp_path / "hdf5"
    assert main(["lerobot-import", "--input", str(FIXTURE), "--out", str(out), "--episodes", "1",
                 "--front-key", KEYS[0], "--wrist-key", KEYS[1], "--stats", "false"]) == 0
    assert (out / "episode_000001.hdf5").is_file() and (out / "lerobot_to_hdf5_config.yaml").is_file()
