"""``fedsilo contract draft``: a first data contract written from a sample of the table.

`draft_contract(frame, name=..., target=..., task=...)` returns contract TOML that loads with
`schemas.contracts.load_contract_text` and passes the validation gate on the sample it was
drafted from. It is a draft: a sample shows what one institution holds, not what the federation
agrees, so every guess is written with a ``# REVIEW`` comment saying what to check:

- types: numbers are numeric, true/false/yes/no columns boolean, other text categorical;
- ranges from the 1st and 99th percentiles widened by a quarter of their span (never below 0
  for a column that is never negative); a tail beyond them becomes `max_out_of_range_fraction`;
- missing-value sentinels: 0, -1, 99, 999, 9999 ... standing far apart from a column's other
  values (chol 0 beside 85..600), and text such as "unknown" or "?";
- id columns (a name like ``id`` or ``*_id``, or a unique text or row-number column) become
  ``type = "identifier"`` with ``unique = true``, never features; constant columns are kept
  out of the features too;
- the task, when not given: a float target with many values is regression; otherwise two
  values are binary and a few more multiclass;
- reference statistics (mean/std or category shares) with generous tolerances, so a swapped
  column or a changed unit fails the gate while ordinary differences between silos do not.
"""

from __future__ import annotations

import json
import math
import re
from typing import get_args

import numpy as np
import pandas as pd

from schemas.contract_registry import check_contract_name
from schemas.contracts.loader import ContractError, Task

_ID_NAME = re.compile(r"(?i)^(id|.*[_\-. ]id|id[_\-. ].*|.*uuid.*)$")
_NUMERIC_SENTINELS = (0, -1, -9, -99, -999, -9999, 99, 999, 9999, 99999)
_TEXT_SENTINELS = {"unknown", "?", "n/a", "na", "none", "missing", "-", "", "not known"}
_TRUE, _FALSE = {"true", "yes", "1"}, {"false", "no", "0"}
_MAX_CLASSES = 20  # more distinct target values than this: regression (numeric) or refused
_MAX_CATEGORIES = 50
MEAN_TOLERANCE, STD_TOLERANCE, FREQUENCY_TOLERANCE = 1.0, 0.75, 0.25


def draft_contract(
    frame: pd.DataFrame, *, name: str, target: str | None = None, task: str | None = None
) -> str:
    """A draft contract TOML for tables like `frame`; see the module docstring.

    Parameters
    ----------
    frame
        A sample of the table (a silo's file, read with `silos.data.load_table`).
    name
        The contract's name (letters, digits, _ . -; `schemas.contract_registry`).
    target
        The column to predict; None takes the last column (flagged for review).
    task
        "binary", "multiclass" or "regression"; None guesses it from the target's values.

    Raises
    ------
    ContractError
        Empty frame, duplicate column names, a name the service refuses, a column holding
        lists or infinite (or overflowing) numbers, an unknown target column or task, or a
        target that cannot serve the task (missing values, too many classes, text for
        regression).
    """
    if frame.empty or frame.shape[1] < 2:
        raise ContractError("cannot draft a contract: the sample needs rows and two columns")
    columns = [str(c) for c in frame.columns]
    if len(set(columns)) != len(columns):
        twice = sorted({c for c in columns if columns.count(c) > 1})
        raise ContractError(f"cannot draft a contract: columns named more than once: {twice}")
    frame = frame.set_axis(columns, axis=1)
    check_contract_name(name)  # the service and silo.toml take no other
    for col in columns:
        _check_values(col, frame[col])
    target_note = "" if target is not None else "REVIEW: guessed (the last column)"
    target = columns[-1] if target is None else target
    if target not in columns:
        raise ContractError(f"target column {target!r} is not in the sample; columns: {columns}")
    if task is not None and task not in get_args(Task):
        raise ContractError(f"unknown task {task!r}; choose one of {list(get_args(Task))}")
    y = frame[target]
    if y.isna().any():
        raise ContractError(
            f"target column {target!r} has {int(y.isna().sum())} missing values; "
            "drop unlabelled rows from the sample first"
        )
    task_note = "" if task is not None else "REVIEW: guessed from the target's values"
    chosen: str = task if task is not None else _guess_task(y)
    blocks, features = [], []
    for col in columns:
        if col == target:
            continue
        block, is_feature = _column_block(col, frame[col])
        blocks.append(block)
        if is_feature:
            features.append(col)
    target_block, target_table, class_counts = _target(target, y, chosen)
    if not features:
        raise ContractError("cannot draft a contract: no column of the sample can be a feature")
    header = _header(frame, name, target, chosen, features, class_counts, target_note, task_note)
    return "\n".join([header, target_table, *blocks, target_block]).rstrip() + "\n"


