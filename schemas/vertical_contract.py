"""A vertical party's data contract: the columns one party of a vertical run brings.

In a vertical federation every party holds different columns of the same customers, so each
has a contract of its own (schemas/contracts/vertical/*.toml): its id column, its label (the
active party only), and every feature column with its plausible range. Extra columns, missing
ones, missing values, duplicate ids, out-of-range values and a label other than 0/1 are
refused, each problem naming the file and column.
"""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

CONTRACTS_DIR = Path(__file__).parent / "contracts" / "vertical"


class VerticalColumn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1)
    description: str = ""
    range: tuple[float, float] | None = None


class VerticalContract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    version: str
    description: str = ""
    id_column: str
    label: str | None = None
    min_rows: int = Field(default=1, ge=1)
    columns: tuple[VerticalColumn, ...] = Field(min_length=1)
    sha256: str = ""

    @property
    def features(self) -> list[str]:
        return [c.name for c in self.columns]


class VerticalContractError(ValueError):
    """A contract that cannot be read, or data that breaks one; says which and where."""


def load_vertical_contract(name_or_path: str | Path) -> VerticalContract:
    path = Path(name_or_path)
    if not path.suffix:
        path = CONTRACTS_DIR / f"{name_or_path}.toml"
    try:
        text = path.read_text(encoding="utf-8")
        raw = tomllib.loads(text)
        return VerticalContract.model_validate(
            {**raw, "sha256": hashlib.sha256(text.encode()).hexdigest()}
        )
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise VerticalContractError(f"vertical contract {path}: {exc}") from exc
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise VerticalContractError(f"vertical contract {path}: {where}: {err['msg']}") from exc


def check_table(df: pd.DataFrame, contract: VerticalContract, source: str) -> list[str]:
    """Every way `df` breaks `contract`, one line each naming `source` and the column."""
    want = [contract.id_column] + ([contract.label] if contract.label else []) + contract.features
    problems = [f"{source}: column {c!r} is missing" for c in want if c not in df.columns]
    problems += [
        f"{source}: column {c!r} is not in contract {contract.name} {contract.version}"
        for c in df.columns
        if c not in want
    ]
    if len(df) < contract.min_rows:
        problems.append(
            f"{source}: {len(df)} rows, contract {contract.name} needs {contract.min_rows}"
        )
    if contract.id_column in df.columns and df[contract.id_column].duplicated().any():
        dup = df[contract.id_column][df[contract.id_column].duplicated()].iloc[0]
        problems.append(f"{source}: column {contract.id_column!r} repeats id {str(dup)!r}")
    if contract.label and contract.label in df.columns:
        bad = ~df[contract.label].isin([0, 1])
        if bad.any():
            problems.append(
                f"{source}: label {contract.label!r} has {int(bad.sum())} values not 0/1"
            )
    for col in contract.columns:
        if col.name not in df.columns:
            continue
        values = pd.to_numeric(df[col.name], errors="coerce")
        if values.isna().any():
            problems.append(
                f"{source}: column {col.name!r} has {int(values.isna().sum())} missing or "
                "non-numeric values"
            )
        if col.range is not None:
            lo, hi = col.range
            out = ((values < lo) | (values > hi)).sum()
            if out:
                problems.append(
                    f"{source}: column {col.name!r} has {int(out)} values outside [{lo:g}, {hi:g}]"
                )
    return problems
