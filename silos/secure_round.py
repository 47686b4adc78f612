"""The silo's half of secure aggregation in a training round.

Stage by stage (each a task the service hands out): advertise two fresh X25519 keys, share
Shamir shares of the self-mask seed and the mask key with the neighbours, send the masked,
quantized, weighted update, and reveal the shares the service needs to unmask the sum. The
client state (including this round's private keys) is saved in the silo's workspace with 0600
permissions after each stage, so a restarted agent carries on where it stopped; each sent
message is kept too, so a retry after a lost answer resends the same bytes. A round whose
protocol the service started again (a hub restored from a backup taken mid-round) asks for the
silo's keys once more: a silo that had gone past its advert then erases the round's state and
takes part with new keys, seeds and masks (`advertise`); under DP its new masked update is a
second release, and counts as one (`silos.privacy.record_round`).

That state is erased (`erase_round_state`, `erase_run_state`) as soon as it can no longer be
used: when the round's unmask stage is sent, when a later round of the run starts, when the
run ends (completed, failed or cancelled) and when the silo's part of the run fails.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.secagg.config import RoundConfig
from schemas.secagg.exceptions import MessageFormatError
from schemas.secagg.messages import AdvertiseKeys, EncryptedShare, UnmaskRequest
from schemas.secagg.quantize import Quantizer
from schemas.tasks import (
    DistillTask,
    EnsembleWeightsTask,
    SecAggAdvertiseTask,
    SecAggBufferedTask,
    SecAggConsistencyTask,
    SecAggMaskedTask,
    SecAggShareTask,
    SecAggUnmaskTask,
    StatisticsTask,
)
from silos import buffered_update
from silos.client import SiloClient
from silos.client_errors import AlreadyAnswered
from silos.files import erase, private_dir, write_private
from silos.secagg import client as secagg
from silos.secagg.client_store import dump_state, load_state

SecAggTask = (
    SecAggAdvertiseTask
    | SecAggShareTask
    | SecAggMaskedTask
    | StatisticsTask
    | DistillTask
    | EnsembleWeightsTask
    | SecAggConsistencyTask
    | SecAggUnmaskTask
)
"""The tasks of a secure-aggregation round: each carries the round's `SecAggInfo`."""


def round_config(work: SecAggTask) -> RoundConfig:
    info = work.secagg
    return RoundConfig(
        run_id=work.run_id,
        round_num=work.round,
        silos=tuple(info.roster),
        threshold=info.threshold,
        dim=info.dim,
        bits=info.bits,
        degree=info.degree,
        consistency_check=info.consistency_check,
    )


STATE_DIR = "secagg"
_STATE_FILE = re.compile(r"^(?P<run>.+)-r(?P<round>[0-9]+)\.")


def _paths(workspace: Path, work: SecAggTask) -> Path:
    folder = private_dir(workspace / STATE_DIR)
    return folder / f"{work.run_id}-r{work.round}"


def _state_files(workspace: Path, run_id: str) -> list[tuple[Path, int]]:
    """(file, round) for every saved state or message of `run_id` in the workspace."""
    folder = workspace / STATE_DIR
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _STATE_FILE.match(path.name)
        if match and match["run"] == run_id:
            found.append((path, int(match["round"])))
    return found


def erase_round_state(workspace: Path, run_id: str, round_num: int) -> int:
    """Delete round `round_num`'s secure-aggregation state and messages; returns how many.

    The state holds the round's X25519 private keys, the self-mask seed and the shares held
    for the other silos: nobody needs it once the round is over at this silo.
    """
    return sum(erase(p) for p, r in _state_files(workspace, run_id) if r == round_num)


def erase_run_state(workspace: Path, run_id: str, before_round: int | None = None) -> int:
    """Delete the state of every round of `run_id` (only those before `before_round` if given).

    Returns how many files were deleted. Without `before_round` (the run ended, or the
    silo's part of it failed) the update kept for an asynchronous buffer goes too.
    """
    kept = int(buffered_update.forget(workspace, run_id)) if before_round is None else 0
    return kept + sum(
        erase(p)
        for p, r in _state_files(workspace, run_id)
        if before_round is None or r < before_round
    )


def _send_once(
    client: SiloClient,
    work: SecAggTask,
    base: Path,
    stage: str,
    build: Callable[[], bytes],
    n_examples: int | None = None,
) -> None:
    """Build and send a stage's message once; a resend after a lost answer repeats its bytes."""
    sent = base.with_suffix(f".{stage}.msg")
    raw = sent.read_bytes() if sent.exists() else build()
    write_private(sent, raw)
    try:
        client.secagg_post(work.run_id, work.round, stage, raw, n_examples=n_examples)
    except AlreadyAnswered:
        pass  # our earlier attempt did arrive: the first message stands


