"""Read a dataset's data contract from `schemas/contracts/{name}.toml`.

A contract is the federation's agreement about one table: its columns (type, unit, allowed
range or categories, missing-value sentinels and limits, the agreed fill value), the target,
its allowed values and its positive rule, the minimum table size, whether extra columns are
tolerated, which columns feed the model and how (`[pipeline]`). Every silo applies the same
contract, so every silo builds the same features.

A careful data steward adds: ``unique = true`` on a column (a patient id; ``type =
"identifier"`` for an id that is neither a number to scale nor a category), whether whole rows
may repeat (``allow_duplicate_rows``), the rows every class needs at a silo
(``min_class_rows``), and per-column ``reference`` statistics (`schemas.contracts.reference`)
that fail the gate, or only warn (``on_drift = "warn"``), when a silo's column strays from them.

Versioning: `version` is the contract's own version (bump it whenever a rule changes); the
validation gate also records the sha256 of the contract's content (`silos.gate.contract_sha256`),
so two silos can prove they validated against the same rules.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from schemas.contracts.reference import Reference, check_reference
from schemas.exceptions import SchemaError

CONTRACTS_DIR = Path(__file__).resolve().parent
_NAME = re.compile(r"^[a-z0-9][a-z0-9_]{0,63}$")

# "identifier": a record id (text or number); never a feature or the target, only checked for
# missing and (with `unique`) duplicate values.
ColumnType = Literal["numeric", "categorical", "boolean", "identifier"]
# What the model predicts: a positive rule (binary), one of the listed classes (multiclass), or a
# number (regression).
Task = Literal["binary", "multiclass", "regression"]
Comparison = Literal[">", ">=", "<", "<=", "==", "!="]


class ContractError(SchemaError):
    """A data contract file is missing, is not valid TOML, or describes an impossible table."""


class _Frozen(BaseModel):
    # inf or nan (TOML has both) bounds nothing, and a contract holding one has no canonical
    # JSON form to hash (silos.gate.contract_sha256)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class PositiveRule(_Frozen):
    """A row is a positive example when `target <op> value` holds."""

    op: Comparison
    value: bool | float | str


class Target(_Frozen):
    column: str
    description: str = ""
    task: Task = "binary"
    positive_if: PositiveRule | None = Field(
        default=None, description="binary only: a row is positive when this holds"
    )
    values: tuple[bool | float | str, ...] | None = Field(
        default=None,
        description="every value the target may take, e.g. [0, 1]; for multiclass the classes, "
        "in class-index order",
    )

    @model_validator(mode="after")
    def _fits_task(self) -> Target:
        if self.task == "binary" and self.positive_if is None:
            raise ValueError('a binary target needs positive_if, e.g. { op = ">", value = 0 }')
        if self.task != "binary" and self.positive_if is not None:
            raise ValueError(f"positive_if applies to binary targets, not to task {self.task!r}")
        if self.task == "multiclass":
            if not self.values or len(self.values) < 2:
                raise ValueError("a multiclass target lists its classes in values (at least 2)")
            if len(set(self.values)) != len(self.values):
                raise ValueError("a multiclass target lists a class twice in values")
        return self


class Pipeline(_Frozen):
    """How numeric features are scaled and filled.

    ``numeric = "range"``: scale by the contract range, fill with the contract's `impute`.
    ``numeric = "standardize"``: the federation first runs a statistics round (per-silo counts,
    sums and sums of squares, securely summed; see `schemas.contracts.stats`), then every silo
    fills missing values with the federation mean and standardises with the federation
    mean and standard deviation. Without those statistics the pipeline falls back to "range".
    """

    numeric: Literal["range", "standardize"] = "range"

    @property
    def needs_federation_stats(self) -> bool:
        return self.numeric == "standardize"


class Column(_Frozen):
    """One column of the table, as every silo must provide it."""

    name: str = Field(min_length=1)
    type: ColumnType
    unit: str = ""
    description: str = ""
    range: tuple[float, float] | None = Field(
        default=None, description="allowed [min, max] of a numeric column; also its scaling"
    )
    categories: tuple[str, ...] | None = None
    missing_sentinels: tuple[float | str, ...] = Field(
        default=(), description="values that mean 'not measured', e.g. chol 0"
    )
    impute: bool | float | str | None = Field(
        default=None, description="federation-agreed fill value for missing entries"
    )
    max_missing_fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    max_out_of_range_fraction: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="share of a numeric column's present values allowed outside `range`",
    )
    on_unknown: Literal["error", "missing"] = Field(
        default="error", description="what a category the contract does not list becomes"
    )
    unique: bool = Field(default=False, description="no value may occur twice, e.g. a patient id")
    reference: Reference | None = Field(
        default=None, description="expected statistics; see schemas.contracts.reference"
    )

    @property
    def allows_missing(self) -> bool:
        return self.max_missing_fraction > 0

    @property
    def levels(self) -> tuple[str, ...] | tuple[bool, ...]:
        """The fixed categories of a categorical or boolean column, in one-hot order."""
        if self.type == "boolean":
            return (False, True)
        if self.type == "categorical" and self.categories is not None:
            return self.categories
        raise ValueError(f"column {self.name!r} is numeric and has no categories")

    @model_validator(mode="after")
    def _consistent(self) -> Column:
        if self.type == "numeric":
            _check_numeric(self)
        elif self.type == "identifier":
            if self.range is not None or self.categories is not None or self.impute is not None:
                raise ValueError(
                    f"identifier column {self.name!r} takes no range, categories or impute"
                )
        else:
            _check_discrete(self)
        if self.reference is not None:
            levels = (
                []
                if self.type in ("numeric", "identifier")
                else [str(v).lower() if self.type == "boolean" else str(v) for v in self.levels]
            )
            check_reference(self.reference, self.name, self.type, levels)
        if self.missing_sentinels and not self.allows_missing:
            raise ValueError(
                f"column {self.name!r} declares missing_sentinels but max_missing_fraction = 0; "
                "raise max_missing_fraction or drop the sentinels"
            )
        return self


def _check_numeric(col: Column) -> None:
    if col.categories is not None:
        raise ValueError(f"numeric column {col.name!r} cannot list categories")
    if any(isinstance(s, str) for s in col.missing_sentinels):
        raise ValueError(f"numeric column {col.name!r} needs numeric missing_sentinels")
    if col.range is not None and not col.range[0] < col.range[1]:
        raise ValueError(f"column {col.name!r}: range must be [min, max] with min < max")
    if col.impute is None:
        return
    if isinstance(col.impute, bool | str):
        raise ValueError(f"numeric column {col.name!r} needs a numeric impute value")
    if col.range is not None and not col.range[0] <= col.impute <= col.range[1]:
        raise ValueError(f"column {col.name!r}: impute {col.impute} is outside range {col.range}")


def _check_discrete(col: Column) -> None:
    if col.range is not None:
        raise ValueError(f"{col.type} column {col.name!r} cannot have a numeric range")
    if col.type == "boolean" and col.categories is not None:
        raise ValueError(f"boolean column {col.name!r} has fixed categories [false, true]")
    if col.type == "categorical":
        if not col.categories:
            raise ValueError(f"categorical column {col.name!r} must list its categories")
        if len(set(col.categories)) != len(col.categories):
            raise ValueError(f"categorical column {col.name!r} lists a category twice")
    if col.impute is not None and col.impute not in col.levels:
        raise ValueError(
            f"column {col.name!r}: impute {col.impute!r} is not one of {list(col.levels)}"
        )


class Contract(_Frozen):
    """A dataset's data contract; see the module docstring."""

    name: str
    version: str
    description: str = ""
    source: str = ""
    target: Target
    min_rows: int = Field(ge=1)
    allow_extra_columns: bool = Field(
        default=False, description="False: a column the contract does not declare fails the gate"
    )
    features: tuple[str, ...] = Field(min_length=1)
    pipeline: Pipeline = Pipeline()
    columns: tuple[Column, ...] = Field(min_length=1)
    allow_duplicate_rows: bool = Field(
        default=False, description="False: two identical rows (every column) fail the gate"
    )
    min_class_rows: int = Field(
        default=5, ge=1, description="classification: rows every class needs at each silo"
    )
    on_drift: Literal["error", "warn"] = Field(
        default="error", description="a column outside its reference statistics fails or warns"
    )

    def column(self, name: str) -> Column:
        """The column called `name`; raises ContractError when the contract has none."""
        for col in self.columns:
            if col.name == name:
                return col
        raise ContractError(f"contract {self.name!r} has no column {name!r}")

    @property
    def feature_columns(self) -> tuple[Column, ...]:
        return tuple(self.column(name) for name in self.features)

    @property
    def task(self) -> Task:
        return self.target.task

    @property
    def classes(self) -> tuple[bool | float | str, ...]:
        """Class labels in index order: the target values (multiclass), (0, 1) (binary)."""
        if self.task == "multiclass":
            return self.target.values or ()
        return (0, 1) if self.task == "binary" else ()

    @property
    def n_outputs(self) -> int:
        """Model outputs: one per class for multiclass, else one (a logit or a number)."""
        return len(self.classes) if self.task == "multiclass" else 1

    @model_validator(mode="after")
    def _consistent(self) -> Contract:
        names = [col.name for col in self.columns]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"columns declared twice: {duplicates}")
        unknown = [f for f in (*self.features, self.target.column) if f not in names]
        if unknown:
            raise ValueError(f"features/target name columns that are not declared: {unknown}")
        if len(set(self.features)) != len(self.features):
            raise ValueError("a feature is listed twice")
        if self.target.column in self.features:
            raise ValueError(f"the target {self.target.column!r} cannot also be a feature")
        for col in self.feature_columns:
            if col.type == "identifier":
                raise ValueError(f"identifier column {col.name!r} cannot be a feature")
            if col.type == "numeric" and col.range is None:
                raise ValueError(f"numeric feature {col.name!r} needs a range to be scaled by")
            if col.type == "numeric" and col.allows_missing and col.impute is None:
                raise ValueError(f"numeric feature {col.name!r} may be missing but has no impute")
        _check_target(self.target, self.column(self.target.column))
        return self


