"""Episode log, resume bookkeeping, summaries (Wilson intervals, 0.2 % check) and markdown."""

import json

import pytest

from worldvla.eval.protocol import EpisodeKey
from worldvla.eval.results import (
    EpisodeLog,
    done_keys,
    final_records,
    is_multiple_of_0_2_pct,
    summarize,
    summary_markdown,
    wilson_interval,
)
from worldvla.eval.rollout import episode_record


def rec(task, trial, status, suite="libero_goal", steps=10):
    return episode_record(EpisodeKey(suite, task, trial), f"task {task}", status == "success",
                          steps if status != "error" else None, 1.0, error="boom" if status == "error" else None)


def test_wilson_interval_known_values():
    # Reference values from the closed form (Wilson 1927), z = 1.96.
    lo, hi = wilson_interval(25, 50)
    assert lo == pytest.approx(0.3664, abs=1e-4) and hi == pytest.approx(0.6336, abs=1e-4)
    lo, hi = wilson_interval(0, 50)
    assert lo == 0.0 and hi == pytest.approx(0.0713, abs=1e-4)
    lo, hi = wilson_interval(50, 50)
    assert hi == 1.0 and lo == pytest.approx(0.9287, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize("successes,n", [(1, 50), (17, 50), (230, 500), (499, 500), (3, 7)])
def test_wilson_bounds_are_where_the_score_test_is_at_its_critical_value(successes, n):
    """Independent definition: the interval is {p : |p_hat - p| <= z sqrt(p (1 - p) / n)}, so at each
    bound the score statistic equals z, and just inside it is below z."""
    z = 1.959963984540054
    p_hat = successes / n
    for bound in wilson_interval(successes, n):
        score = abs(p_hat - bound) / (bound * (1 - bound) / n) ** 0.5
        assert score == pytest.approx(z, rel=1e-9)
    lo, hi = wilson_interval(successes, n)
    for inside in (lo + 1e-6, hi - 1e-6, p_hat):
        assert abs(p_hat - inside) / (inside * (1 - inside) / n) ** 0.5 < z


def test_multiple_of_0_2_pct():
    assert is_multiple_of_0_2_pct(233 / 500) and is_multiple_of_0_2_pct(0.0) and is_multiple_of_0_2_pct(1.0)
    assert is_multiple_of_0_2_pct(0.934) and not is_multiple_of_0_2_pct(0.933)  # 93.3 % is not k / 500
    assert not is_multiple_of_0_2_pct(230 / 499)  # one episode missing
    assert not is_multiple_of_0_2_pct(231 / 501)  # one episode counted twice


def test_episode_log_repairs_a_torn_line_and_appends(tmp_path):
    path = tmp_path / "episodes.jsonl"
    log = EpisodeLog(path)
    log.append(rec(0, 0, "success"))
    with open(path, "a") as f:
        f.write('{"suite": "libero_goal", "task": 0, "tri')  # killed mid-write
    log = EpisodeLog(path)
    log.append(rec(0, 1, "failure"))
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(x) for x in lines)


def test_errors_are_retried_on_resume_and_superseded():
    records = [rec(0, 0, "success"), rec(0, 1, "error"), rec(0, 2, "failure")]
    assert done_keys(records, retry_errors=True) == {EpisodeKey("libero_goal", 0, 0), EpisodeKey("libero_goal", 0, 2)}
    assert len(done_keys(records, retry_errors=False)) == 3
    last, dup = final_records(records + [rec(0, 1, "success")])
    assert last[EpisodeKey("libero_goal", 0, 1)]["status"] == "success" and dup == 0
    _, dup = final_records(records + [rec(0, 0, "failure")])
    assert dup == 1


def full_suite(successes_per_task):
    recs = []
    for t, s in enumerate(successes_per_task):
        recs += [rec(t, j, "success" if j < s else "failure") for j in range(50)]
    return recs


def test_summary_of_a_complete_suite():
    recs = full_suite([50, 40, 0, 25, 10, 50, 49, 1, 2, 3])
    expected = [EpisodeKey("libero_goal", t, j) for t in range(10) for j in range(50)]
    s = summarize(recs, expected, {"policy": {"name": "p"}, "deviations": []})
    g = s["suites"]["libero_goal"]
    assert g["episodes"] == 500 and g["successes"] == 230 and g["success_rate"] == pytest.approx(0.46)
    assert g["complete"] and g["multiple_of_0_2_pct"] is True and s["warnings"] == [] and s["protocol_exact"]
    assert g["tasks"]["1"]["successes"] == 40 and g["tasks"]["1"]["ci95"][0] < 0.8 < g["tasks"]["1"]["ci95"][1]
    md = summary_markdown(s)
    assert "46.0 %" in md and "Protocol-exact" in md and "| 1 | task 1 | 40/50 |" in md


def test_summary_flags_missing_errors_and_deviations():
    recs = full_suite([5] * 10)[:-3] + [rec(9, 47, "error")]
    expected = [EpisodeKey("libero_goal", t, j) for t in range(10) for j in range(50)]
    s = summarize(recs, expected, {"deviations": ["max_steps=10 (protocol 300)"]})
    g = s["suites"]["libero_goal"]
    assert g["missing"] == 2 and g["errors"] == 1 and not g["complete"] and g["multiple_of_0_2_pct"] is False
    assert any("missing" in w for w in s["warnings"]) and any("error" in w for w in s["warnings"])
    assert any("not a multiple of 0.2 %" in w for w in s["warnings"]) and "| NO |" in summary_markdown(s)
    assert not s["protocol_exact"] and "Not protocol-exact" in summary_markdown(s)


def test_headline_mean_needs_the_four_suites():
    expected, recs = [], []
    for i, suite in enumerate(["libero_spatial", "libero_object", "libero_goal", "libero_10"]):
        expected += [EpisodeKey(suite, t, j) for t in range(10) for j in range(50)]
        recs += [rec(t, j, "success" if j < 10 * (i + 1) else "failure", suite) for t in range(10) for j in range(50)]
    s = summarize(recs, expected)
    assert s["headline_mean_4_suites"] == pytest.approx((0.2 + 0.4 + 0.6 + 0.8) / 4)
    s = summarize(recs[:-1], expected)
    assert s["headline_mean_4_suites"] is None