_ADVERTISED = (".state", ".advertise.msg")


def _past_advertise(workspace: Path, work: SecAggTask, key: Ed25519PrivateKey) -> bool:
    """Whether this silo holds state of the task's round from past its advertise stage: a
    later stage's message (or the masked update's bookkeeping), or client state that moved on.

    Within one instance of a round's protocol the service never asks for a silo's keys again
    once it holds them, and it holds them before any later stage starts; so an advertise task
    with such state here means the round's protocol started again (a restored hub). A saved
    advert alone is resent as is (`_send_once`): the service may hold it already (a lost
    answer), and keys whose only use was that advert reveal nothing when reused."""
    base = _paths(workspace, work)
    for path, round_num in _state_files(workspace, work.run_id):
        if round_num == work.round and path.name.removeprefix(base.name) not in _ADVERTISED:
            return True
    state_file = base.with_suffix(".state")
    if not state_file.exists():
        return False
    try:
        return load_state(state_file.read_bytes(), key).stage != "share"
    except Exception:  # unreadable: it cannot be carried on anyway
        return True


def advertise(
    client: SiloClient,
    key: Ed25519PrivateKey,
    work: SecAggTask,
    workspace: Path,
    n_examples: int,
) -> None:
    base = _paths(workspace, work)
    erase_run_state(workspace, work.run_id, before_round=work.round)  # rounds it dropped out of
    if _past_advertise(workspace, work, key):
        # the service asks for this round's keys again although this silo went on past them:
        # its protocol was started again (a hub restored from a backup taken mid-round,
        # `aggregation.backup.restore`). Nothing of the earlier instance may be reused: its
        # keys and seeds are known to shares the service holds, its masks to messages it saw.
        erase_round_state(workspace, work.run_id, work.round)
    keys = {s: bytes.fromhex(h) for s, h in work.secagg.roster_keys.items()}

    def build() -> bytes:
        config = round_config(work)
        state, advert = secagg.advertise_keys(config, client.silo, key, keys, n_examples)
        write_private(base.with_suffix(".state"), dump_state(state))
        return advert.to_bytes()

    _send_once(client, work, base, "advertise", build, n_examples=n_examples)


def share(client: SiloClient, key: Ed25519PrivateKey, work: SecAggTask, workspace: Path) -> None:
    base = _paths(workspace, work)

    def build() -> bytes:
        state = load_state(base.with_suffix(".state").read_bytes(), key)
        raw = client.secagg_get(work.run_id, work.round, "adverts")
        msg = secagg.share_keys(state, [AdvertiseKeys.from_bytes(m) for m in raw])
        write_private(base.with_suffix(".state"), dump_state(state))
        return msg.to_bytes()

    _send_once(client, work, base, "share", build)


def weight_refusal(key: Ed25519PrivateKey, work: SecAggMaskedTask, workspace: Path) -> str | None:
    """Why this silo will not apply the weight the service sent for its masked update, or None.

    The service chooses each silo's weight, and the silo scales its update by it before
    masking: weights of 1e-12 to every silo but one would make the unmasked sum that one
    silo's update. A weight must lie in (0, 1]. With the complete graph this silo verified
    every advert of the round in the share stage (the m silos that advertised), each with the
    row count its silo signed (`AdvertiseKeys.counted`), so it checks its weight exactly: 1/m
    under DP, n_k / N (N: the signed counts' sum) otherwise. In a SecAgg+ graph it saw only
    its neighbours' adverts, so under DP it checks 1/n <= w <= 1/2 for the roster's n, and
    otherwise only (0, 1]; so does an asynchronous buffer's update (its staleness weight) and
    a round with an advert from a silo too old to sign its count (README: threat model)."""
    info = work.secagg
    if info.weight is None:
        return None
    where = f"round {work.round} of run {work.run_id}"
    if not 0 < info.weight <= 1:
        return f"{where}: the service sent weight {info.weight!r}, outside (0, 1]"
    dp = work.spec.privacy is not None
    if info.degree is None and not isinstance(work, SecAggBufferedTask):
        state = load_state(_paths(workspace, work).with_suffix(".state").read_bytes(), key)
        return _checked_weight(where, info.weight, state.peers, state.silo, dp)
    if not dp:
        return None
    n = len(info.roster)
    if not 1 / n - 1e-12 <= info.weight <= 0.5 + 1e-12:
        return (
            f"{where}: under DP a weight is 1/m for the m silos that advertised keys, between "
            f"1/{n} and 1/2 for a roster of {n}, but the service sent {info.weight!r}"
        )
    return None