def _check_target(target: Target, col: Column) -> None:
    if col.type == "identifier":
        raise ValueError(f"identifier column {col.name!r} cannot be the target")
    if target.task == "regression" and col.type != "numeric":
        raise ValueError(
            f"a regression target must be a numeric column; {col.name!r} is {col.type}"
        )
    if col.allows_missing or col.missing_sentinels:
        raise ValueError(
            f"target {col.name!r} must never be missing: set its max_missing_fraction = 0 "
            "and drop unlabelled rows at the silo"
        )
    for value in target.values or ():
        if col.type == "numeric":
            if isinstance(value, bool | str):
                raise ValueError(f"target value {value!r} is not a number ({col.name!r})")
            if col.range is not None and not col.range[0] <= value <= col.range[1]:
                raise ValueError(f"target value {value} is outside {col.name!r} range {col.range}")
        elif value not in col.levels:
            raise ValueError(f"target value {value!r} is not one of {list(col.levels)}")


def load_contract(name: str) -> Contract:
    """Load the contract shipped as `schemas/contracts/{name}.toml`.

    Parameters
    ----------
    name
        Dataset name, e.g. ``"heart_disease"``.

    Raises
    ------
    ContractError
        The name is malformed, no such contract ships, or the file is invalid.
    """
    if not _NAME.match(name):
        raise ContractError(f"contract name {name!r} must be lower-case letters, digits and _")
    path = CONTRACTS_DIR / f"{name}.toml"
    if not path.is_file():
        shipped = sorted(p.stem for p in CONTRACTS_DIR.glob("*.toml"))
        raise ContractError(f"no data contract {name!r} at {path}; shipped contracts: {shipped}")
    return load_contract_file(path)