def _check_values(col: str, s: pd.Series) -> None:
    """Refuse values no contract column describes, naming the column and how many rows."""
    if s.dtype == object:  # Parquet list columns arrive as arrays in object cells
        nested = int(s.map(lambda v: isinstance(v, list | tuple | dict | set | np.ndarray)).sum())
        if nested:
            raise ContractError(
                f"column {col!r} holds lists or arrays in {nested} rows; a contract column takes "
                "one value per cell: flatten it into columns, or drop it from the sample"
            )
    elif pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        # inf is no measurement (an export's division by zero, or 1e400 overflowing float64):
        # no range or reference holds it and training cannot scale it, so the source must fix it
        infinite = int(np.isinf(s.astype("float64")).sum())
        if infinite:
            raise ContractError(
                f"column {col!r} holds {infinite} infinite values (inf, or a number too large "
                "for float64 such as 1e400); correct them, or blank them if they mean "
                "'not measured', and draft again"
            )


def _guess_task(y: pd.Series) -> str:
    distinct = y.nunique()
    numeric = pd.api.types.is_numeric_dtype(y) and not pd.api.types.is_bool_dtype(y)
    if numeric and (distinct > _MAX_CLASSES or not _integral(y)):
        return "regression"
    return "binary" if distinct <= 2 else "multiclass"


def _header(
    frame: pd.DataFrame,
    name: str,
    target: str,
    task: str,
    features: list[str],
    class_counts: list[int],
    target_note: str,
    task_note: str,
) -> str:
    n = len(frame)
    duplicates = int(frame.duplicated().sum())
    lines = [
        f"# Draft data contract written by `fedsilo contract draft` from a sample of {n} rows.",
        "# A draft, not an agreement: review every line marked REVIEW, then bump `version`",
        "# and publish it (`fedsilo contract publish`).",
        "",
        f"name = {_s(name)}",
        'version = "0.1.0"',
        f"description = {_s(f'{name} (drafted from {n} sample rows)')}",
        "# REVIEW: the smallest table a silo may train on (here at most the sample's size).",
        f"min_rows = {min(n, 50)}",
        f"features = {_wrapped(features)}",
    ]
    if duplicates:
        lines += [f"# REVIEW: the sample holds {duplicates} duplicate rows; they are allowed."]
    lines += [f"allow_duplicate_rows = {str(duplicates > 0).lower()}"]
    if class_counts:
        smallest = min(class_counts)
        lines += [
            "# Every class needs this many rows at each silo (enough for the train/test split).",
            f"min_class_rows = {max(1, min(5, smallest))}",
        ]
    lines += [
        '# A column outside its reference statistics fails the gate; "warn" only reports it.',
        'on_drift = "error"',
    ]
    if target_note or task_note:
        lines += [f"# {note} ({target!r}, {task})" for note in (target_note, task_note) if note]
    return "\n".join(lines) + "\n"


