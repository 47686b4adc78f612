"""Collect the latest benchmark figures into bench/results/latest.md and PNG plots.

`make bench` runs every benchmark with its output saved to bench/results/<name>.txt, then this
script. The peer comparisons also leave JSON (peers.json, xgboost.json): their tables and
plots come from it; every other benchmark contributes the last lines of its output.

    python bench/_report.py [--results bench/results]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._table import machine, markdown  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TAIL_LINES = 6


def _load(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data or None


def peers_section(report: dict) -> list[str]:
    lines = [
        f"## fedsilo vs Flower: heart disease, 4 hospitals ({report['date']})",
        "",
        f"`bench/peers.py`, {report['rounds']} rounds, on {report['machine']}; load average "
        f"after the run {' / '.join(f'{x:.1f}' for x in report['load_after'])}. "
        "Ratios are ours / Flower (time, bytes, memory: below 1 is better for us; accuracy and "
        "AUC: above 1). acc / AUC: all four test sets pooled.",
        "",
        markdown(report),
    ]
    if report.get("flower_skipped"):
        lines += ["", f"Flower not run: {report['flower_skipped']}"]
    if not report.get("complete", True):
        lines += ["", "The run was cut short: only the configurations above were measured."]
    return lines


def xgboost_section(report: dict) -> list[str]:
    lines = [
        f"## XGBoost bagging: credit default, 5 banks ({report['date']})",
        "",
        f"`bench/compare_xgboost.py`, {report['rounds']} rounds, on {report['machine']}. "
        "fedsilo in-process (bytes: payload sizes), Flower deployed (bytes on the wire), "
        "NVIDIA FLARE in its simulator (no bytes).",
        "",
        "| system | trees | acc | AUC | wall s | round ms | sent KB/bank | recv KB/bank "
        "| model KB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        sent = statistics.mean(r["sent_kb"].values()) if r.get("sent_kb") else float("nan")
        recv = statistics.mean(r["received_kb"].values()) if r.get("received_kb") else float("nan")
        lines.append(
            f"| {r['system']} | {r['trees']} | {r['accuracy']['all']:.3f} | "
            f"{r['auc']['all']:.4f} | {r['wall_s']:.1f} | {r.get('round_ms', float('nan')):.0f} "
            f"| {sent:.0f} | {recv:.0f} | {r.get('model_kb', float('nan')):.0f} |"
        )
    if report.get("flower_skipped"):
        lines += ["", f"Flower not run: {report['flower_skipped']}"]
    return lines


def plot_peers(report: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outcomes = [o for o in report["outcomes"] if not o.get("warmup")]
    configs = list(dict.fromkeys(o["config"] for o in outcomes))
    systems = list(dict.fromkeys(o["system"] for o in outcomes))
    figures = [
        ("round_ms", "median round wall time (ms, log)", True),
        ("overhead_ms", "median per-round overhead (ms, log)", True),
        ("sent_kb", "KB sent per silo (whole run)", False),
        ("peak_pss_mb", "peak PSS of all processes (MB)", False),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    width = 0.8 / max(1, len(systems))
    for ax, (key, title, log) in zip(axes.flat, figures, strict=True):
        for i, system in enumerate(systems):
            values = []
            for c in configs:
                o = next((o for o in outcomes if o["config"] == c and o["system"] == system), None)
                v = o[key] if o else 0.0
                values.append(statistics.mean(v.values()) if isinstance(v, dict) else v)
            ax.bar([x + i * width for x in range(len(configs))], values, width, label=system)
        ax.set_title(title)
        ax.set_xticks([x + width * (len(systems) - 1) / 2 for x in range(len(configs))])
        ax.set_xticklabels(configs, rotation=30, ha="right", fontsize=8)
        if log:
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.suptitle(f"fedsilo vs Flower, heart disease, {report['rounds']} rounds ({report['date']})")
    fig.tight_layout()
    path = out / "peers.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path.name]


def plot_xgboost(report: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    sets = [k for k in results[0]["auc"] if results[0]["auc"][k] is not None]
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(results)
    for i, r in enumerate(results):
        ax.bar(
            [x + i * width for x in range(len(sets))],
            [r["auc"][s] or 0.0 for s in sets],
            width,
            label=f"{r['system']} ({r['trees']} trees)",
        )
    ax.set_xticks([x + width * (len(results) - 1) / 2 for x in range(len(sets))])
    ax.set_xticklabels(sets, rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0.5, 1.0)
    ax.set_ylabel("ROC AUC on the held-out rows")
    ax.set_title(f"XGBoost bagging, credit default, {report['rounds']} rounds ({report['date']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "xgboost.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path.name]


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    out: Path = args.results
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Latest benchmark figures",
        "",
        f"Written {time.strftime('%Y-%m-%d %H:%M %Z')} on {machine()} "
        f"(load average {' / '.join(f'{x:.1f}' for x in os.getloadavg())}) by `bench/_report.py` "
        "(the last step of `make bench`) from the figures each benchmark left here.",
        "",
    ]
    plots: list[str] = []
    peers = _load(out / "peers.json")
    if peers:
        lines += [*peers_section(peers), ""]
        plots += plot_peers(peers, out)
    xgb = _load(out / "xgboost.json")
    if xgb:
        lines += [*xgboost_section(xgb), ""]
        plots += plot_xgboost(xgb, out)
    # the peer comparisons' own output is summarised above from their JSON
    texts = [t for t in sorted(out.glob("*.txt")) if t.stem not in ("peers", "compare_xgboost")]
    if texts:
        lines += ["## Other benchmarks (last lines of their output)", ""]
        for t in texts:
            tail = t.read_text(errors="replace").rstrip().splitlines()[-TAIL_LINES:]
            lines += [f"### `bench/{t.stem}.py`", "", "```", *tail, "```", ""]
    lines += [f"![{p}]({p})" for p in plots]
    path = out / "latest.md"
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}" + (f" and {', '.join(plots)}" if plots else ""))
    return path


if __name__ == "__main__":
    main()
