"""Reports of world-model metrics: JSON, a markdown table in the RynnVLA-002 README's layout
(FVD↓ PSNR↑ SSIM↑ LPIPS↓, SSIM and LPIPS x 100) and one PNG per metric against the horizon."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
# matplotlib (slow to import, only for the plots) is imported where a plot is drawn.

# (key, column title, scale, plot label)
COLUMNS = (
    ("fvd", "FVD↓", 1.0, "FVD (lower is better)"),
    ("psnr", "PSNR↑", 1.0, "PSNR [dB] (higher is better)"),
    ("ssim", "SSIM↑", 100.0, "SSIM x 100 (higher is better)"),
    ("lpips", "LPIPS↓", 100.0, "LPIPS x 100 (lower is better)"),
)


def _rows(results: Mapping) -> dict[str, dict]:
    """Accept one result (has "summary") or {row name: result}."""
    if "summary" in results:
        return {str(results.get("set", "generated")): dict(results)}
    return {str(k): dict(v) for k, v in results.items()}


def _clean(obj):
    """JSON-safe copy: non-finite floats -> None, numpy scalars/arrays -> Python."""
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "tolist"):
        return _clean(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _fmt(value, scale: float) -> str:
    if value is None or not math.isfinite(float(value)):
        return "-"
    text = f"{float(value) * scale:.2f}"
    return "0.00" if text == "-0.00" else text  # FVD of identical sets can be -1e-19


def markdown_table(results: Mapping, suite: str) -> str:
    rows = _rows(results)
    lines = [f"## World-model metrics: {suite}", "",
             "| Model | " + " | ".join(c[1] for c in COLUMNS) + " | clips |",
             "|---|" + "---:|" * (len(COLUMNS) + 1)]
    for name, res in rows.items():
        s = res.get("summary", {})
        cells = [_fmt(s.get(key), scale) for key, _, scale, _ in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {res.get('num_clips', '-')} |")
    lines += ["", ("SSIM and LPIPS are x 100 (as in the RynnVLA-002 README). PSNR/SSIM/LPIPS: mean over clips "
                   "of the per-clip mean over frames; FVD: one I3D feature per whole clip.")]

    horizons = sorted({int(h) for res in rows.values() for h in res.get("fvd_by_horizon", {})})
    longest = max((len(res.get("per_frame", {}).get("psnr", [])) for res in rows.values()), default=0)
    marks = horizons or sorted({h for h in range(10, longest + 1, 10)} | ({longest} if longest else set()))
    if marks:
        lines += ["", "### By horizon (frame h of the clip; FVD over the first h frames)", "",
                  "| Model | h | " + " | ".join(c[1] for c in COLUMNS) + " |",
                  "|---|---:|" + "---:|" * len(COLUMNS)]
        for name, res in rows.items():
            pf, fh = res.get("per_frame", {}), res.get("fvd_by_horizon", {})
            for h in marks:
                cells = []
                for key, _, scale, _ in COLUMNS:
                    if key == "fvd":
                        v = fh.get(str(h), {}).get("fvd")
                    else:
                        curve = pf.get(key, [])
                        v = curve[h - 1] if 0 < h <= len(curve) else None
                    cells.append(_fmt(v, scale))
                lines.append(f"| {name} | {h} | " + " | ".join(cells) + " |")

    sources = {}
    for res in rows.values():
        sources.update(res.get("weights", {}))
    if sources:
        lines += ["", "### Metric weights", ""]
        lines += [f"- {k}: `{v.get('path')}` sha256 `{v.get('sha256')}`" for k, v in sorted(sources.items())]
    skipped = next((res.get("skipped") for res in rows.values() if res.get("skipped")), None)
    if skipped:
        lines += ["", f"{len(skipped)} trajectories skipped (too few frames): "
                  + ", ".join(f"{s['clip']} ({s['frames']})" for s in skipped[:20])
                  + (" ..." if len(skipped) > 20 else "")]
    return "\n".join(lines) + "\n"


def plot_metric(results: Mapping, key: str, path: str | os.PathLike, title: str = "") -> Path:
    """One PNG: metric `key` against the horizon, one line per row of `results`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    _, _, scale, label = next(c for c in COLUMNS if c[0] == key)
    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, res in _rows(results).items():
        if key == "fvd":
            pts = sorted((int(h), v["fvd"]) for h, v in res.get("fvd_by_horizon", {}).items())
            if not pts and res.get("summary", {}).get("fvd") is not None:
                length = len(res.get("per_frame", {}).get("psnr", [])) or 1
                pts = [(length, res["summary"]["fvd"])]
            xs, ys = [p[0] for p in pts], [p[1] * scale for p in pts]
        else:
            curve = res.get("per_frame", {}).get(key, [])
            xs, ys = list(range(1, len(curve) + 1)), [v * scale for v in curve]
        if xs:
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=name)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("horizon h (frame index since clip start, 1-based)")
    ax.set_ylabel(label)
    ax.set_title(title or key)
    ax.grid(True, alpha=0.3)
    if ax.lines:
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


