"""Reference statistics of a contract column: what the federation expects a silo's column to
look like, so that two same-typed columns swapped, or a unit change that stays inside the
range, fail the gate (see `schemas.contracts.gx_suite` and `silos.gate`).

Numeric: ``mean`` and ``std``, with ``mean_tolerance`` and ``std_tolerance`` in units of the
reference std (a silo's mean may lie within ``mean_tolerance * std`` of ``mean``; its std within
``std_tolerance * std`` of ``std``). Categorical or boolean: ``frequencies`` (each category's
share of the present values) with ``frequency_tolerance``, the largest absolute difference of any
share. Silos legitimately differ (that is why they federate), so the defaults are generous.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Shares may be rounded in the TOML; their sum may exceed 1 by this much.
_SHARE_SLACK = 0.01


class Reference(BaseModel):
    """A column's reference statistics and how far a silo may stray from them."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # as Column

    mean: float | None = None
    std: float | None = Field(default=None, gt=0)
    mean_tolerance: float = Field(default=1.0, gt=0, description="in reference stds")
    std_tolerance: float = Field(default=0.75, gt=0, description="in reference stds")
    frequencies: dict[str, float] | None = Field(
        default=None, description="category -> share of the present values"
    )
    frequency_tolerance: float = Field(default=0.25, gt=0, le=1)

    @model_validator(mode="after")
    def _complete(self) -> Reference:
        if (self.mean is None) != (self.std is None):
            raise ValueError("reference needs both mean and std, or neither")
        if self.mean is None and self.frequencies is None:
            raise ValueError("reference needs mean and std (numeric) or frequencies")
        if self.mean is not None and self.frequencies is not None:
            raise ValueError("reference has mean/std or frequencies, not both")
        if self.frequencies is not None:
            bad = {k: v for k, v in self.frequencies.items() if not 0.0 <= v <= 1.0}
            if bad:
                raise ValueError(f"reference frequencies must be shares in [0, 1]: {bad}")
            if sum(self.frequencies.values()) > 1.0 + _SHARE_SLACK:
                raise ValueError("reference frequencies add up to more than 1")
        return self

    @property
    def mean_bounds(self) -> tuple[float, float]:
        assert self.mean is not None and self.std is not None
        return (
            self.mean - self.mean_tolerance * self.std,
            self.mean + self.mean_tolerance * self.std,
        )

    @property
    def std_bounds(self) -> tuple[float, float]:
        assert self.std is not None
        return max(0.0, self.std * (1 - self.std_tolerance)), self.std * (1 + self.std_tolerance)


def check_reference(reference: Reference, column: str, kind: str, levels: list[str]) -> None:
    """Raise ValueError when `reference` does not fit a column of type `kind`.

    `levels` are the column's categories as text (booleans: "false", "true").
    """
    if kind == "numeric" and reference.frequencies is not None:
        raise ValueError(
            f"numeric column {column!r}: reference takes mean and std, not frequencies"
        )
    if kind in ("categorical", "boolean"):
        if reference.frequencies is None:
            raise ValueError(f"{kind} column {column!r}: reference takes frequencies, not mean/std")
        unknown = sorted(set(reference.frequencies) - set(levels))
        if unknown:
            raise ValueError(
                f"column {column!r}: reference frequencies name values that are not its "
                f"categories: {unknown} (categories: {levels})"
            )
    if kind == "identifier":
        raise ValueError(f"identifier column {column!r} cannot have reference statistics")
