"""Links between a tree model's base score and its raw margin, per objective (both sides)."""

from __future__ import annotations

import math


def base_score_to_margin(base_score: float, objective: str) -> float:
    """Inverse link of the objective: logit for binary:logistic, identity for squared error."""
    if objective == "binary:logistic":
        p = min(max(base_score, 1e-16), 1 - 1e-16)
        return math.log(p / (1 - p))
    return base_score


def margin_to_base_score(margin: float, objective: str) -> float:
    """Link of the objective: sigmoid for binary:logistic, identity for squared error."""
    if objective == "binary:logistic":
        return 1.0 / (1.0 + math.exp(-margin))
    return margin
