"""What bench/scale.py measures per trial, and its table: figures per N, side by side per
service mode (wake by notification vs re-check every 10 ms), and the linearity targets
(service CPU and round latency at most linear in N) as MET/MISSED."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

# a secure round's steps
TASKS = ("secagg_advertise", "secagg_share", "secagg_masked", "secagg_unmask")


@dataclass
class Trial:
    silos: int
    params: int
    degree: int | None
    replicas: int = 1
    mode: str = "notify"  # "notify": long-polls woken by commits; "recheck": every 10 ms
    latency_s: list[float] = field(default_factory=list)
    service_cpu_s: list[float] = field(default_factory=list)  # all replicas together
    db_cpu_s: list[float] = field(default_factory=list)  # empty when PostgreSQL's is unknown
    peak_rss_mb: float = 0.0  # the largest replica's
    silo_cpu_s: float = 0.0  # mean per silo per round
    stage_span_s: dict[str, float] = field(default_factory=dict)  # first start to last end
    forced_closes: int = 0
    max_error: float = float("inf")  # largest |model - exact| over coordinates and rounds
    error_bound: float = 0.0  # what quantization allows
    # max over rounds of ||model step - exact mean|| / ||smallest silo's weighted update||: ~1
    # if an update was lost or counted twice, quantization noise otherwise (grows with N)
    l2_ratio: float = float("inf")
    contributors_ok: bool = False
    # per "METHOD route" (and "SQL OPERATION"): requests (statements) per silo per round, and
    # ms answering them (running them) per silo per round
    requests: dict[str, list[float]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return (
            not self.problems
            and self.contributors_ok
            and self.max_error <= self.error_bound
            and self.l2_ratio < 0.5
        )


def _nan_median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(trials: list[Trial]) -> bool:
    """Print the table and the targets; True when every target printed is MET."""
    print(
        f"{'N':>4} {'params':>7} {'graph':>5} {'rep':>3} {'mode':>7} | {'latency med s':>13} "
        f"{'max s':>7} {'s/silo':>6} | {'svc CPU s/rnd':>13} {'/silo':>6} {'db CPU':>6} "
        f"{'peak MB':>7} | {'silo CPU s':>10} | exact"
    )
    for t in trials:
        med = statistics.median(t.latency_s)
        cpu = statistics.median(t.service_cpu_s)
        graph = "full" if t.degree is None else f"k={t.degree}"
        print(
            f"{t.silos:>4} {t.params:>7.0e} {graph:>5} {t.replicas:>3} {t.mode:>7} | "
            f"{med:>13.2f} {max(t.latency_s):>7.2f} {med / t.silos:>6.3f} | {cpu:>13.2f} "
            f"{cpu / t.silos:>6.3f} {_nan_median(t.db_cpu_s):>6.2f} {t.peak_rss_mb:>7.0f} | "
            f"{t.silo_cpu_s:>10.3f} | {'yes' if t.exact else 'NO'} (max err "
            f"{t.max_error:.1e}, bound {t.error_bound:.1e}; L2 err / one silo {t.l2_ratio:.1e})"
        )
        spans = ", ".join(f"{k.removeprefix('secagg_')} {v:.2f}" for k, v in t.stage_span_s.items())
        print(f"     stage spans s (first silo's start to last silo's end): {spans}")
        for what, sql in (("requests", False), ("SQL statements", True)):
            busiest = sorted(t.requests.items(), key=lambda kv: -kv[1][1])
            asked = ", ".join(
                f"{key.removeprefix('SQL ')} {c:.1f} ({ms:.0f} ms)"
                for key, (c, ms) in busiest
                if c and key.startswith("SQL ") == sql
            )
            print(f"     {what} per silo per round (ms answering them): {asked}")
        for p in t.problems:
            print(f"     problem: {p}")
    met = True
    groups: dict[tuple[int | None, int, str], list[Trial]] = {}
    for t in trials:
        groups.setdefault((t.degree, t.replicas, t.mode), []).append(t)
    for (degree, replicas, mode), group in groups.items():
        group.sort(key=lambda t: t.silos)
        if len(group) < 2:
            continue
        a, b = group[0], group[-1]
        name = "full graph" if degree is None else f"SecAgg+ k={degree}"
        for what, xa, xb in (
            ("round latency", statistics.median(a.latency_s), statistics.median(b.latency_s)),
            ("service CPU", statistics.median(a.service_cpu_s), statistics.median(b.service_cpu_s)),
        ):
            ratio, linear = xb / xa, b.silos / a.silos
            ok = ratio <= linear
            met = met and (ok or mode != "notify")  # the re-check mode is the "before" figure
            print(
                f"{name}, {replicas} replica(s), {mode}: {what} x{ratio:.1f} from N={a.silos} "
                f"to N={b.silos} (linear: x{linear:.0f}): {'MET' if ok else 'MISSED'}"
            )
    exact = all(t.exact for t in trials)
    print(f"exact aggregates in every trial: {'MET' if exact else 'MISSED'}")
    return met and exact
