"""Vertical test data: a bank and a bureau over overlapping customer ids, and the same model
trained in one process over the in-process relay (the reference a relayed run must equal)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from silos.vertical import he, secureboost
from silos.vertical.active import ActiveParty
from silos.vertical.agent_role import load_party_data
from silos.vertical.channel import channels
from silos.vertical.logreg import LrActive, LrParams, LrPassive
from silos.vertical.passive import PassiveParty
from silos.vertical.trees import BoostParams
from silos.vertical.wire import LocalWire

PARAMS = BoostParams(n_trees=2, max_depth=3, n_bins=16)


def tables(root: Path, n: int = 320, seed: int = 7, n_new: int = 60) -> dict[str, Path]:
    """A bank (label + 3 columns) and a bureau (4 columns) over overlapping customer ids, and
    each party's columns of `n_new` new customers to predict (the bank's with the label)."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"c{k:05d}" for k in rng.permutation(10_000)[: n + n_new]])
    n += n_new
    x = rng.normal(size=(n, 7))
    y = (x[:, 0] + x[:, 4] - 0.5 * x[:, 5] + rng.normal(scale=0.5, size=n) > 0).astype(int)
    bank = pd.DataFrame({"id": ids, "y": y, **{f"b{k}": x[:, k] for k in range(3)}})
    bureau = pd.DataFrame({"id": ids, **{f"u{k}": x[:, 3 + k] for k in range(4)}})
    paths = {}
    for name, df, drop in (("bank", bank, 20), ("bureau", bureau, 30)):
        old, new = df.iloc[: n - n_new], df.iloc[n - n_new :]
        keep = old.drop(index=rng.choice(n - n_new, drop, replace=False))
        paths[name] = root / f"{name}.csv"
        keep.sample(frac=1, random_state=seed).to_csv(paths[name], index=False)
        paths[f"{name}-new"] = root / f"{name}-new.csv"
        new.iloc[: n_new - (5 if name == "bureau" else 0)].to_csv(paths[f"{name}-new"], index=False)
    return paths


def reference(
    paths: dict[str, Path], params: BoostParams = PARAMS
) -> tuple[np.ndarray, list, pd.DataFrame]:
    """The same model in one process over the in-process relay."""
    bank = load_party_data(paths["bank"], "id", "y")
    bureau = load_party_data(paths["bureau"], "id", None)
    common = sorted(set(bank.ids) & set(bureau.ids))
    rb = [bank.ids.index(i) for i in common]
    ru = [bureau.ids.index(i) for i in common]
    assert bank.y is not None
    active = ActiveParty(
        "bank", "ref", bank.X[rb], bank.y[rb], {"bureau": 4}, params, he.generate_keypair()
    )
    passives = {"bureau": PassiveParty("bureau", "ref", bureau.X[ru], params=params)}
    wire = LocalWire(channels("ref", ["bank", "bureau"]))
    trees = secureboost.train(active, passives, wire)
    proba = secureboost.predict_proba(active, passives, wire, bank.X[rb], {"bureau": bureau.X[ru]})
    new_b = load_party_data(paths["bank-new"], "id", None, ("y",))
    new_u = load_party_data(paths["bureau-new"], "id", None)
    both = sorted(set(new_b.ids) & set(new_u.ids))
    xb = new_b.X[[new_b.ids.index(i) for i in both]]
    xu = new_u.X[[new_u.ids.index(i) for i in both]]
    p_new = secureboost.predict_proba(active, passives, wire, xb, {"bureau": xu})
    return proba, trees, pd.DataFrame({"id": both, "proba": p_new})


def lr_reference(
    paths: dict[str, Path], params: LrParams, w0: list[float]
) -> tuple[np.ndarray, pd.DataFrame]:
    """Vertical logistic regression in one process over the in-process relay, from the
    active party's starting weights `w0` (its half's `initial_weights`): P(y=1) of the
    aligned rows and of the new customers both parties hold."""
    bank = load_party_data(paths["bank"], "id", "y")
    bureau = load_party_data(paths["bureau"], "id", None)
    common = sorted(set(bank.ids) & set(bureau.ids))
    xb = bank.X[[bank.ids.index(i) for i in common]]
    xu = bureau.X[[bureau.ids.index(i) for i in common]]
    assert bank.y is not None
    y = bank.y[[bank.ids.index(i) for i in common]]
    active = LrActive(
        "bank", "ref", xb, y, "bureau", 4, params, he.generate_keypair(), w0=np.asarray(w0)
    )
    passive = LrPassive("bureau", "ref", xu, params=params, keys=he.generate_keypair())
    send = secureboost.request_reply(
        LocalWire(channels("ref", ["bank", "bureau"])), {"bureau": passive}
    )
    active.fit(send)
    passive.set_predict_rows(xu)
    proba = 1.0 / (1.0 + np.exp(-active.predict_margin(xb, send)))
    new_b = load_party_data(paths["bank-new"], "id", None, ("y",))
    new_u = load_party_data(paths["bureau-new"], "id", None)
    both = sorted(set(new_b.ids) & set(new_u.ids))
    passive.set_predict_rows(new_u.X[[new_u.ids.index(i) for i in both]])
    margin = active.predict_margin(new_b.X[[new_b.ids.index(i) for i in both]], send)
    return proba, pd.DataFrame({"id": both, "proba": 1.0 / (1.0 + np.exp(-margin))})


def cols(prefix: str, n: int) -> str:
    return "".join(f'[[columns]]\nname = "{prefix}{k}"\n' for k in range(n))
