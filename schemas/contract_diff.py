"""What changed between two versions of a data contract, one readable line per change.

A silo operator accepts a new contract version only after reading what it changes
(`fedsilo silo accept-contract`), and a silo that declines a run for an unaccepted version logs
the same lines. Each line starts with ``+`` (added), ``-`` (removed) or ``~`` (changed) and names
the column or key, e.g.::

    + column 'bmi' (numeric, range [10, 80])
    ~ column 'chol': range [0, 600] -> [0, 700]
    ~ column 'cp': categories + 'unknown'
    ~ target: positive_if {'op': '>', 'value': 0} -> {'op': '>=', 'value': 1}
    ~ features: + 'bmi'
    ~ min_rows: 30 -> 50

The comparison walks the contracts' fields generically, so keys added to `Contract` or `Column`
later are reported too (as ``~ column 'x': key old -> new``).
"""

from __future__ import annotations

from typing import Any

from schemas.contracts.loader import Column, Contract

# Keys compared on their own below; every other top-level key is compared as a value.
_STRUCTURED = ("columns", "features", "target")
_SETLIKE = ("categories", "missing_sentinels")


def diff_contracts(old: Contract | None, new: Contract) -> list[str]:
    """Readable lines describing how `new` differs from `old` (empty when they agree).

    Parameters
    ----------
    old
        The version the reader knows (the silo's last accepted one); None when there is none,
        in which case every column is listed as added.
    new
        The version on offer.
    """
    if old is None:
        return [f"+ contract {new.name!r} v{new.version} (first version accepted here)"] + [
            f"+ column {_column_summary(col)}" for col in new.columns
        ]
    before, after = old.model_dump(mode="json"), new.model_dump(mode="json")
    lines = [
        f"~ {key}: {_show(before.get(key))} -> {_show(after.get(key))}"
        for key in _ordered_keys(before, after)
        if key not in _STRUCTURED and before.get(key) != after.get(key)
    ]
    lines += _target_lines(before["target"], after["target"])
    lines += _column_lines(old, new)
    lines += _feature_lines(old.features, new.features)
    return lines


def _ordered_keys(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    return list(before) + [k for k in after if k not in before]


def _target_lines(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    return [
        f"~ target: {key} {_show(before.get(key))} -> {_show(after.get(key))}"
        for key in _ordered_keys(before, after)
        if before.get(key) != after.get(key)
    ]


def _column_lines(old: Contract, new: Contract) -> list[str]:
    old_cols = {c.name: c for c in old.columns}
    new_cols = {c.name: c for c in new.columns}
    lines = [f"- column {name!r}" for name in old_cols if name not in new_cols]
    lines += [
        f"+ column {_column_summary(c)}" for name, c in new_cols.items() if name not in old_cols
    ]
    for name, col in new_cols.items():
        if name in old_cols:
            lines += _changed_column(old_cols[name], col)
    return lines


def _changed_column(old: Column, new: Column) -> list[str]:
    before, after = old.model_dump(mode="json"), new.model_dump(mode="json")
    lines = []
    for key in _ordered_keys(before, after):
        was, now = before.get(key), after.get(key)
        if was == now:
            continue
        if key in _SETLIKE and isinstance(was, list) and isinstance(now, list):
            lines.append(f"~ column {new.name!r}: {key} {_set_change(was, now)}")
        else:
            lines.append(f"~ column {new.name!r}: {key} {_show(was)} -> {_show(now)}")
    return lines


def _feature_lines(old: tuple[str, ...], new: tuple[str, ...]) -> list[str]:
    if old == new:
        return []
    change = _set_change(list(old), list(new))
    if set(old) == set(new):
        change = f"reordered {list(old)} -> {list(new)} (feature order changes the model's inputs)"
    return [f"~ features: {change}"]


def _set_change(was: list[Any], now: list[Any]) -> str:
    added = [v for v in now if v not in was]
    removed = [v for v in was if v not in now]
    parts = [f"+ {v!r}" for v in added] + [f"- {v!r}" for v in removed]
    return ", ".join(parts) if parts else f"reordered {was} -> {now}"


def _column_summary(col: Column) -> str:
    detail: str = col.type
    if col.range is not None:
        detail += f", range [{col.range[0]:g}, {col.range[1]:g}]"
    if col.categories is not None:
        detail += f", categories {list(col.categories)}"
    return f"{col.name!r} ({detail})"


def _show(value: Any) -> str:
    if value is None:
        return "(none)"
    if (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int | float) for v in value)
    ):
        return f"[{value[0]:g}, {value[1]:g}]"
    return repr(value) if isinstance(value, str) else str(value)
