"""Vertical logistic regression: two parties, each with its own Paillier key, no third party.

The loss is the logistic loss's second-order Taylor expansion at 0 (Hardy et al. 2017, as in
FATE's hetero LR): with u = u_A + u_P the sum of the parties' partial scores X w, the residual
is d = u/4 + 1/2 - y, so 4d = u_P + e where e = u_A + 2 - 4y is known to the active party
(it holds the labels) and u_P to the passive party. One mini-batch step:

1. `LrBatch`: the active party names the batch's rows; the passive party answers with
   [[u_P]]_P, its partial scores under its own key (`LrScores`).
2. `LrExchange`: the active party adds e in the clear ([[4d]]_P), computes its gradient under
   the passive party's key (an encrypted inner product per feature, `he.inner_product`), adds
   a random mask r_A, and sends it with [[e]]_A, its part of the residual under its own key.
   The passive party adds u_P ([[4d]]_A), computes its own masked gradient [[X_P^T 4d +
   r_P]]_A, decrypts the active party's and returns both (`LrExchangeReply`).
3. `LrOpened`: the active party decrypts the passive party's masked gradient and returns it.
   Each party subtracts its mask and takes its step; its weights never leave it.

Everything is integer arithmetic on fixed point: features standardized by their owner,
clipped to +-16 and scaled by 2^16; partial scores clipped to +-64 and scaled by 2^24. A
batch has at most 2048 rows, so every gradient sum stays below 2^63. `fit_plain` runs the
same integers with both parties' columns in one place, from the same starting weights, and
the federated weights equal it exactly.

What each party learns: its own gradient per batch, k sums over the batch's rows of its k
columns times the residuals. So:
- the active party starts from secret random weights (`initial_weights`): from zero ones the
  first residuals would be exactly 2 - 4y, and the passive party's first gradient a subset
  sum of its own columns over the labels, which a search solves for a batch of 32 rows;
- a batch has at least 32 rows and at least 4 rows per column of the party that reads its
  gradient (`ROWS_PER_FEATURE`; with as many columns as rows the gradient is solvable for
  every row's residual), both checked by both parties;
- the passive party computes the schedule itself (the run's seed, epochs and batch_rows),
  answers each step once, in order, no step beyond the run's, and gives partial scores for
  prediction only once training is over (scores at every step would span its columns).
Over many steps the gradients still constrain the other party's partial scores and, for the
passive party, the labels, as in every hetero-LR protocol of this family. A party learns
nothing from the values it decrypts for the other: each is a gradient plus a uniform mask 80
bits wider than any gradient, and each mask is a textbook Paillier encryption under the
other's key (`he.encrypt_public`), so it carries no randomness the key's owner knows or
chose. It also learns which rows form each batch. At prediction the active party learns the
passive party's partial score of every predicted row. The parties are trusted to follow the
protocol (semi-honest, as in FATE): one that decrypts for the other answers whatever it is
sent, so a party that sent it other ciphertexts instead of its masked gradient would read
them. The count each side decrypts per step is fixed (its peer's column count, once per
step), which bounds such a leak but does not stop it.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from schemas.vertical import (
    Ack,
    HeKey,
    LrBatch,
    LrExchange,
    LrExchangeReply,
    LrOpened,
    LrPredictRequest,
    LrPredictScores,
    LrScores,
    VerticalMessage,
)
from silos.vertical import he

X_FRAC = 16
S_FRAC = 24
X_CLIP = 16.0
U_CLIP = 64.0
MAX_BATCH = 2048  # 2^20 (feature) x 2^32 (residual) x 2^11 rows < 2^63
# A party's gradient over one row is that row's residual times its features: the passive
# party would read the label, the active one the passive party's score. Both refuse fewer.
MIN_BATCH = 32
# A party's gradient is k linear equations (k: its columns) in the batch's residuals; with as
# many equations as rows it would solve them. Both parties refuse batches under this many
# rows per column of the party that reads the gradient.
ROWS_PER_FEATURE = 4
MASK_BITS = 63 + 80  # statistical hiding: 2^-80 from uniform

Send = Callable[[str, str, object], VerticalMessage]


class LrError(ValueError):
    """A message a logistic-regression party refuses; names the party that sent it."""


@dataclass(frozen=True)
class LrParams:
    epochs: int = 5
    batch_rows: int = 1024
    learning_rate: float = 0.5
    l2: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if not MIN_BATCH <= self.batch_rows <= MAX_BATCH:
            raise ValueError(f"batch_rows must be {MIN_BATCH}..{MAX_BATCH}, not {self.batch_rows}")
        if self.epochs < 1 or not self.learning_rate > 0 or self.l2 < 0:
            raise ValueError("epochs >= 1, learning_rate > 0 and l2 >= 0 are required")
        if not self.learning_rate * self.l2 < 2:  # w (1 - lr l2) would grow without bound
            raise ValueError(
                f"learning_rate x l2 must be below 2, not {self.learning_rate * self.l2:g}"
            )


@dataclass(frozen=True)
class Scaler:
    """The owner's standardization of its columns, fitted on its aligned training rows."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray) -> Scaler:
        X = np.asarray(X, dtype=np.float64)
        std = X.std(axis=0)
        return cls(X.mean(axis=0), np.where(std > 0, std, 1.0))

    def quantize(self, X: np.ndarray) -> np.ndarray:
        z = np.clip((np.asarray(X, dtype=np.float64) - self.mean) / self.std, -X_CLIP, X_CLIP)
        return np.rint(z * (1 << X_FRAC)).astype(np.int64)


