"""Which kind of model each silo trains, in the runs where every silo trains its own
(FedDistill, `schemas.distill`; FedBoost ensembles, `schemas.ensemble`): a ``default`` kind and
per-silo overrides, e.g. ``{"default": "logreg", "cleveland": "xgboost"}``.

A key is a silo's name exactly as it enrolled (``cleveland``, not the hospital's display name
"Cleveland"): the service refuses a run whose keys name no participant
(`aggregation.service.runs.create_run`), since such a silo would silently train the default.
"""

from __future__ import annotations

import re
from typing import Literal

MemberKind = Literal["logreg", "mlp", "xgboost", "lightgbm"]
DEFAULT = "default"  # the key of a kinds map every silo not named there uses
# schemas.wire.NAME_PATTERN, the rule every silo name follows (no spaces): wire imports the
# specs, which import this module, so it is repeated here (tests/schemas check they agree)
SILO_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
_SILO_NAME = re.compile(SILO_NAME_PATTERN)


def checked_kinds(kinds: dict[str, MemberKind], field: str, example: str) -> dict[str, MemberKind]:
    """`kinds` if every key is ``default`` or could be a silo name and ``default`` is there;
    ValueError naming `field` (e.g. ``distill.kinds``) and showing `example` if not."""
    bad = [k for k in kinds if k != DEFAULT and not _SILO_NAME.match(k)]
    if bad:
        raise ValueError(
            f"{field} names silos that cannot exist: {bad} (a key is a silo's enrolled name: "
            f"letters, digits, '_', '.', '-', no spaces), e.g. {example}"
        )
    if DEFAULT not in kinds:
        raise ValueError(
            f'{field} needs a "default" kind for the silos it does not name, e.g. {example}'
        )
    return kinds


def kind_for(kinds: dict[str, MemberKind], silo: str) -> MemberKind:
    """The kind `silo` trains: its own entry, else the default."""
    return kinds.get(silo, kinds[DEFAULT])


def unknown_silos(kinds: dict[str, MemberKind], silos: set[str]) -> list[str]:
    """The keys of `kinds` (``default`` aside) that name none of `silos`, sorted."""
    return sorted(k for k in kinds if k != DEFAULT and k not in silos)
