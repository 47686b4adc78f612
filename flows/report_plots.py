"""The report's plots: matplotlib figures rendered with Agg into PNG data URIs.

Figures are built with the object API (`Figure` + `FigureCanvasAgg`), never pyplot, so no GUI
backend or global figure state is involved and the report can be written from any thread.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib import rcParams
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from flows.lineage_view import PrivacyPoint, RoundMetrics

METRICS = (("accuracy", "accuracy"), ("auc", "AUC"), ("loss", "loss"))
WEIGHTED = "weighted"


def _data_uri(fig: Figure) -> str:
    buf = io.BytesIO()
    # No "Software" text chunk: keeps the report free of any URL, even inside images.
    FigureCanvasAgg(fig).print_png(buf, metadata={"Software": "fedsilo report"})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _series(
    metrics: Sequence[RoundMetrics], silo: str | None, name: str
) -> tuple[list[int], list[float]]:
    """(rounds, values) of one metric for one silo, or the weighted mean when silo is None."""
    xs, ys = [], []
    for m in metrics:
        source = m.weighted if silo is None else m.per_silo.get(silo) or {}
        value = source.get(name) if isinstance(source, dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            xs.append(m.round)
            ys.append(float(value))
    return xs, ys


def silo_colours(silos: Sequence[str]) -> dict[str, Any]:
    """A fixed colour per silo, by its place in `silos` (matplotlib's default cycle)."""
    cycle = [c["color"] for c in rcParams["axes.prop_cycle"]]
    return {silo: cycle[i % len(cycle)] for i, silo in enumerate(silos)}


def _handle(colour: Any, marker: str, width: float, label: str) -> Line2D:
    return Line2D([], [], color=colour, marker=marker, linewidth=width, label=label)


def metrics_figure(
    metrics: Sequence[RoundMetrics],
    silos: Sequence[str],
    names: Sequence[tuple[str, str]] = METRICS,
) -> str | None:
    """The run's metrics per round (`names`: (key, heading); by default accuracy, AUC and
    loss): the weighted mean (black) and each silo.

    Returns
    -------
    str | None
        A ``data:image/png;base64,...`` URI, or None when no entry carries any metric.
    """
    if not metrics:
        return None
    fig = Figure(figsize=(12, 3.8), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    # one fixed colour per silo across every panel (a silo missing from one panel must not
    # shift the others' colours), and one legend built from every silo drawn anywhere
    colours = silo_colours(silos)
    legend: dict[str, Line2D] = {}
    for ax, (name, label) in zip(axes, names, strict=True):
        for silo in silos:
            xs, ys = _series(metrics, silo, name)
            if xs:
                ax.plot(xs, ys, marker="o", linewidth=1.4, label=silo, color=colours[silo])
                legend.setdefault(silo, _handle(colours[silo], "o", 1.4, silo))
        xs, ys = _series(metrics, None, name)
        if xs:
            ax.plot(xs, ys, color="black", marker="s", linewidth=2.6, label=WEIGHTED)
            legend.setdefault(WEIGHTED, _handle("black", "s", 2.6, WEIGHTED))
        ax.set_title(label)
        ax.set_xlabel("round")
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if not legend:
        return None
    order = [s for s in silos if s in legend] + ([WEIGHTED] if WEIGHTED in legend else [])
    fig.legend([legend[k] for k in order], order, loc="outside right center")
    return _data_uri(fig)


def privacy_figure(points: Sequence[PrivacyPoint]) -> str | None:
    """Each silo's total epsilon over all its runs so far, as its accountant reported it after
    each round (None without data)."""
    if not points:
        return None
    fig = Figure(figsize=(7, 3.6), dpi=100, layout="constrained")
    ax = fig.subplots()
    for silo in dict.fromkeys(p.silo for p in points):
        own = sorted((p.round, p.epsilon) for p in points if p.silo == silo)
        ax.plot([r for r, _ in own], [e for _, e in own], marker="o", label=silo)
    ax.set_title("privacy spent: each silo's total epsilon over all its runs so far")
    ax.set_xlabel("round")
    ax.set_ylabel("epsilon")
    ax.grid(True, alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    return _data_uri(fig)


def vertical_splits_figure(
    splits: Sequence[Mapping[str, int]], parties: Sequence[str]
) -> str | None:
    """Splits per party in each tree of a vertical run (stacked bars, one colour per party;
    `splits[t][party]` is that party's split count in tree t). None without a split."""
    if not any(n for tree in splits for n in tree.values()):
        return None
    fig = Figure(figsize=(max(5.0, 0.5 * len(splits) + 3.0), 3.6), dpi=100, layout="constrained")
    ax = fig.subplots()
    trees = list(range(len(splits)))
    bottom = [0] * len(splits)
    for party in parties:
        counts = [tree.get(party, 0) for tree in splits]
        ax.bar(trees, counts, bottom=bottom, label=party)
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    ax.set_title("splits per party in each tree")
    ax.set_xlabel("tree")
    ax.set_ylabel("splits")
    ax.grid(True, axis="y", alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    return _data_uri(fig)


def ensemble_weights_figure(
    points: Sequence[tuple[int, Mapping[str, float]]], silos: Sequence[str]
) -> str | None:
    """Each member's mixture weight after each round of an ensemble run (`points`: (round,
    silo -> weight), round 1 being the uniform start). None without a weight."""
    if not any(weights for _, weights in points):
        return None
    fig = Figure(figsize=(7, 3.6), dpi=100, layout="constrained")
    ax = fig.subplots()
    for silo in silos:
        own = [(r, w[silo]) for r, w in points if silo in w]
        ax.plot([r for r, _ in own], [v for _, v in own], marker="o", label=silo)
    ax.set_title("mixture weight of each silo's member")
    ax.set_xlabel("round (1: members, uniform weights)")
    ax.set_ylabel("weight")
    ax.set_ylim(0, 1)
    ax.grid(True, alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    return _data_uri(fig)
