"""Global cut points and base score from the securely summed setup vector (service side).

The setup vector's sum holds, per feature, the federation's row count in every cell of the
public fine grid (plus missing), then the total rows and the encoded sum of labels. Cuts are
read off it as quantiles of the counts: at most `max_bin` bins per feature, every cut the lower
edge of an occupied cell, so every bin holds rows (the silos assign cells with the same float32
comparisons, `silos.hist_binning.grid_cells`). A feature with at most `max_bin` occupied cells
gets one bin per occupied cell: no information is lost beyond the grid's resolution.
"""

from __future__ import annotations

import numpy as np

from schemas.objectives import margin_to_base_score, multiclass_intercept
from schemas.secure_hist.errors import HistConfigError
from schemas.secure_hist.protocol import HistRunConfig, from_modular, grid_edges


def feature_cuts(counts: np.ndarray, edges: np.ndarray, max_bin: int) -> np.ndarray:
    """Cut points (float32, increasing) of one feature from its per-cell counts.

    Parameters
    ----------
    counts
        Rows per cell (missing excluded), length cells.
    edges
        The cells + 1 grid edges.
    max_bin
        Most bins allowed (cuts <= max_bin - 1).
    """
    occupied = np.flatnonzero(counts > 0)
    if occupied.size <= 1:
        return np.zeros(0, dtype=np.float32)
    if occupied.size <= max_bin:
        chosen = occupied[1:]
    else:
        cum = np.cumsum(counts)
        targets = cum[-1] * np.arange(1, max_bin) / max_bin
        # the first cell whose cumulative count passes each target starts a new bin
        chosen = np.unique(np.searchsorted(cum, targets, side="right"))
        chosen = chosen[chosen > occupied[0]]
    cuts = np.unique(edges[chosen])  # float32 rounding may merge neighbouring edges
    return cuts.astype(np.float32)


def _check_rows(rows: int, config: HistRunConfig) -> None:
    """The fine-grid counts travel at bitlen(max_rows) bits (`packing`); the rows entry is
    64 bits wide, so a federation over max_rows is caught here rather than read wrapped."""
    if rows > config.max_rows:
        raise HistConfigError(
            f"the federation reports {rows} training rows, over the run's max_rows "
            f"{config.max_rows} (which bounds the precision and the wire widths): raise max_rows"
        )


def cuts_from_setup(total: np.ndarray, config: HistRunConfig) -> list[np.ndarray]:
    """Every feature's cut points from the summed setup vector (modular ``<u8`` sum)."""
    ints = from_modular(total)
    if ints.size != config.setup_length():
        raise HistConfigError(
            f"setup sum has {ints.size} entries; the run expects {config.setup_length()}"
        )
    _check_rows(int(ints[config.n_features * (config.fine_cells + 1)]), config)
    width = config.fine_cells + 1
    out = []
    for f, (low, high) in enumerate(config.ranges):
        counts = ints[f * width : f * width + config.fine_cells]
        edges = grid_edges(low, high, config.fine_cells)
        out.append(feature_cuts(counts, edges, config.params.max_bin))
    return out


def base_score_from_setup(
    total: np.ndarray, config: HistRunConfig
) -> tuple[float | list[float], int]:
    """(base score in the objective's output space, federation rows) from the setup sum.

    The base margin is the loss minimiser of a constant model: the mean label for squared
    error, logit of the positive rate for binary:logistic (clamped away from 0 and 1), and for
    multi:softprob K margins, XGBoost's intercept (log class frequencies, centred).
    """
    ints = from_modular(total)
    labels = ints[config.n_features * (config.fine_cells + 1) + 1 :]
    rows = int(ints[config.n_features * (config.fine_cells + 1)])
    if rows < 1:
        raise HistConfigError("the federation reported no training rows")
    _check_rows(rows, config)
    if config.objective == "multi:softprob":
        if labels.min() < 0 or int(labels.sum()) != rows:
            raise HistConfigError(
                f"class counts {labels.tolist()} do not add up to the {rows} rows reported"
            )
        return [float(m) for m in multiclass_intercept(labels)], rows
    mean = float(config.label_codec.decode(labels)[0]) / rows
    if config.objective == "binary:logistic":
        mean = min(max(mean, 1e-6), 1 - 1e-6)
        return margin_to_base_score(np.log(mean / (1 - mean)), config.objective), rows
    return mean, rows
