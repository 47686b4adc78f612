"""Per-silo model kinds (`schemas.member_kinds`) name silos as they enrol: by the rule of every
silo name (no spaces, unlike a hospital's display name "VA Long Beach"), and the hints the
specs give show an enrolled name ("cleveland"), not a display name ("Cleveland") that no
silo has and that would silently train the default."""

from __future__ import annotations

import json
import re

import pytest
from pydantic import ValidationError

from schemas.distill import DistillSpec
from schemas.ensemble import EnsembleSpec
from schemas.member_kinds import SILO_NAME_PATTERN, unknown_silos
from schemas.wire import NAME_PATTERN
from silos.demo_data import HEART_SILOS


def test_keys_follow_the_silo_name_rule() -> None:
    assert SILO_NAME_PATTERN == NAME_PATTERN  # repeated there to avoid an import cycle
    for spec in (EnsembleSpec, DistillSpec):
        with pytest.raises(ValidationError, match=r"cannot exist: \['VA Long Beach'\]"):
            spec(kinds={"default": "mlp", "VA Long Beach": "xgboost"})  # type: ignore[dict-item]
        assert (
            spec(kinds={"default": "mlp", "va_long_beach": "xgboost"}).kind_for("va_long_beach")
            == "xgboost"
        )


@pytest.mark.parametrize("spec", [EnsembleSpec, DistillSpec])
def test_the_hint_names_a_silo_as_it_enrols(spec: type) -> None:
    with pytest.raises(ValidationError) as err:
        spec(kinds={"hungary": "mlp"})
    example = json.loads(re.search(r"e\.g\. (\{.*?\})", str(err.value)).group(1))  # type: ignore[union-attr]
    named = [k for k in example if k != "default"]
    assert named and all(k in HEART_SILOS for k in named), named  # the demo silos' names


def test_unknown_silos() -> None:
    kinds = {"default": "mlp", "Cleveland": "xgboost", "hungary": "mlp", "bern": "lightgbm"}
    assert unknown_silos(kinds, {"cleveland", "hungary"}) == ["Cleveland", "bern"]  # type: ignore[arg-type]
    assert unknown_silos({"default": "mlp"}, set()) == []
