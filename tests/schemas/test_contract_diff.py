"""The readable diff of two contract versions a silo operator reads before accepting one."""

from __future__ import annotations

from schemas.contract_diff import diff_contracts
from schemas.contracts.loader import CONTRACTS_DIR, load_contract, load_contract_text

HEART = (CONTRACTS_DIR / "heart_disease.toml").read_text(encoding="utf-8")


def edited(*replacements: tuple[str, str]) -> str:
    text = HEART
    for old, new in replacements:
        assert text.count(old) >= 1, old
        text = text.replace(old, new, 1)
    return text


def test_the_same_contract_has_no_changes() -> None:
    heart = load_contract("heart_disease")
    assert diff_contracts(heart, load_contract_text(HEART, "copy")) == []


def test_a_first_acceptance_lists_every_column() -> None:
    heart = load_contract("heart_disease")
    lines = diff_contracts(None, heart)
    assert lines[0].startswith("+ contract 'heart_disease' v1.0.0")
    assert len(lines) == 1 + len(heart.columns)
    assert "+ column 'age' (numeric, range [" in "\n".join(lines)


def test_each_kind_of_change_is_one_named_line() -> None:
    old = load_contract("heart_disease")
    chol = old.column("chol")
    assert chol.range is not None and chol.missing_sentinels
    lo, hi = chol.range
    new_text = edited(
        ('version = "1.0.0"', 'version = "1.1.0"'),
        (f"range = [{lo:g}, {hi:g}]", f"range = [{lo:g}, {hi + 100:g}]"),
        ("min_rows = ", "min_rows = 1"),
    )
    # a new column at the end, and the sex column's categories widened
    sex = old.column("sex")
    assert sex.categories is not None
    cats = ", ".join(f'"{c}"' for c in sex.categories)
    new_text = new_text.replace(f"categories = [{cats}]", f'categories = [{cats}, "Other"]', 1)
    new_text += '\n[[columns]]\nname = "bmi"\ntype = "numeric"\nrange = [10, 80]\n'
    new = load_contract_text(new_text, "edited")
    lines = diff_contracts(old, new)
    text = "\n".join(lines)
    assert "~ version: '1.0.0' -> '1.1.0'" in lines
    assert f"~ min_rows: {old.min_rows} -> 1{old.min_rows}" in lines
    assert f"~ column 'chol': range [{lo:g}, {hi:g}] -> [{lo:g}, {hi + 100:g}]" in lines
    assert "~ column 'sex': categories + 'Other'" in lines
    assert "+ column 'bmi' (numeric, range [10, 80])" in lines
    assert "features" not in text  # bmi is declared but not a feature: the inputs are unchanged


def test_removed_columns_types_features_and_target_rules_are_named() -> None:
    old = load_contract("heart_disease")
    dropped = old.features[-1]
    rule = old.target.positive_if
    assert rule is not None
    new = old.model_copy(
        update={
            "features": old.features[:-1],
            "target": old.target.model_copy(
                update={"positive_if": rule.model_copy(update={"op": ">="})}
            ),
            "columns": tuple(
                c.model_copy(update={"type": "categorical"}) if c.name == "age" else c
                for c in old.columns
                if c.name != "id"
            ),
        }
    )
    lines = diff_contracts(old, new)
    assert f"~ features: - {dropped!r}" in lines
    assert "~ target: positive_if {'op': '>', 'value': 0.0} -> {'op': '>=', 'value': 0.0}" in lines
    assert "- column 'id'" in lines
    assert "~ column 'age': type 'numeric' -> 'categorical'" in lines
    assert f"~ features: + {dropped!r}" in diff_contracts(new, old)
    reordered = old.model_copy(update={"features": tuple(reversed(old.features))})
    assert diff_contracts(old, reordered)[0].startswith("~ features: reordered")
