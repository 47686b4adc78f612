"""A silo's part in one vertical run, over the service relay: `python -m silos.vertical.agent_role`.

The silo agent runs these steps itself when a vertical run names its silo
(silos/vertical/agent_flow.py); started alone, per run, this module is the operator's and
the tests' way to take part without an agent (`fedsilo silo vertical`). Steps, for every
party: open the channel (fresh X25519 key, peers' keys through the relay), private set
intersection on the id column (silos/vertical/psi.py, message-driven so the
parties need no lockstep), report the intersection's size and hash, align the rows on it.
Then the active party (labels) drives SecureBoost (silos/vertical/active.py), reporting each
tree's lineage (who split which node at what depth), or logistic regression
(silos/vertical/logreg.py, two parties), reporting each epoch; it predicts the aligned rows
jointly, writes its half of the model and reports the end with the model's digest. A passive
party answers its messages (silos/vertical/passive.py or logreg.py) until the run is over,
then writes its half (the thresholds, or its weights and scaling). Any refusal (a tampered
envelope, a wrong key, a malformed message) is reported as the run's failure naming the
party, and the process exits 1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from schemas.canonical import canonical_json
from schemas.vertical import (
    EpochDone,
    Features,
    LineageNode,
    PsiDone,
    PsiPoints,
    RunDone,
    RunFailed,
    TreeDone,
    VerticalEvent,
    VerticalMessage,
    VerticalParams,
)
from schemas.vertical_contract import VerticalContract, check_table, load_vertical_contract
from silos.client import SiloClient
from silos.data import load_table
from silos.exceptions import DataError
from silos.keys import load_or_create_key
from silos.vertical import he
from silos.vertical.active import ActiveParty, Send
from silos.vertical.http_wire import HttpWire, RunOver, base, open_channel, run_info
from silos.vertical.logreg import LrActive, LrParams, LrPassive
from silos.vertical.passive import PassiveParty
from silos.vertical.psi import Mode, PsiError, PsiParty, PsiResult, check_parties
from silos.vertical.trees import BoostParams, Tree


class RoleError(ValueError):
    """The party's data or the run's state does not allow it to take part; says why."""


@dataclass(frozen=True)
class PartyData:
    ids: list[str]
    X: np.ndarray
    columns: list[str]
    y: np.ndarray | None


def _read(path: Path) -> pd.DataFrame:
    """The table as a horizontal silo reads it (`silos.data.load_table`): a missing, empty,
    non-UTF-8 or ';'-delimited file, or a column named twice, refused naming the file."""
    try:
        return load_table(path)
    except DataError as exc:
        raise RoleError(str(exc)) from exc


def load_party_data(
    path: Path, id_column: str, label: str | None, ignore: tuple[str, ...] = ()
) -> PartyData:
    """The party's table: an id column, numeric features, and the label for the active party
    (`ignore`: columns that are not features, e.g. the label in rows to predict)."""
    df = _read(path).drop(columns=list(ignore), errors="ignore")
    need = [id_column] + ([label] if label else [])
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise RoleError(f"{path}: missing column(s) {missing}; it has {list(df.columns)}")
    features = [c for c in df.columns if c not in need]
    bad = [c for c in features if not pd.api.types.is_numeric_dtype(df[c])]
    if bad or not features:
        raise RoleError(f"{path}: feature columns must be numeric and present; not numeric: {bad}")
    if df[features].isna().any().any():
        raise RoleError(
            f"{path}: missing values in {df[features].columns[df[features].isna().any()].tolist()}"
        )
    y = None
    if label:
        y = df[label].to_numpy()
        if not np.isin(y, (0, 1)).all():
            raise RoleError(f"{path}: label column {label!r} must hold 0/1 only")
    ids = df[id_column].astype(str).tolist()
    return PartyData(ids, df[features].to_numpy(np.float64), features, y)


def load_checked(path: Path, contract: VerticalContract, predict: bool = False) -> PartyData:
    """The party's table checked against its own contract (every problem listed, naming the
    file and column); the features in the contract's order. `predict`: rows to predict, so
    no label (one in the file is dropped) and no row minimum."""
    df = _read(path)
    if predict:
        df = df.drop(columns=[contract.label] if contract.label else [], errors="ignore")
        contract = contract.model_copy(update={"label": None, "min_rows": 1})
    problems = check_table(df, contract, str(path))
    if problems:
        raise RoleError(
            f"{len(problems)} problem(s) with contract {contract.name} {contract.version}: "
            + "; ".join(problems[:10])
        )
    y = df[contract.label].to_numpy() if contract.label else None
    X = df[contract.features].to_numpy(np.float64)
    return PartyData(df[contract.id_column].astype(str).tolist(), X, contract.features, y)


def psi_over_wire(
    wire: HttpWire, parties: list[str], ids: list[str], mode: Mode = "intersection"
) -> PsiResult:
    """ECDH-PSI as `psi.run_psi` orders it, driven by whatever message arrives next: a
    blinded list of `owner` visits the other parties in order, back to its owner, who
    publishes it; each party intersects once every other party's final list is in (in
    "size" mode it only counts). A party whose loop ended has sent everything the others
    need: every list visits it before its owner publishes it.

    Each owner's list is raised once, and only from the hop before this party (its owner
    for the first hop); a final list only from its owner, once, after its list visited
    this party. Anything else is refused naming its sender: a peer that could have lists
    raised at will (one id per list) would learn which of its chosen ids this party holds,
    even in size mode."""
    me = wire.channel.party
    check_parties(wire.run, parties, mode)
    salt = hashlib.sha256(b"fedsilo psi salt|" + wire.run.encode()).digest()
    psi = PsiParty(me, ids, wire.run, salt, mode)
    others = [p for p in parties if p != me]
    wire.send(others[0], psi.blinded())
    raised: set[str] = set()  # owners whose list this party raised to its scalar
    finals: dict[str, PsiPoints] = {}
    published = False
    while not published or len(finals) < len(others):
        msg = wire.receive()
        if not isinstance(msg, PsiPoints):
            raise RoleError(f"party {me!r} expected PSI points from {msg.sender!r}, got {msg.kind}")
        who, owner = msg.sender, msg.owner
        if owner not in parties:
            raise _refused(me, msg, f"{owner!r} is not a party of run {wire.run}")
        if msg.stage == "final":
            if who != owner:
                raise _refused(me, msg, "only its owner publishes a final list")
            if owner in finals:
                raise _refused(me, msg, "a second final list")
            if owner not in raised:
                raise _refused(me, msg, "published before it visited this party")
            finals[owner] = msg
        elif owner == me:
            if who != others[-1]:
                raise _refused(me, msg, f"its last hop is {others[-1]!r}")
            if published:
                raise _refused(me, msg, "its own list came back a second time")
            final = psi.publish(msg)
            for peer in others:
                wire.send(peer, final)
            published = True
        else:
            chain = [p for p in parties if p != owner]
            k = chain.index(me)
            prev = chain[k - 1] if k else owner
            if who != prev:
                raise _refused(me, msg, f"its hop before this party is {prev!r}")
            if owner in raised:
                raise _refused(me, msg, "a second list of the same owner")
            raised.add(owner)
            last = k == len(chain) - 1
            wire.send(owner if last else chain[k + 1], psi.exponentiate(msg, last))
    return psi.intersect([finals[p] for p in others])


def _refused(me: str, msg: PsiPoints, why: str) -> PsiError:
    return PsiError(
        f"party {me!r} refused a {msg.stage} PSI list of {msg.owner!r} from party "
        f"{msg.sender!r}: {why}"
    )


def require_common(run: str, me: str, result: PsiResult) -> None:
    """Zero aligned rows can neither train nor predict (the binning of no rows fails deep
    in the trees): stop right after PSI with the reason."""
    if result.size == 0:
        raise RoleError(
            f"run {run}: no customer in common: the parties' intersection is empty (size 0), "
            f"so party {me!r} has no row to train or predict"
        )


def align(data: PartyData, result: PsiResult) -> tuple[np.ndarray, np.ndarray | None]:
    pos = {ident: k for k, ident in enumerate(data.ids)}
    rows = np.array([pos[i] for i in result.ids or []], dtype=np.int64)
    return data.X[rows], (data.y[rows] if data.y is not None else None)


def depths(tree: Tree) -> dict[int, int]:
    out, todo = {0: 0}, deque([0])
    while todo:
        nid = todo.popleft()
        node = tree.nodes[nid]
        if not node.is_leaf:
            for child in (node.left, node.right):
                out[child] = out[nid] + 1
                todo.append(child)
    return out


def lineage(t: int, tree: Tree) -> TreeDone:
    d = depths(tree)
    nodes = [
        LineageNode(node=k, party=n.owner or "", depth=d[k])
        for k, n in sorted(tree.nodes.items())
        if not n.is_leaf
    ]
    return TreeDone(tree=t, nodes=nodes, leaves=len(tree.nodes) - len(nodes))


def active_model(party: ActiveParty) -> dict[str, object]:
    """The active half: tree structure, leaf weights, own cuts; passive nodes are records."""
    return {
        "party": party.name,
        "eta": party.params.eta,
        "cuts": [c.tolist() for c in party.cuts],
        "trees": [{str(k): vars(n) for k, n in sorted(t.nodes.items())} for t in party.trees],
    }


def report(client: SiloClient, run: str, event: object) -> None:
    body = VerticalEvent.model_validate({"event": event}).model_dump_json().encode()
    client.request("POST", base(run) + "/events", body=body, content_type="application/json")


def report_failed_part(client: SiloClient, run: str, what: str, exc: Exception) -> int:
    """End `run` for every party, naming this silo and why (the command-line roles' refusal
    path); returns the exit status."""
    report(client, run, RunFailed(reason=f"{type(exc).__name__}: {exc}"[:2000]))
    print(f"{what} {run}: silo {client.silo!r} failed: {exc}", file=sys.stderr)
    return 1


def passive_features(wire: HttpWire, parties: list[str]) -> dict[str, int]:
    """Each passive party's feature count, the first message it sends after PSI."""
    counts: dict[str, int] = {}
    for peer in [p for p in parties if p != wire.channel.party]:
        msg = wire.receive(peer)
        if not isinstance(msg, Features):
            raise RoleError(f"party {peer!r} sent {msg.kind} before its feature count")
        counts[peer] = msg.count
    return counts