def _target(target: str, y: pd.Series, task: str) -> tuple[str, str, list[int]]:
    """The [target] table, the target's [[columns]] block and the class counts."""
    numeric = pd.api.types.is_numeric_dtype(y) and not pd.api.types.is_bool_dtype(y)
    distinct = sorted(y.unique().tolist(), key=lambda v: (str(type(v)), v))
    lines = ["[target]", f"column = {_s(target)}", f'task = "{task}"']
    if task == "regression":
        if not numeric:
            raise ContractError(f"a regression target must be numeric; {target!r} holds text")
        block = _numeric_block(target, y, feature=False)[0]
        return block, "\n".join(lines) + "\n", []
    if len(distinct) > _MAX_CLASSES:
        raise ContractError(
            f"target {target!r} has {len(distinct)} values, too many classes for {task}; "
            "pass --task regression for a numeric target"
        )
    if len(distinct) < 2:
        raise ContractError(f"target {target!r} has one value in the sample: nothing to learn")
    values = [_value(v) for v in distinct]
    if task == "binary":
        if len(values) == 2:
            rule = f'{{ op = "==", value = {_toml(values[1])} }}'
            if set(values) != {0, 1}:  # 0/1 and false/true need no guess
                lines.append("# REVIEW: the positive class was guessed (the second value).")
        else:
            rule = f'{{ op = ">", value = {_toml(values[0])} }}'
            lines.append("# REVIEW: positive was guessed as any value above the smallest.")
        lines.append(f"positive_if = {rule}")
    lines.append(f"values = [{', '.join(_toml(v) for v in values)}]")
    if pd.api.types.is_bool_dtype(y):
        block = _block(target, "boolean", [])
    elif numeric:
        lo, hi = float(min(distinct)), float(max(distinct))
        block = _block(target, "numeric", [f"range = [{_num(lo)}, {_num(hi)}]"])
    else:
        kind = "categorical"
        block = _block(target, kind, [f"categories = {_list([str(v) for v in values])}"])
    counts = y.map(str).value_counts()
    if task == "binary" and len(values) > 2:
        first = str(distinct[0])
        class_counts = [int(counts.get(first, 0)), int(len(y) - counts.get(first, 0))]
    else:
        class_counts = [int(counts.get(str(v), 0)) for v in distinct]
    return block, "\n".join(lines) + "\n", class_counts


def _column_block(col: str, s: pd.Series) -> tuple[str, bool]:
    """The column's [[columns]] block and whether it is drafted as a feature."""
    block, is_feature = _typed_block(col, s)
    lines = block.splitlines(keepends=True)
    lines.insert(3, _numbers_note(col, s.dropna()))  # after [[columns]], name and type
    return "".join(lines), is_feature


def _numbers_note(col: str, present: pd.Series) -> str:
    """A REVIEW line for a text column that is numbers but for a few cells (a typo, a "?")."""
    if present.empty or pd.api.types.is_numeric_dtype(present) or _boolean(present):
        return ""
    bad = present[pd.to_numeric(present, errors="coerce").isna()].map(str)
    if bad.empty or bad.nunique() > 5 or len(bad) > 0.1 * len(present):
        return ""
    return (
        f"# REVIEW: {col!r} holds numbers except {_list(sorted(bad.unique()))} ({len(bad)} of "
        f"{len(present)} values), so it was drafted as text; correct those cells (blank if they "
        "mean 'not measured') and draft again to make it numeric.\n"
    )


def _typed_block(col: str, s: pd.Series) -> tuple[str, bool]:
    present = s.dropna()
    if present.empty:
        note = "# REVIEW: empty in the sample; not a feature."
        return _block(col, "numeric", [note, "max_missing_fraction = 1.0"]), False
    if _id_like(col, s):
        lines = ["# REVIEW: looks like an identifier: kept out of the features."]
        if present.is_unique:
            lines.append("unique = true")
        lines += _missing_lines(s.isna().mean())
        return _block(col, "identifier", lines), False
    if _boolean(present):
        return _discrete_block(col, s, "boolean")
    if pd.api.types.is_numeric_dtype(s):
        return _numeric_block(col, s, feature=True)
    if present.map(str).nunique() > _MAX_CATEGORIES:
        note = "# REVIEW: free text with many values: not a feature."
        return _block(col, "identifier", [note, *_missing_lines(s.isna().mean())]), False
    return _discrete_block(col, s, "categorical")