def with_intercept(xq: np.ndarray) -> np.ndarray:
    """The active party's columns and a constant one (its weight is the intercept)."""
    return np.hstack([xq, np.full((len(xq), 1), 1 << X_FRAC, dtype=np.int64)])


def scores(xq: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Fixed-point partial scores of quantized rows."""
    u = (xq.astype(np.float64) / (1 << X_FRAC)) @ w
    return np.rint(np.clip(u, -U_CLIP, U_CLIP) * (1 << S_FRAC)).astype(np.int64)


def label_part(active_scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    """e = u_A + 2 - 4y, fixed point: the active party's part of 4 x the residual."""
    return active_scores + ((2 - 4 * y.astype(np.int64)) << S_FRAC)


def updated(
    w: np.ndarray, G: np.ndarray, rows: int, p: LrParams, intercept: bool, party: str = "pooled"
) -> np.ndarray:
    """One gradient step from the integer gradient sums G = X^T (4d) of a batch.

    Raises
    ------
    LrError
        The weights left the finite numbers (a learning rate too large for the data); names
        `party`.
    """
    grad = G.astype(np.float64) / float(1 << (X_FRAC + S_FRAC)) / (4 * rows)
    reg = p.l2 * w
    if intercept:
        reg[-1] = 0.0
    out = w - p.learning_rate * (grad + reg)
    if not np.isfinite(out).all():
        raise LrError(
            f"party {party!r}: the weights are no longer finite numbers; lower the learning "
            f"rate ({p.learning_rate:g})"
        )
    return out


def batches(n_rows: int, p: LrParams, epoch: int) -> list[np.ndarray]:
    """An epoch's mini-batches, of near-equal size: as few as hold at most `batch_rows`
    each, unless that would make one smaller than MIN_BATCH: then fewer, larger ones (50
    rows in batches of 32 are one batch of 50, not two of 25). No short last batch."""
    order = np.random.default_rng([p.seed, epoch]).permutation(n_rows)
    return np.array_split(order, max(1, min(-(-n_rows // p.batch_rows), n_rows // MIN_BATCH)))


def initial_weights(columns: int) -> np.ndarray:
    """The active party's secret starting weights, N(0, 1/columns) each, so its partial
    scores spread about as a standardized score. With weights of zero the first residuals
    would be (2 - 4y) exactly, and the passive party's first gradient a subset sum of its
    own columns over the labels, which a search solves for a batch of 32 rows."""
    rng = np.random.default_rng(secrets.randbits(128))
    return rng.normal(0.0, 1.0 / np.sqrt(columns), columns)


def check_batches(n_rows: int, p: LrParams, columns: int, me: str, reader: str) -> None:
    """Refuse (LrError naming `me`) batches with fewer than ROWS_PER_FEATURE rows per
    column of party `reader`, whose gradient gives `columns` equations in their residuals."""
    smallest = min(len(b) for b in batches(n_rows, p, 0))
    if smallest < ROWS_PER_FEATURE * columns:
        raise LrError(
            f"party {me!r}: batches of {smallest} rows are under {ROWS_PER_FEATURE} rows "
            f"for each of party {reader!r}'s {columns} gradient columns (its gradient "
            f"would narrow down each row's residual); batch_rows must allow at least "
            f"{ROWS_PER_FEATURE * columns}"
        )


@dataclass(frozen=True)
class Half:
    """A party's half of a trained model: its standardization and weights (the active
    party's last weight is the intercept). It never leaves the party."""

    scaler: Scaler
    w: np.ndarray
    intercept: bool
    start: np.ndarray | None = None  # the active party's starting weights (`fit_plain`'s w0)

    def margin(self, X: np.ndarray) -> np.ndarray:
        xq = self.scaler.quantize(X)
        if self.intercept:
            xq = with_intercept(xq)
        return (xq.astype(np.float64) / (1 << X_FRAC)) @ self.w

    def to_dict(self, party: str) -> dict[str, object]:
        out: dict[str, object] = {
            "party": party,
            "model": "logreg",
            "mean": self.scaler.mean.tolist(),
            "std": self.scaler.std.tolist(),
            "weights": self.w.tolist(),
        }
        if self.start is not None:  # stays with the party; replays its training (fit_plain)
            out["initial_weights"] = self.start.tolist()
        return out

    @classmethod
    def from_dict(cls, d: dict, n_features: int, intercept: bool, where: str) -> Half:
        """A half read back, checked against the data it will score (`where` names it)."""
        if d.get("model") != "logreg":
            raise LrError(f"{where}: not a logistic-regression half ({d.get('model')!r})")
        mean, std = np.asarray(d["mean"], float), np.asarray(d["std"], float)
        w = np.asarray(d["weights"], float)
        if len(mean) != n_features or len(std) != n_features:
            raise LrError(f"{where}: the model has {len(mean)} features; the data {n_features}")
        if len(w) != n_features + intercept or not np.isfinite(w).all() or (std <= 0).any():
            raise LrError(f"{where}: weights or scales do not fit its {n_features} features")
        return cls(Scaler(mean, std), w, intercept)


def request_scores(send: Send, me: str, run: str, passive: str, n_rows: int) -> np.ndarray:
    """The passive party's partial scores of its `n_rows` rows to predict, checked."""
    reply = send(me, passive, LrPredictRequest(run=run, sender=me, n_rows=n_rows))
    if not isinstance(reply, LrPredictScores) or reply.n_rows != n_rows:
        raise LrError(f"party {passive!r} answered a prediction request with {reply.kind}")
    if len(reply.scores) != 8 * n_rows:
        raise LrError(
            f"party {passive!r} sent {len(reply.scores)} bytes of scores for {n_rows} rows"
        )
    theirs = np.frombuffer(reply.scores, dtype="<f8")
    if not np.isfinite(theirs).all():
        raise LrError(f"party {passive!r} sent scores that are not finite numbers")
    return theirs


def answer_scores(
    half: Half, X: np.ndarray | None, msg: LrPredictRequest, me: str
) -> LrPredictScores:
    """The passive side of `request_scores`: partial scores of the rows it set to predict."""
    if X is None or len(X) != msg.n_rows:
        raise LrError(
            f"party {me!r}: party {msg.sender!r} asks for scores of {msg.n_rows} "
            f"rows; it holds {0 if X is None else len(X)} rows to predict"
        )
    u = half.margin(X).astype("<f8").tobytes()
    return LrPredictScores(run=msg.run, sender=me, n_rows=len(X), scores=u)


def fit_plain(
    X_active: np.ndarray, X_passive: np.ndarray, y: np.ndarray, p: LrParams, w0: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Both parties' columns in one place, the same integers: (active w + intercept, passive
    w), from the active party's starting weights `w0` (`LrActive.w0`). The losslessness
    reference of the protocol."""
    xa = with_intercept(Scaler.fit(X_active).quantize(X_active))
    xp = Scaler.fit(X_passive).quantize(X_passive)
    wa, wp = np.asarray(w0, dtype=np.float64).copy(), np.zeros(xp.shape[1])
    for epoch in range(p.epochs):
        for rows in batches(len(y), p, epoch):
            z = scores(xp[rows], wp) + label_part(scores(xa[rows], wa), y[rows])
            wa = updated(wa, xa[rows].T @ z, len(rows), p, intercept=True)
            wp = updated(wp, xp[rows].T @ z, len(rows), p, intercept=False)
    return wa, wp


def _ints(blob: bytes, pub: he.PublicKey, count: int, party: str, what: str) -> list[int]:
    """Fixed-width big-endian residues mod pub.n (decrypted values), `count` of them."""
    width = (pub.n.bit_length() + 7) // 8
    if len(blob) != count * width:
        raise LrError(
            f"{what} from party {party!r}: {len(blob)} bytes, expected {count} values of "
            f"{width} bytes"
        )
    out = [int.from_bytes(blob[i : i + width], "big") for i in range(0, len(blob), width)]
    if any(v >= pub.n for v in out):
        raise LrError(f"{what} from party {party!r}: a value is not below the key's n")
    return out


def _to_bytes(pub: he.PublicKey, values: list[int]) -> bytes:
    width = (pub.n.bit_length() + 7) // 8
    return b"".join(v.to_bytes(width, "big") for v in values)


def _cts(pub: he.PublicKey, blob: bytes, count: int, party: str, what: str) -> list[int]:
    cts = he.from_bytes(pub, blob, party, what)
    if len(cts) != count:
        raise LrError(f"{what} from party {party!r}: {len(cts)} ciphertexts, expected {count}")
    return cts


def _masked_gradient(
    pub: he.PublicKey, residual_cts: list[int], xq: np.ndarray
) -> tuple[list[int], list[int]]:
    """[[X^T 4d + r]] per column under `pub` (the peer's key), and the masks r. Each mask is
    a fresh encryption: the inner product keeps the randomness of ciphertexts the key's
    owner made, which would let it test guesses of this party's columns against it."""
    masks = [secrets.randbits(MASK_BITS) for _ in range(xq.shape[1])]
    grads = [he.inner_product(pub, residual_cts, [int(v) for v in col]) for col in xq.T]
    fresh = he.encrypt_public(pub, masks)
    nsq = pub.nsquare
    return [g * r % nsq for g, r in zip(grads, fresh, strict=True)], masks


def _unmask(
    pub: he.PublicKey, opened: list[int], masks: list[int], rows: int, party: str, what: str
) -> np.ndarray:
    """The gradient sums from their opened masked values, each checked against the bound
    an honest batch of `rows` rows keeps (|x| <= 2^20, |4d| <= 2^31 + 2^25)."""
    G = he.decode_signed([(o - r) % pub.n for o, r in zip(opened, masks, strict=True)], pub.n)
    bound = rows * (1 << 20) * ((1 << 31) + (1 << 25))
    if any(abs(g) > bound for g in G):
        raise LrError(f"{what} from party {party!r}: a gradient sum beyond what {rows} rows give")
    return np.array(G, dtype=np.int64)


def _expect(reply: VerticalMessage, kind: type, party: str, step: int) -> None:
    if not isinstance(reply, kind) or getattr(reply, "step", step) != step:
        raise LrError(
            f"party {party!r} answered step {step} with {reply.kind} "
            f"(step {getattr(reply, 'step', '-')}); expected {kind.__name__}"
        )


@dataclass
class LrActive:
    """The label holder: drives every step, keeps its weights and the intercept."""

    name: str
    run: str
    X: np.ndarray
    y: np.ndarray
    passive: str
    passive_features: int
    params: LrParams = field(default_factory=LrParams)
    keys: he.KeyPair = field(default_factory=he.generate_keypair)
    key_bits: int = he.KEY_BITS
    steps: int = 0
    w0: np.ndarray | None = None  # starting weights; None: secret ones (`initial_weights`)

    def __post_init__(self) -> None:
        if len(self.y) < MIN_BATCH:
            raise LrError(
                f"party {self.name!r}: {len(self.y)} aligned rows; logistic regression needs "
                f"at least {MIN_BATCH} (a smaller batch would show each row's residual)"
            )
        self.scaler = Scaler.fit(self.X)
        self.xq = with_intercept(self.scaler.quantize(self.X))
        check_batches(len(self.y), self.params, self.passive_features, self.name, self.passive)
        if self.w0 is None:
            self.w0 = initial_weights(self.xq.shape[1])
        elif np.shape(self.w0) != (self.xq.shape[1],) or not np.isfinite(self.w0).all():
            raise LrError(f"party {self.name!r}: {np.shape(self.w0)} starting weights")
        self.w = np.array(self.w0, dtype=np.float64)
        self._peer: he.PublicKey | None = None

    def fit(self, send: Send, on_epoch: Callable[[int], None] | None = None) -> np.ndarray:
        self.exchange_keys(send)
        for epoch in range(self.params.epochs):
            for rows in batches(len(self.y), self.params, epoch):
                self.step(send, rows)
            if on_epoch is not None:
                on_epoch(epoch)
        return self.w

    def exchange_keys(self, send: Send) -> None:
        reply = send(self.name, self.passive, he.key_message(self.run, self.name, self.keys.public))
        if not isinstance(reply, HeKey):
            raise LrError(f"party {self.passive!r} answered the key exchange with {reply.kind}")
        self._peer = he.peer_public_key(reply.n, reply.hs, self.name, reply.sender, self.key_bits)

    def step(self, send: Send, rows: np.ndarray) -> None:
        peer, own, s, b = self._peer, self.keys.public, self.steps, len(rows)
        if peer is None:
            raise LrError(f"party {self.name!r}: a step before the key exchange")
        msg = LrBatch(run=self.run, sender=self.name, step=s, rows=rows.astype("<u4").tobytes())
        reply = send(self.name, self.passive, msg)
        _expect(reply, LrScores, self.passive, s)
        assert isinstance(reply, LrScores)
        theirs = _cts(peer, reply.ciphertexts, b, self.passive, f"scores of step {s}")
        e = label_part(scores(self.xq[rows], self.w), self.y[rows])
        residual = he.add_plain(peer, theirs, he.encode_signed([int(v) for v in e], peer.n))
        masked, masks = _masked_gradient(peer, residual, self.xq[rows])
        own_e = he.encrypt_many(self.keys, he.encode_signed([int(v) for v in e], own.n))
        reply = send(
            self.name,
            self.passive,
            LrExchange(
                run=self.run,
                sender=self.name,
                step=s,
                residual=he.to_bytes(own, own_e),
                masked=he.to_bytes(peer, masked),
            ),
        )
        _expect(reply, LrExchangeReply, self.passive, s)
        assert isinstance(reply, LrExchangeReply)
        what = f"gradient of step {s}"
        opened = _ints(reply.opened, peer, len(masks), self.passive, f"opened {what}")
        theirs_masked = _cts(own, reply.masked, self.passive_features, self.passive, what)
        plain = he.decrypt_many(self.keys, theirs_masked)
        reply = send(
            self.name,
            self.passive,
            LrOpened(run=self.run, sender=self.name, step=s, opened=_to_bytes(own, plain)),
        )
        if not isinstance(reply, Ack):
            raise LrError(
                f"party {self.passive!r} answered step {s}'s last message with {reply.kind}"
            )
        G = _unmask(peer, opened, masks, b, self.passive, f"opened {what}")
        self.w = updated(self.w, G, b, self.params, intercept=True, party=self.name)
        self.steps += 1

    @property
    def half(self) -> Half:
        return Half(self.scaler, self.w, intercept=True, start=self.w0)

    def predict_margin(self, X: np.ndarray, send: Send) -> np.ndarray:
        """u_A + u_P + intercept for rows aligned with the passive party's rows to predict."""
        theirs = request_scores(send, self.name, self.run, self.passive, len(X))
        return self.half.margin(X) + theirs


@dataclass
class LrPassive:
    """Features without labels: answers the active party's steps, keeps its weights."""

    name: str
    run: str
    X: np.ndarray
    active: str = ""
    params: LrParams = field(default_factory=LrParams)
    keys: he.KeyPair = field(default_factory=he.generate_keypair)
    key_bits: int = he.KEY_BITS
    active_features: int | None = None  # learnt from the first exchange; fixed after it

    def __post_init__(self) -> None:
        if len(self.X) < MIN_BATCH:
            raise LrError(
                f"party {self.name!r}: {len(self.X)} aligned rows; logistic regression needs "
                f"at least {MIN_BATCH}"
            )
        self.scaler = Scaler.fit(self.X)
        self.xq = self.scaler.quantize(self.X)
        self.w = np.zeros(self.xq.shape[1])
        self._peer: he.PublicKey | None = None
        self._step: tuple[int, np.ndarray, np.ndarray] | None = None  # step, rows, scores
        self._masks: tuple[int, list[int]] | None = None
        self._predict_X: np.ndarray | None = None
        self._epoch: tuple[int, list[np.ndarray]] = (-1, [])
        self.per_epoch = len(batches(len(self.X), self.params, 0))
        self.total_steps = self.params.epochs * self.per_epoch
        self.steps = 0

    def planned(self, step: int) -> np.ndarray:
        """The rows of `step` by the run's own schedule (its seed, epochs and batch_rows):
        the active party names them, this party does not take them on its word."""
        epoch = step // self.per_epoch
        if self._epoch[0] != epoch:
            self._epoch = (epoch, batches(len(self.X), self.params, epoch))
        return self._epoch[1][step % self.per_epoch]

    def set_predict_rows(self, X: np.ndarray) -> None:
        self._predict_X = X

    def handle(self, msg: VerticalMessage) -> VerticalMessage:
        if self.active and msg.sender != self.active:
            raise LrError(
                f"party {self.name!r} got a message from {msg.sender!r}, not the active party"
            )
        if isinstance(msg, HeKey):
            if self._peer is not None:
                raise LrError(f"party {self.name!r}: party {msg.sender!r} sent a second key")
            self._peer = he.peer_public_key(msg.n, msg.hs, self.name, msg.sender, self.key_bits)
            self.active = msg.sender
            return he.key_message(self.run, self.name, self.keys.public)
        if isinstance(msg, LrPredictRequest):
            return self._predict(msg)
        if self._peer is None:
            raise LrError(
                f"party {self.name!r}: party {msg.sender!r} sent {msg.kind} before its key"
            )
        if isinstance(msg, LrBatch):
            return self._scores(msg)
        if isinstance(msg, LrExchange):
            return self._exchange(msg, self._peer)
        if isinstance(msg, LrOpened):
            return self._opened(msg, self._peer)
        raise LrError(
            f"party {self.name!r} got an unexpected {msg.kind} message from {msg.sender!r}"
        )

    def _scores(self, msg: LrBatch) -> LrScores:
        if msg.step != self.steps or self._step is not None or self.steps >= self.total_steps:
            raise LrError(
                f"party {self.name!r}: party {msg.sender!r} opened step {msg.step}; "
                + (
                    f"the run's {self.total_steps} steps are done"
                    if self.steps >= self.total_steps
                    else f"step {self.steps} is " + ("open" if self._step is not None else "next")
                )
            )
        plan = self.planned(msg.step)
        if msg.rows != plan.astype("<u4").tobytes():
            raise LrError(
                f"batch of step {msg.step} from party {msg.sender!r}: not the {len(plan)} rows "
                "the run's schedule (seed, epochs, batch_rows) gives"
            )
        s = scores(self.xq[plan], self.w)
        self._step = (msg.step, plan, s)
        own = self.keys.public
        cts = he.encrypt_many(self.keys, he.encode_signed([int(v) for v in s], own.n))
        return LrScores(
            run=self.run, sender=self.name, step=msg.step, ciphertexts=he.to_bytes(own, cts)
        )

    def _exchange(self, msg: LrExchange, peer: he.PublicKey) -> LrExchangeReply:
        if self._step is None or self._step[0] != msg.step or self._masks is not None:
            raise LrError(
                f"party {self.name!r}: exchange of step {msg.step} from party "
                f"{msg.sender!r} "
                + ("after its exchange" if self._masks is not None else "before its batch")
            )
        step, rows, s = self._step
        what = f"step {step}"
        residual = _cts(peer, msg.residual, len(rows), msg.sender, f"residuals of {what}")
        own = self.keys.public
        theirs = he.from_bytes(own, msg.masked, msg.sender, f"masked gradient of {what}")
        if self.active_features is None and theirs:
            check_batches(len(self.X), self.params, len(theirs), self.name, msg.sender)
            self.active_features = len(theirs)
        if len(theirs) != self.active_features:
            raise LrError(
                f"masked gradient of {what} from party {msg.sender!r}: {len(theirs)} values; "
                f"its first step had {self.active_features}"
            )
        residual = he.add_plain(peer, residual, he.encode_signed([int(v) for v in s], peer.n))
        masked, masks = _masked_gradient(peer, residual, self.xq[rows])
        self._masks = (step, masks)
        opened = he.decrypt_many(self.keys, theirs)
        return LrExchangeReply(
            run=self.run,
            sender=self.name,
            step=step,
            masked=he.to_bytes(peer, masked),
            opened=_to_bytes(own, opened),
        )

    def _opened(self, msg: LrOpened, peer: he.PublicKey) -> Ack:
        if self._masks is None or self._masks[0] != msg.step or self._step is None:
            raise LrError(
                f"party {self.name!r}: opened gradient of step {msg.step} from party "
                f"{msg.sender!r} before its exchange"
            )
        _, masks = self._masks
        what = f"opened gradient of step {msg.step}"
        opened = _ints(msg.opened, peer, len(masks), msg.sender, what)
        rows = len(self._step[1])
        G = _unmask(peer, opened, masks, rows, msg.sender, what)
        self.w = updated(self.w, G, rows, self.params, intercept=False, party=self.name)
        self._step, self._masks = None, None
        self.steps += 1
        return Ack(run=self.run, sender=self.name)

    @property
    def half(self) -> Half:
        return Half(self.scaler, self.w, intercept=False)

    def _predict(self, msg: LrPredictRequest) -> LrPredictScores:
        # during training its scores at each step would show the active party this
        # party's columns (their span), not only the final model's scores
        if self.steps < self.total_steps:
            raise LrError(
                f"party {self.name!r}: party {msg.sender!r} asked for scores after "
                f"{self.steps} of the run's {self.total_steps} steps; only a trained model "
                "predicts"
            )
        return answer_scores(self.half, self._predict_X, msg, self.name)
