"""Which kind of model each silo trains, in the runs where every silo trains its own
(FedDistill, `schemas.distill`; FedBoost ensembles, `schemas.ensemble`): a ``default`` kind and
per-silo overrides, e.g. ``{"default": "logreg", "cleveland": "xgboost"}``."""

from __future__ import annotations

import re
from typing import Literal

MemberKind = Literal["logreg", "mlp", "xgboost", "lightgbm"]
DEFAULT = "default"  # the key of a kinds map every silo not named there uses
# a silo name (schemas.wire.NAME_PATTERN, which imports the specs, so it is not imported here),
# or its display name with spaces ("VA Long Beach")
_SILO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\- ]{0,63}$")


def checked_kinds(kinds: dict[str, MemberKind], field: str, example: str) -> dict[str, MemberKind]:
    """`kinds` if every key is ``default`` or could be a silo name and ``default`` is there;
    ValueError naming `field` (e.g. ``distill.kinds``) and showing `example` if not."""
    bad = [k for k in kinds if k != DEFAULT and not _SILO_NAME.match(k)]
    if bad:
        raise ValueError(f"{field} names silos that cannot exist: {bad}")
    if DEFAULT not in kinds:
        raise ValueError(
            f'{field} needs a "default" kind for the silos it does not name, e.g. {example}'
        )
    return kinds


def kind_for(kinds: dict[str, MemberKind], silo: str) -> MemberKind:
    """The kind `silo` trains: its own entry, else the default."""
    return kinds.get(silo, kinds[DEFAULT])
