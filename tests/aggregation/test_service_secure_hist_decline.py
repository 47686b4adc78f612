"""A silo that declines in the middle of a secure-hist session: the session moves on without
it at once (no deadline), exactly as it does for a silo that fell silent at that level, and
the round's progress names only the silos the current stage awaits."""

from __future__ import annotations

from test_service_declines import decline
from test_service_secure_hist import Fed, expected, fed, train_round  # noqa: F401 (fixture)

from schemas.secure_hist.protocol import LevelRequest
from schemas.tasks import Task


def test_a_silo_declining_at_a_level_leaves_the_session_without_a_deadline(fed: Fed) -> None:  # noqa: F811
    seen: list[tuple[str | None, list[str]]] = []

    def c_declines(silo: str, task: Task) -> bool:
        level = task.hist.level if task.type == "hist" else None
        if silo != "c" or level is None:
            return False
        req = LevelRequest.from_json(level.encode())
        if (req.tree, req.depth) < (0, 1):
            return False
        if not seen:  # c's first task at tree 0, depth 1: it declines instead of answering
            out = fed.coord.wait_round(fed.run_id, 1, 0)
            seen.append((out.stage, out.awaited))
            decline(fed.silos["c"], fed.run_id, 1, cause="training", reason="out of memory")
        return True

    train_round(fed, 1, c_declines)  # no close_round: nobody waits for a deadline
    assert seen == [("masked", ["a", "b", "c"])]
    out = fed.coord.wait_round(fed.run_id, 1, 0)
    assert out.status == "aggregated", out
    states = {s.silo: s for s in out.silos}
    assert (states["c"].state, states["c"].cause) == ("declined", "training")
    assert states["a"].state == states["b"].state == "submitted"
    # the same trees as the driver's run in which c drops out at that level
    assert fed.coord.download_model(fed.run_id, 1) == expected(2, drop_at={"c": (0, 1)})
    assert fed.silos["c"].next_task(wait_s=0, run_id=fed.run_id).type == "run_ended"  # type: ignore[union-attr]


def test_a_session_too_few_silos_joined_names_why_the_others_sat_out(fed: Fed) -> None:  # noqa: F811
    """Two of three silos decline the round before advertising: the session cannot start, and
    the round's reason says why they sat out, not only that too few keys came."""

    def b_and_c_decline(silo: str, task: Task) -> bool:
        if silo == "a":
            return False
        decline(fed.silos[silo], fed.run_id, 1, cause="policy", reason=f"{silo} allows bagging")
        return True

    train_round(fed, 1, b_and_c_decline)
    out = fed.coord.wait_round(fed.run_id, 1, 0)
    if out.status == "open":  # a stage waits for its deadline: close it as the service would
        fed.coord.close_round(fed.run_id, 1)
        out = fed.coord.wait_round(fed.run_id, 1, 0)
    assert out.status == "failed" and out.reason, out
    assert out.reason.startswith("secure-hist: ")
    assert "sat out: " in out.reason and "b allows bagging" in out.reason
    assert "c allows bagging" in out.reason