@np.errstate(over="ignore", invalid="ignore")  # overflowing values: refused by `_overflow`
def _numeric_block(col: str, s: pd.Series, *, feature: bool) -> tuple[str, bool]:
    values = s.astype("float64")
    sentinels = [v for v in _NUMERIC_SENTINELS if _is_sentinel(values, v)]
    present = values[~values.isin(sentinels)].dropna()
    lines = []
    if sentinels:
        lines.append(f"# REVIEW: {sentinels} stand far from the other values: read as missing.")
        lines.append(f"missing_sentinels = [{', '.join(_num(v) for v in sentinels)}]")
    if present.nunique() < 2:
        lines += ["# REVIEW: constant in the sample; not a feature.", "max_missing_fraction = 1.0"]
        return _block(col, "numeric", lines), False
    lo, hi, outside = _range(col, present)
    if lo == 0 and present.min() >= 0:
        lines.append("# REVIEW: never negative in the sample, so the range starts at 0.")
    lines.append(f"range = [{_num(lo)}, {_num(hi)}]")
    if outside > 0:
        allowed = math.ceil(outside * 1500) / 1000 + 0.001
        lines.append(f"# REVIEW: {outside:.2%} of the sample lies in long tails beyond the range.")
        lines.append(f"max_out_of_range_fraction = {_num(min(allowed, 1.0))}")
    missing = 1.0 - len(present) / len(values)
    lines += _missing_lines(missing)
    if feature and missing > 0:
        lines.append(f"impute = {_num(_sig(float(present.median()), 3))}")
    if feature:
        mean, std = float(present.mean()), float(present.std())
        if not math.isfinite(mean + std):
            raise _overflow(col, present)
        lines.append(
            f"reference = {{ mean = {_num(_sig(mean))}, std = {_num(_sig(std))}, "
            f"mean_tolerance = {MEAN_TOLERANCE}, std_tolerance = {STD_TOLERANCE} }}"
        )
    return _block(col, "numeric", lines), feature


def _discrete_block(col: str, s: pd.Series, kind: str) -> tuple[str, bool]:
    text = s.dropna().map(_bool_text if kind == "boolean" else str)
    sentinels = sorted({v for v in text.unique() if v.strip().lower() in _TEXT_SENTINELS})
    present = text[~text.isin(sentinels)]
    lines = []
    if sentinels:
        lines.append(f"# REVIEW: {sentinels} read as missing.")
        lines.append(f"missing_sentinels = {_list(sentinels)}")
    levels = sorted(present.unique().tolist())
    if kind == "categorical":
        lines.append("# REVIEW: categories seen in the sample; other silos may hold more.")
        lines.append(f"categories = {_list(levels)}")
    lines += _missing_lines(1.0 - len(present) / len(s))
    if len(levels) < 2:
        lines.append("# REVIEW: constant in the sample; not a feature.")
        return _block(col, kind, lines), False
    shares = present.value_counts(normalize=True)
    pairs = ", ".join(f"{_s(str(k))} = {_num(round(float(v), 3))}" for k, v in shares.items())
    tolerance = f"frequency_tolerance = {FREQUENCY_TOLERANCE}"
    lines.append(f"reference = {{ frequencies = {{ {pairs} }}, {tolerance} }}")
    return _block(col, kind, lines), True


def _missing_lines(share: float) -> list[str]:
    if share <= 0:
        return []
    allowed = min(1.0, math.ceil((share * 1.5 + 0.05) * 100) / 100)
    return [
        f"# REVIEW: {share:.1%} missing in the sample.",
        f"max_missing_fraction = {_num(allowed)}",
    ]


