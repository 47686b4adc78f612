"""Text tables for the peer comparisons: one row per system and configuration, and ratios."""

from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path


def machine() -> str:
    """CPU model, cores, memory and Python: where the figures come from."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
        mem = f", {mem_kb / 1024 / 1024:.0f} GiB"
    except (OSError, StopIteration):
        mem = ""
    return f"{cpu}, {os.cpu_count()} cores{mem}, Python {platform.python_version()}"


# (header, key, format, higher is better)
COLUMNS = [
    ("acc", "acc_all", "{:.3f}", True),
    ("AUC", "auc_all", "{:.3f}", True),
    ("wall s", "wall_s", "{:.1f}", False),
    ("rounds s", "rounds_s", "{:.1f}", False),
    ("round ms", "round_ms", "{:.0f}", False),
    ("overhd ms", "overhead_ms", "{:.0f}", False),
    ("sent KB/silo", "sent_kb", "{:.0f}", False),
    ("recv KB/silo", "received_kb", "{:.0f}", False),
    ("RSS MB", "peak_rss_mb", "{:.0f}", False),
    ("PSS MB", "peak_pss_mb", "{:.0f}", False),
]


def flat(outcome: dict) -> dict:
    """One outcome's headline figures (bytes: mean over the silos)."""
    return {
        **outcome,
        "acc_all": outcome["accuracy"].get("all", float("nan")),
        "auc_all": outcome["auc"].get("all") or float("nan"),
        "sent_kb": statistics.mean(outcome["sent_kb"].values()) if outcome["sent_kb"] else 0.0,
        "received_kb": (
            statistics.mean(outcome["received_kb"].values()) if outcome["received_kb"] else 0.0
        ),
    }


def rows(report: dict) -> list[tuple[str, str, list[str]]]:
    """(config, system, cells) including a ratio row ours / peer where both ran."""
    by: dict[str, dict[str, dict]] = {}
    for o in report["outcomes"]:
        if o.get("warmup"):
            continue
        by.setdefault(o["config"], {})[o["system"]] = flat(o)
    out = []
    for config, systems in by.items():
        for system, f in systems.items():
            out.append((config, system, [fmt.format(f[key]) for _, key, fmt, _ in COLUMNS]))
        peers = [s for s in systems if s != "fedsilo"]
        if "fedsilo" in systems and peers:
            ours, peer = systems["fedsilo"], systems[peers[0]]
            cells = []
            for _, key, _, _ in COLUMNS:
                cells.append(f"{ours[key] / peer[key]:.2f}" if peer[key] else "-")
            out.append((config, f"ours/{peers[0]}", cells))
    return out


def print_comparison(report: dict) -> None:
    print(
        f"\n{report['benchmark']} on {report['machine']} ({report['date']}), "
        f"{report['rounds']} rounds; load average after: "
        + " ".join(f"{x:.1f}" for x in report["load_after"])
    )
    header = f"{'configuration':<24} {'system':<13} " + " ".join(f"{h:>12}" for h, *_ in COLUMNS)
    print(header)
    for config, system, cells in rows(report):
        print(f"{config:<24} {system:<13} " + " ".join(f"{c:>12}" for c in cells))
    warm = [o for o in report["outcomes"] if o.get("warmup")]
    if warm:
        print(
            "first run after start-up (1 round, not in the table): "
            + ", ".join(f"{o['system']} {o['wall_s']:.1f} s" for o in warm)
        )
    print("\naccuracy / AUC per hospital")
    for o in report["outcomes"]:
        if o.get("warmup"):
            continue
        per = "  ".join(
            f"{h}: {o['accuracy'][h]:.3f}/{(o['auc'][h] or float('nan')):.3f}"
            for h in o["accuracy"]
        )
        print(f"  {o['config']:<24} {o['system']:<8} {per}")
    print("\npeak PSS by process, with its children (MB)")
    for o in report["outcomes"]:
        if o.get("warmup") or not o.get("peak_pss_mb_by_process"):
            continue
        cells = ", ".join(f"{k} {v:.0f}" for k, v in o["peak_pss_mb_by_process"].items() if v)
        print(f"  {o['config']:<24} {o['system']:<8} {cells}")
    details = [o for o in report["outcomes"] if o.get("detail_kb") and not o.get("warmup")]
    if details:
        print("\nfedsilo traffic per silo, by destination (KB)")
        for o in details:
            for h, parts in o["detail_kb"].items():
                cells = ", ".join(f"{k} {v:.0f}" for k, v in parts.items())
                print(f"  {o['config']:<24} {h:<14} {cells}")


def markdown(report: dict) -> str:
    """The comparison as a markdown table (for bench/results/latest.md)."""
    head = "| configuration | system | " + " | ".join(h for h, *_ in COLUMNS) + " |"
    sep = "|" + "---|" * (len(COLUMNS) + 2)
    lines = [head, sep]
    for config, system, cells in rows(report):
        lines.append(f"| {config} | {system} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