def finish_active(
    wire: HttpWire,
    margin: Callable[[np.ndarray], np.ndarray],
    X: np.ndarray,
    out: Path,
    model: dict[str, object],
    progress: tuple[int, int],
    predict: PartyData | None,
) -> np.ndarray:
    """The active party's end of a training run: joint prediction of the aligned rows (and
    of `predict`'s, aligned by PSI first), its model half on disk, the run's end reported
    with the half's digest and `progress` (its trees and epochs). `margin` scores rows aligned
    with the passive parties'."""
    proba = 1.0 / (1.0 + np.exp(-margin(X)))
    if predict is not None:
        found = psi_over_wire(wire, run_info(wire.client, wire.run).parties, predict.ids)
        Xp, _ = align(predict, found)
        p = 1.0 / (1.0 + np.exp(-margin(Xp)))
        pd.DataFrame({"id": found.ids, "proba": p}).to_csv(out / "predict.csv", index=False)
    text = canonical_json(model)
    (out / "model-active.json").write_text(text, encoding="utf-8")
    np.save(out / "predictions.npy", proba)
    digest = hashlib.sha256(text.encode()).hexdigest()
    trees, epochs = progress
    report(wire.client, wire.run, RunDone(trees=trees, epochs=epochs, model_digest=digest))
    return proba


