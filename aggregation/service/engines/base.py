"""What every round engine offers (`RoundEngine`) and what its methods receive.

One engine per round mode (plain, secure, statistics, bagging, cyclic, collective,
secure-hist, and any a plugin registers; see `registry`). The service calls it at five
points of a round, always inside the database transaction that holds the round's row:

- `start`: the coordinator opened the round (a retried open calls it again: be idempotent);
- `task_for`: a silo polls; the engine's typed task for it, or None (nothing to do now);
- `receive`: a silo sent this mode's answer (`Answer`): check it completely, store it, and
  return the JSON the route answers with;
- `advance`: a silo left or sat out; move the round on when nobody is awaited any more
  (`force`: the deadline passed, whoever is silent is a dropout);
- `close`: the coordinator closes the round at its deadline: aggregate, or fail it saying why.

and reports progress: `awaited` names the silos the round's current stage still waits for
(a plugin engine without it gets `engines.common.awaited_default`: every active participant
that has not answered).

Engines raise `aggregation.service.exceptions` errors; they never see HTTP. All round state is
in the database: an engine object holds configuration only, so any service process (and a
restarted one) can serve any request.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from sqlalchemy.orm import Session, sessionmaker

from aggregation.service.lineage import Recorder
from aggregation.service.settings import ServiceSettings
from aggregation.service.tables import Round, Run
from schemas.specs import RunSpec
from schemas.tasks import Task


@dataclass(frozen=True)
class Hub:
    """What engines may use of the running service besides the database."""

    recorder: Recorder
    settings: ServiceSettings
    seal_key: X25519PrivateKey
    seal_public: bytes


@dataclass
class RoundContext:
    """One round of one run, inside the caller's transaction `s`."""

    s: Session
    run: Run
    rnd: Round
    spec: RunSpec
    hub: Hub

    @property
    def stats(self) -> list[float] | None:
        """The federation's summed feature moments, once its statistics round is done."""
        return json.loads(self.run.federation_stats) if self.run.federation_stats else None


@dataclass(frozen=True)
class Answer:
    """What a silo sent for this round's mode.

    `step` names what the route takes: ``update``, ``trees``, ``extension``,
    ``secagg/<stage>`` or ``hist/<stage>``; an engine refuses (Conflict) a step its mode does
    not take, so a message sent to another mode's route never reaches the wrong protocol.
    `body` is the raw request body, `params` the query parameters the route parsed, and
    `statement_signature` the silo's signed ledger statement header, where the step has one.
    """

    federation: str
    silo: str
    step: str
    body: bytes
    params: Mapping[str, object] = field(default_factory=dict)
    statement_signature: str | None = None


AfterCommit = Callable[[sessionmaker[Session]], None]
"""Work `start` leaves for after the opening transaction commits (e.g. starting a server
that takes seconds): it gets the session factory and opens its own transactions."""


class RoundEngine(Protocol):
    """The five steps of a round in one mode (see the module docstring)."""

    def start(self, ctx: RoundContext, deadline_s: float) -> AfterCommit | None: ...

    def task_for(self, ctx: RoundContext, silo: str) -> Task | None: ...

    def receive(self, ctx: RoundContext, answer: Answer) -> dict[str, object]: ...

    def advance(self, ctx: RoundContext, *, force: bool) -> None: ...

    def close(self, ctx: RoundContext) -> None: ...

    def awaited(self, ctx: RoundContext) -> set[str]: ...