def _block(col: str, kind: str, lines: list[str]) -> str:
    return "\n".join(["[[columns]]", f"name = {_s(col)}", f'type = "{kind}"', *lines]) + "\n"


def _id_like(col: str, s: pd.Series) -> bool:
    present = s.dropna()
    if len(present) < 10 or _boolean(present):
        return False
    if _ID_NAME.match(col) and not pd.api.types.is_float_dtype(s):
        return True
    if not present.is_unique:
        return False
    if pd.api.types.is_numeric_dtype(s):
        if not _integral(present):
            return False
        span = float(present.max() - present.min()) + 1
        return present.is_monotonic_increasing or span <= 2 * len(present)
    return True  # unique text on every row


def _boolean(present: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(present):
        return True
    if pd.api.types.is_numeric_dtype(present):
        return False
    return all(_bool_text(v) in ("true", "false") for v in present.unique())


def _bool_text(value: object) -> str:
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    lowered = str(value).strip().lower()
    return "true" if lowered in _TRUE else "false" if lowered in _FALSE else str(value)


def _is_sentinel(values: pd.Series, candidate: float) -> bool:
    """True when `candidate` occurs and stands far apart from every other value."""
    if not (values == candidate).any():
        return False
    others = values[values != candidate].dropna()
    distinct = np.sort(others.unique())
    if len(distinct) < 3:
        return False
    gap = float(np.min(np.abs(distinct - candidate)))
    spacing = float(np.median(np.diff(distinct)))
    return gap > max(5 * spacing, float(others.std()))


def _range(col: str, present: pd.Series) -> tuple[float, float, float]:
    q_lo, q_hi = (float(q) for q in present.quantile([0.01, 0.99]))
    width = q_hi - q_lo or max(abs(q_hi), 1.0)
    lo, hi = q_lo - width / 4, q_hi + width / 4
    if not math.isfinite(hi - lo):
        raise _overflow(col, present)
    if present.min() >= 0:
        lo = max(lo, 0.0)
    step = 10.0 ** (math.floor(math.log10(hi - lo)) - 2)
    if _integral(present):
        step = max(step, 1.0)
    lo, hi = math.floor(lo / step) * step, math.ceil(hi / step) * step
    outside = float(((present < lo) | (present > hi)).mean())
    return lo, hi, outside


def _overflow(col: str, present: pd.Series) -> ContractError:
    return ContractError(
        f"column {col!r} holds numbers as large as {float(present.abs().max()):.3g}: its range "
        "and statistics overflow float64; rescale it (other units) or blank values that mean "
        "'not measured', and draft again"
    )


def _integral(s: pd.Series) -> bool:
    values = s.dropna().astype("float64")
    return bool(np.all(np.isfinite(values)) and np.all(values == np.round(values)))


def _sig(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def _value(v: object) -> object:
    if isinstance(v, bool | np.bool_):
        return bool(v)
    if isinstance(v, int | float | np.integer | np.floating):
        return int(v) if float(v).is_integer() else float(v)
    return str(v)


def _num(x: float) -> str:
    x = float(x)
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else repr(x)


def _toml(v: object) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int | float):
        return _num(v)
    return _s(str(v))


def _s(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a JSON string is a TOML basic string


def _wrapped(items: list[str], width: int = 96) -> str:
    """A TOML array over several lines when one would run past `width`."""
    one = _list(items)
    if len(one) + len("features = ") <= width:
        return one
    lines, line = [], "   "
    for item in (f" {_s(i)}," for i in items):
        if len(line) + len(item) > width:
            lines.append(line)
            line = "   "
        line += item
    return "[\n" + "\n".join([*lines, line]) + "\n]"


def _list(items: list[str]) -> str:
    return "[" + ", ".join(_s(i) for i in items) + "]"