def sender(wire: HttpWire) -> Send:
    def send(sender: str, recipient: str, message: object) -> VerticalMessage:
        return wire.request(recipient, message)  # type: ignore[arg-type]

    return send


def run_active(
    wire: HttpWire,
    params: BoostParams,
    X: np.ndarray,
    y: np.ndarray,
    out: Path,
    key_bits: int,
    predict: PartyData | None = None,
) -> np.ndarray:
    passives = passive_features(wire, run_info(wire.client, wire.run).parties)
    party = ActiveParty(
        wire.channel.party, wire.run, X, y, passives, params, he.generate_keypair(key_bits)
    )
    send = sender(wire)
    party.send_key(send)
    for t in range(params.n_trees):
        party.trees.append(party.fit_tree(send))
        report(wire.client, wire.run, lineage(t, party.trees[-1]))
    margin = partial(party.predict_margin, send=send)
    done = (len(party.trees), 0)
    return finish_active(wire, margin, X, out, active_model(party), done, predict)


def run_active_lr(
    wire: HttpWire,
    params: LrParams,
    X: np.ndarray,
    y: np.ndarray,
    out: Path,
    key_bits: int,
    predict: PartyData | None = None,
) -> np.ndarray:
    """Vertical logistic regression's active party (silos/vertical/logreg.py): one passive
    party; an epoch's steps and rows are reported as it ends."""
    passives = passive_features(wire, run_info(wire.client, wire.run).parties)
    if len(passives) != 1:
        raise RoleError(
            f"vertical logistic regression takes one passive party; run {wire.run} has "
            f"{len(passives)}"
        )
    ((peer, count),) = passives.items()
    keys = he.generate_keypair(key_bits)
    party = LrActive(wire.channel.party, wire.run, X, y, peer, count, params, keys, key_bits)
    send = sender(wire)
    steps = [0]

    def epoch_done(epoch: int) -> None:
        event = EpochDone(epoch=epoch, steps=party.steps - steps[0], rows=len(y))
        steps[0] = party.steps
        report(wire.client, wire.run, event)

    party.fit(send, on_epoch=epoch_done)
    done = (0, params.epochs)
    margin = partial(party.predict_margin, send=send)
    return finish_active(wire, margin, X, out, party.half.to_dict(party.name), done, predict)