# -- action sensitivity (worldvla.eval.imagine sensitivity=true) -------------------------------------
VARIANT_SUFFIXES = ("_shuffled_actions", "_zero_actions")  # rows imagined with altered actions
GAP_METRICS = ("psnr", "ssim")


def action_gap(results: Mapping) -> dict:
    """{base row: {variant: gap}} for every row `<base><suffix>` whose base row (imagined with the true
    actions) is present. A gap is metric(true actions) - metric(altered actions), overall (`summary`) and
    per horizon (`per_frame`), for PSNR [dB] and SSIM: positive when the true actions predict the frames
    better, exactly zero for a world model that ignores its action."""
    rows = _rows(results)
    out: dict[str, dict] = {}
    for name, res in rows.items():
        for suffix in VARIANT_SUFFIXES:
            base = name[: -len(suffix)] if name.endswith(suffix) else None
            if not base or base not in rows:
                continue
            ref = rows[base]
            gap = {"variant": suffix[1:], "num_clips": res.get("num_clips"), "summary": {}, "per_frame": {}}
            for key in GAP_METRICS:
                a, b = ref.get("summary", {}).get(key), res.get("summary", {}).get(key)
                if a is not None and b is not None:
                    gap["summary"][key] = float(a) - float(b)
                ca, cb = ref.get("per_frame", {}).get(key, []), res.get("per_frame", {}).get(key, [])
                if ca and cb:
                    gap["per_frame"][key] = [float(x) - float(y) for x, y in zip(ca, cb)]
            out.setdefault(base, {})[suffix[1:]] = gap
    return out


def gap_markdown(gaps: Mapping) -> str:
    lines = ["### Action sensitivity: true actions minus shuffled / zero actions", "",
             ("Gap = metric of the frames imagined with the recorded actions minus the metric with the actions "
              "shuffled within the trajectory (or all zero); > 0: the world model uses the action."), "",
             "| view | variant | clips | PSNR gap [dB] | SSIM gap x 100 | PSNR gap by horizon h = 1, 2, ... |",
             "|---|---|---:|---:|---:|---|"]
    for base, per in gaps.items():
        for variant, g in per.items():
            curve = ", ".join(f"{v:.2f}" for v in g["per_frame"].get("psnr", []))
            lines.append(f"| {base} | {variant} | {g.get('num_clips', '-')} | {_fmt(g['summary'].get('psnr'), 1.0)} | "
                         f"{_fmt(g['summary'].get('ssim'), 100.0)} | {curve} |")
    return "\n".join(lines) + "\n"


def plot_action_gap(gaps: Mapping, path: str | os.PathLike, title: str = "") -> Path:
    """One PNG: PSNR (left) and SSIM x 100 (right) gap against the horizon, one line per view x variant."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    for i, (key, scale, label) in enumerate((("psnr", 1.0, "PSNR gap [dB]"), ("ssim", 100.0, "SSIM gap x 100"))):
        ax = fig.add_subplot(1, 2, i + 1)
        for base, per in gaps.items():
            for variant, g in per.items():
                ys = [v * scale for v in g["per_frame"].get(key, [])]
                if ys:
                    ax.plot(range(1, len(ys) + 1), ys, marker="o", markersize=3, label=f"{base}: true - {variant}")
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("horizon h")
        ax.set_ylabel(label + " (> 0: uses the action)")
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(title or "world model: true-action minus altered-action metric")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def write_metrics_report(results: Mapping, out_dir: str | os.PathLike, suite: str) -> dict[str, Path]:
    """Write `<suite>_metrics.json`, `<suite>_metrics.md` and `<suite>_<metric>_vs_horizon.png` (one per
    metric present) into `out_dir`. `results` is one result of `evaluate_sets`/`evaluate_clips` or a
    mapping {row name (e.g. "gt_recons", "inf", "val_ind"): result}. Returns the written paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = _rows(results)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in suite)
    paths = {"json": out / f"{safe}_metrics.json", "markdown": out / f"{safe}_metrics.md"}
    gaps = action_gap(rows)
    payload = {"suite": suite, "results": rows, **({"action_sensitivity": gaps} if gaps else {})}
    paths["json"].write_text(json.dumps(_clean(payload), indent=2, allow_nan=False))
    paths["markdown"].write_text(markdown_table(rows, suite) + (("\n" + gap_markdown(gaps)) if gaps else ""))
    if gaps:
        paths["action_gap"] = plot_action_gap(gaps, out / f"{safe}_action_gap_vs_horizon.png",
                                              f"{suite}: true-action minus altered-action metric")
    for key, *_ in COLUMNS:
        present = any(key in r.get("summary", {}) or key in r.get("per_frame", {}) for r in rows.values())
        if present:
            paths[key] = plot_metric(rows, key, out / f"{safe}_{key}_vs_horizon.png", f"{suite}: {key.upper()}")
    return paths
