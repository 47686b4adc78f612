"""Vertical parties in threads of one process (an agent serving two runs, the tests' honest
runs) each compute with their own secrets: PSI's scalar, a Paillier key's tables and private
key, a passive party's histogram state. They used to be parked in module globals for the
in-process path, so a thread switch between parking and use gave one party another's scalar
(a three-party PSI over the wire then failed about once in a few hundred runs under load).
A tiny switch interval makes such a switch near certain."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from silos.vertical import he
from silos.vertical.active import ActiveParty, fit_plain
from silos.vertical.channel import channels
from silos.vertical.passive import PassiveParty
from silos.vertical.psi import POINT, PsiParty, hash_to_group, multiply
from silos.vertical.secureboost import train
from silos.vertical.trees import BoostParams
from silos.vertical.wire import LocalWire

SALT = b"thread-salt".ljust(32, b".")


@pytest.fixture(autouse=True)
def _switch_often() -> Iterator[None]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def _in_threads(work: Callable[[str], None], names: list[str]) -> None:
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            work(name)
        except BaseException as exc:  # the test re-raises it
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not any(t.is_alive() for t in threads)
    if errors:
        raise errors[0]


def test_psi_parties_in_threads_blind_with_their_own_scalar() -> None:
    def work(name: str) -> None:
        for _ in range(10):
            party = PsiParty(name, [f"{name}{i}" for i in range(40)], "r", SALT, workers=1)
            sent = party.blinded().points
            key = X25519PrivateKey.from_private_bytes(party._scalar)
            want = {multiply(key, hash_to_group(i, SALT)) for i in party.ids}
            assert {sent[k : k + POINT] for k in range(0, len(sent), POINT)} == want, name

    _in_threads(work, ["bank", "bureau", "insurer"])


def test_paillier_keys_in_threads_encrypt_and_decrypt_with_their_own_key() -> None:
    keys = {n: he.generate_keypair() for n in ["bank", "insurer"]}

    def work(name: str) -> None:
        plain = list(range(1, 300))
        for _ in range(3):
            cts = he.encrypt_many(keys[name], plain, workers=1)
            assert he.decrypt_many(keys[name], cts, workers=1) == plain, name

    _in_threads(work, list(keys))


def test_secureboost_runs_in_threads_each_equal_their_pooled_model() -> None:
    params = BoostParams(n_trees=2, max_depth=3, n_bins=8, eta=0.3)

    def work(name: str) -> None:
        rng = np.random.default_rng(len(name))
        X = rng.normal(size=(200, 5))
        y = ((X[:, 0] - X[:, 3] + 0.5 * rng.normal(size=200)) > 0).astype(float)
        run = f"threads-{name}"
        active = ActiveParty("bank", run, X[:, :2], y, {"bureau": 3}, params, he.generate_keypair())
        passive = PassiveParty("bureau", run, X[:, 2:], workers=1, params=params)
        train(active, {"bureau": passive}, LocalWire(channels(run, ["bank", "bureau"])))
        _, margin = fit_plain(np.concatenate([active.bins, passive.bins], 1), y, params)
        assert np.array_equal(active.margin, margin), name

    _in_threads(work, ["one", "three"])