def run_passive(
    wire: HttpWire,
    party: PassiveParty | LrPassive,
    out: Path,
    active: str,
    predict: PartyData | None = None,
) -> None:
    """Answer the active party's messages until the run is over, then keep this party's
    half: SecureBoost's records (thresholds) or logistic regression's weights."""
    # joint prediction of the aligned rows; each party answers it only after training
    party.set_predict_rows(party.X)
    wire.send(active, Features(run=wire.run, sender=party.name, count=party.X.shape[1]))
    while True:
        try:
            msg = wire.receive(active)
        except RunOver:
            break
        if isinstance(msg, PsiPoints):  # the active party aligns rows to predict
            if predict is None:
                raise RoleError(f"party {party.name!r} was given no rows to predict")
            wire.requeue(msg)
            found = psi_over_wire(wire, run_info(wire.client, wire.run).parties, predict.ids)
            party.set_predict_rows(align(predict, found)[0])
            continue
        wire.send(active, party.handle(msg))
    if isinstance(party, LrPassive):
        model: dict[str, object] = party.half.to_dict(party.name)
    else:
        model = {"records": {str(r): [f, thr] for r, (f, thr) in party.records.items()}}
    (out / "model-passive.json").write_text(canonical_json(model), encoding="utf-8")


@dataclass
class Joined:
    """A party that took its keys and intersected: its channel and its aligned rows."""

    wire: HttpWire
    active: str
    X: np.ndarray
    y: np.ndarray | None

    @property
    def is_active(self) -> bool:
        return self.active == self.wire.channel.party


def count_common(client: SiloClient, run: str, ids: list[str]) -> int:
    """A size-only run: give this party's key, count the ids every party holds without
    learning which, and report the count (the service ends the run once all did)."""
    info = run_info(client, run)
    wire = HttpWire(client, open_channel(client, run))
    result = psi_over_wire(wire, info.parties, ids, mode="size")
    report(client, run, PsiDone(size=result.size))
    return result.size


def join(client: SiloClient, run: str, data: PartyData) -> Joined:
    """Give this party's key for `run`, intersect the ids with every party's, report the
    intersection's size and hash, and align the rows on it."""
    info = run_info(client, run)
    if info.active == client.silo and data.y is None:
        raise RoleError(f"silo {client.silo!r} is the active party of run {run} but has no label")
    wire = HttpWire(client, open_channel(client, run))
    result = psi_over_wire(wire, info.parties, data.ids)
    require_common(run, client.silo, result)
    report(client, run, PsiDone(size=result.size, digest=result.digest))
    X, y = align(data, result)
    return Joined(wire, info.active, X, y)


