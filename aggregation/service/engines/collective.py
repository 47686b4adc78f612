"""Tree mode ``collective``: XGBoost's federated gRPC collective runs each training round.

The service process that opens the round starts the server (`collective_rounds`, mutual TLS)
after the opening transaction commits, and records where it listens and each silo's rank in
the round row; every silo joins as a worker and submits the trees it ended with, which must
agree (`tree_rounds`). Everything else is the tree engine's.
"""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from aggregation.service import collective_rounds
from aggregation.service.db import transaction
from aggregation.service.engines.base import AfterCommit, RoundContext
from aggregation.service.engines.trees import TreeEngine
from aggregation.service.rounds import active_silos, get_round


class CollectiveEngine(TreeEngine):
    """The tree engine plus the round's collective server (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__("collective")

    def start(self, ctx: RoundContext, deadline_s: float) -> AfterCommit | None:
        rnd = ctx.rnd
        if rnd.kind != "train" or rnd.roster_json is not None:
            return None
        run_id, number = rnd.run_id, rnd.number
        ranks = active_silos(ctx.s, run_id)
        settings = ctx.hub.settings

        def start_server(factory: sessionmaker[Session]) -> None:
            # outside the opening transaction: the server takes seconds to start
            where = collective_rounds.start(settings, run_id, number, ranks, deadline_s)
            with transaction(factory) as s:
                row = get_round(s, run_id, number, for_update=True)
                if row.roster_json is None:
                    row.roster_json = where
                else:  # a retried request already started one
                    collective_rounds.stop(run_id, number)

        return start_server