def _checked_weight(
    where: str, weight: float, peers: dict[str, AdvertiseKeys], silo: str, dp: bool
) -> str | None:
    """Why `weight` is not the one the verified adverts `peers` (this silo's among them)
    give, or None."""
    m = len(peers)
    if dp:
        want, why = 1 / m, f"under DP every silo's weight is 1/m for the m = {m} silos that "
        why += "advertised keys"
    else:
        counts = [a.n_examples for a in peers.values()]
        if any(n is None for n in counts):
            return None  # an advert from an older silo: its count is unsigned
        own = peers[silo].n_examples or 0
        total = sum(n or 0 for n in counts)
        want = own / total
        why = f"its weight is n_k / N = {own} / {total} by the {m} adverts' signed row counts"
    if abs(weight - want) > 1e-9 * max(want, 1e-300):
        return f"{where}: {why}, but the service sent {weight!r}"
    return None


def round_file(workspace: Path, work: SecAggTask, suffix: str) -> Path:
    """The workspace file `suffix` (".masked.msg", say) of the task's round: erased with the
    round's state."""
    return _paths(workspace, work).with_suffix(suffix)


def saved_masked(workspace: Path, work: SecAggTask) -> bytes | None:
    """The masked message this silo built for the task's round, if it built one: it is what
    a restarted agent sends, never a second one (`masked_update`)."""
    sent = round_file(workspace, work, ".masked.msg")
    return sent.read_bytes() if sent.exists() else None


def masked_update(
    client: SiloClient,
    key: Ed25519PrivateKey,
    work: SecAggTask,
    workspace: Path,
    weighted_delta: np.ndarray,
) -> bytes:
    """Quantize and mask this silo's weighted delta (already clipped); returns the message.

    Once built, the round's message is saved durably and returned again as is: a restart must
    not mask a second update under the same masks (their difference would show the service
    the two updates' difference) nor release a second noised update under DP."""
    base = _paths(workspace, work)
    sent = base.with_suffix(".masked.msg")
    if sent.exists():
        return sent.read_bytes()
    info = work.secagg
    state = load_state(base.with_suffix(".state").read_bytes(), key)
    quantized = Quantizer(clip=info.clip, n_summands=len(info.roster), bits=info.bits).quantize(
        weighted_delta
    )
    raw = client.secagg_get(work.run_id, work.round, "shares")
    shares = [EncryptedShare.from_bytes(m) for m in raw]
    message = secagg.masked_input(state, shares, quantized).to_bytes()
    write_private(base.with_suffix(".state"), dump_state(state), durable=True)
    write_private(sent, message, durable=True)  # a power cut must not lose it once it is sent
    return message


def consistency(
    client: SiloClient, key: Ed25519PrivateKey, work: SecAggConsistencyTask, workspace: Path
) -> None:
    """Sign the survivor list the service announced (once: the client state refuses a second
    list), so that this silo later unmasks for exactly that list and no other."""
    base = _paths(workspace, work)

    def build() -> bytes:
        state = load_state(base.with_suffix(".state").read_bytes(), key)
        message = secagg.sign_survivors(state, work.survivors)
        write_private(base.with_suffix(".state"), dump_state(state))
        return message.to_bytes()

    _send_once(client, work, base, "consistency", build)


def unmask(client: SiloClient, key: Ed25519PrivateKey, work: SecAggTask, workspace: Path) -> None:
    base = _paths(workspace, work)

    def build() -> bytes:
        state = load_state(base.with_suffix(".state").read_bytes(), key)
        frames = client.secagg_get(work.run_id, work.round, "unmask-request")
        if len(frames) != 1:
            raise MessageFormatError(
                f"the service sent {len(frames)} unmask requests; exactly one was expected",
                run_id=work.run_id,
                round_num=work.round,
                stage="unmask",
                silo=client.silo,
            )
        response = secagg.unmask(state, UnmaskRequest.from_bytes(frames[0]))
        write_private(base.with_suffix(".state"), dump_state(state))
        return response.to_bytes()

    _send_once(client, work, base, "unmask", build)
    erase_round_state(workspace, work.run_id, work.round)  # its private keys are no longer needed


def clip_l2(flat: np.ndarray, bound: float) -> np.ndarray:
    """Scale `flat` down to L2 norm `bound` if it is longer (per-silo update clipping)."""
    norm = float(np.linalg.norm(flat))
    return flat if norm <= bound else flat * (bound / norm)