def train(
    joined: Joined,
    params: BoostParams | LrParams,
    out: Path,
    key_bits: int = he.KEY_BITS,
    predict: PartyData | None = None,
) -> str:
    """SecureBoost or logistic regression (by `params`) from the aligned rows, then joint
    prediction of `predict`, if given; the model half and the traffic figures land in
    `out`. Returns the party's role."""
    out.mkdir(parents=True, exist_ok=True)
    wire, me = joined.wire, joined.wire.channel.party
    if joined.is_active:
        assert joined.y is not None
        if isinstance(params, LrParams):
            run_active_lr(wire, params, joined.X, joined.y, out, key_bits, predict)
        else:
            run_active(wire, params, joined.X, joined.y, out, key_bits, predict)
    else:
        party: PassiveParty | LrPassive
        if isinstance(params, LrParams):
            keys = he.generate_keypair(key_bits)
            party = LrPassive(me, wire.run, joined.X, joined.active, params, keys, key_bits)
        else:
            # the run's trees, depth and min_child_weight bound what it answers
            party = PassiveParty(me, wire.run, joined.X, params=params)
        run_passive(wire, party, out, joined.active, predict)
    (out / "traffic.json").write_text(
        json.dumps({"sent": dict(wire.bytes_sent), "received": dict(wire.bytes_received)})
    )
    return "active" if joined.is_active else "passive"


def model_params(p: VerticalParams) -> BoostParams | LrParams:
    """The trainer's parameters from the run's (what the coordinator asked for)."""
    if p.model == "logreg":
        return LrParams(
            epochs=p.epochs, batch_rows=p.batch_rows, learning_rate=p.learning_rate, l2=p.l2
        )
    return BoostParams(n_trees=p.trees, max_depth=p.depth, n_bins=p.bins)


def take_part(
    client: SiloClient,
    run: str,
    data: PartyData,
    params: BoostParams | LrParams,
    out: Path,
    key_bits: int = he.KEY_BITS,
    predict: PartyData | None = None,
) -> str:
    """This silo's whole part in `run`; returns its role."""
    return train(join(client, run, data), params, out, key_bits, predict)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m silos.vertical.agent_role", description=__doc__)
    ap.add_argument("--service", required=True)
    ap.add_argument("--federation", required=True)
    ap.add_argument("--silo", required=True)
    ap.add_argument("--key", required=True, type=Path, help="the silo's Ed25519 key file")
    ap.add_argument("--run", required=True)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--id-column", default="id")
    ap.add_argument("--label", default=None)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument(
        "--contract",
        help="this party's vertical data contract (a name in schemas/contracts/vertical or a "
        "path); it names the id column, the label and the features",
    )
    ap.add_argument("--predict-data", type=Path, help="rows to predict jointly after training")
    a = ap.parse_args(argv)
    client = SiloClient(
        a.service, federation=a.federation, silo=a.silo, key=load_or_create_key(a.key)
    )
    try:
        # the run's hyperparameters, as the agent takes them: the ones its record and the
        # ledger show (every party trains with the same ones)
        params = model_params(run_info(client, a.run).params)
        predict = None
        if a.contract:
            contract = load_vertical_contract(a.contract)
            data = load_checked(a.data, contract)
            if a.predict_data:
                predict = load_checked(a.predict_data, contract, predict=True)
        else:
            data = load_party_data(a.data, a.id_column, a.label)
            if a.predict_data:
                drop = (a.label,) if a.label else ()
                predict = load_party_data(a.predict_data, a.id_column, None, drop)
        role = take_part(client, a.run, data, params, a.out, predict=predict)
    except Exception as exc:  # any refusal ends the run, naming this party and why
        return report_failed_part(client, a.run, "vertical run", exc)
    print(f"vertical run {a.run}: silo {a.silo!r} done as the {role} party")
    return 0


if __name__ == "__main__":
    sys.exit(main())
