"""benchmarks/claims_closed_loop.py's statistics: Fisher's exact test against scipy's, and the per-seed
counts pooled into the table (the closed-loop runs themselves take hours; benchmarks/README.md)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import claims_closed_loop as C  # noqa: E402


@pytest.mark.parametrize("a,n1,b,n2", [(19, 20, 13, 20), (17, 20, 16, 20), (10, 10, 0, 10), (3, 10, 7, 12),
                                       (0, 5, 5, 5), (5, 20, 5, 20), (1, 7, 6, 9)])
def test_fisher_matches_scipy(a, n1, b, n2):
    stats = pytest.importorskip("scipy.stats")
    want = stats.fisher_exact([[a, n1 - a], [b, n2 - b]]).pvalue
    assert C.fisher_two_sided(a, n1, b, n2) == pytest.approx(want, rel=1e-9)


def test_summary_pools_seeds(tmp_path):
    def episodes(folder, statuses):
        folder.mkdir(parents=True)
        (folder / "episodes.jsonl").write_text("".join(json.dumps({"trial": 20 + i, "status": s}) + "\n"
                                                       for i, s in enumerate(statuses)))

    episodes(tmp_path / "k10_s0" / "eval-held-out", ["success"] * 3 + ["failure"])
    episodes(tmp_path / "k10_s1" / "eval-held-out", ["success", "failure"])
    episodes(tmp_path / "k10_s1" / "eval-held-out-causal", ["failure", "failure"])
    (tmp_path / "imagine_demos").mkdir()  # not a seed's run
    res = C.summarise(tmp_path)
    assert res["seeds"] == [0, 1]
    row = next(r for r in res["closed_loop"] if r["model"].startswith("action mask, K=10"))
    assert (row["successes"], row["episodes"]) == (4, 6) and row["per_seed"][1]["successes"] == 1
    lo, hi = row["wilson95"]
    assert lo < 4 / 6 < hi
    (k10,) = [c for c in res["comparisons"] if "K=10" in c["claim"]]
    assert (k10["a"], k10["b"]) == ("4/6", "0/2")
    assert "| 4/6 |" in C.markdown(res)