def load_contract_file(path: Path) -> Contract:
    """Load and check a contract from any TOML file.

    Raises
    ------
    ContractError
        Naming the file, and the line (TOML syntax) or the column and field (content) at fault.
    """
    try:
        # utf-8-sig: a byte-order mark (Notepad, PowerShell 5) is dropped, not a syntax error
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ContractError(f"cannot read data contract {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ContractError(f"{path}: not UTF-8 text: {exc}") from exc
    return load_contract_text(text, source=str(path))


def load_contract_text(text: str, source: str) -> Contract:
    """Parse and check a contract from TOML text (a published contract, a draft).

    Raises
    ------
    ContractError
        Naming `source`, and the line (TOML syntax) or the column and field (content) at fault.
    """
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message ends with "(at line L, column C)".
        raise ContractError(f"{source}: TOML syntax error: {exc}") from exc
    except RecursionError as exc:  # tomllib recurses once per level of nesting
        raise ContractError(f"{source}: TOML nested too deeply for a data contract") from exc
    try:
        return Contract.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(_describe(err, raw) for err in exc.errors())
        raise ContractError(f"{source}: invalid data contract: {problems}") from exc


def _describe(err: object, raw: dict) -> str:
    """One pydantic error as 'column 'chol' (columns[4]).type: message'."""
    loc = list(err["loc"])  # type: ignore[index]
    where = ".".join(str(part) for part in loc) or "contract"
    if len(loc) >= 2 and loc[0] == "columns" and isinstance(loc[1], int):
        columns = raw.get("columns")
        column = columns[loc[1]] if isinstance(columns, list) and loc[1] < len(columns) else None
        name = column.get("name", "?") if isinstance(column, dict) else "?"  # not a table
        rest = ".".join(str(part) for part in loc[2:])
        where = f"column {name!r} (columns[{loc[1]}])" + (f".{rest}" if rest else "")
    message = str(err["msg"]).removeprefix("Value error, ")  # type: ignore[index]
    return f"{where}: {message}"
