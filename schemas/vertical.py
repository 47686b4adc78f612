"""Wire messages of vertical federation: private set intersection and SecureBoost.

Pure models that a relay can carry as opaque bytes. Every message names its run, its sender
and (where it has one) the tree and node, so a party that refuses a message can say whose and
which. Big payloads are `bytes`: concatenated fixed-width group elements (PSI, 32 bytes each),
concatenated big-endian Paillier ciphertexts (SecureBoost, 512 bytes each at 2048-bit keys),
or row bitmaps (`numpy.packbits` order over the run's aligned rows). In JSON they travel as
base64.

Between parties every message goes inside a `Sealed` envelope: ChaCha20-Poly1305 under a
per-pair key (X25519 + HKDF, silos/vertical/channel.py) with the envelope header as
associated data; `frame`/`unframe` give the bytes a relay carries. A relay sees who talks to
whom and how much, never the content.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PARTY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
Party = Annotated[str, Field(pattern=PARTY_PATTERN)]
Count = Annotated[int, Field(ge=0, le=2**40)]
# what the service stores in a 32-bit integer column (PostgreSQL refuses a bigger one)
StoredCount = Annotated[int, Field(ge=0, le=2**31 - 1)]
MAX_FRAME_HEADER = 512  # a real header is under 300 bytes: run, two parties, seq and nonce
# a party's feature columns: the active party sizes its tables by its peers' counts
MAX_FEATURES = 100_000


class _Msg(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64"
    )
    run: Party
    sender: Party


# --- private set intersection -------------------------------------------------------------


class PsiPoints(_Msg):
    """Blinded ids of `owner`'s set: `stage` "blinded" (the owner's exponent only),
    "exponentiated" (every party's exponent: back to the owner) or "final" (fully blinded,
    shuffled by the owner, for the others to compare against)."""

    kind: Literal["psi_points"] = "psi_points"
    owner: Party
    stage: Literal["blinded", "exponentiated", "final"]
    count: Count
    points: bytes


# --- SecureBoost ----------------------------------------------------------------------------


class HeKey(_Msg):
    """A party's Paillier public key: n and the DJN base hs, big-endian (SecureBoost: the
    active party's; logistic regression: each party's, the passive one's in reply)."""

    kind: Literal["he_key"] = "he_key"
    n: bytes
    hs: bytes


class EncryptedGradients(_Msg):
    """One Paillier ciphertext per aligned row: packed fixed-point (g, h, 1)."""

    kind: Literal["gradients"] = "gradients"
    tree: Count
    n_rows: Count
    ciphertexts: bytes


class NodeRows(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64"
    )
    node: Count
    rows: bytes  # bitmap of the node's instance space


class HistogramRequest(_Msg):
    """Nodes whose encrypted bin sums the active party asks for (the smaller child only)."""

    kind: Literal["hist_request"] = "hist_request"
    tree: Count
    nodes: list[NodeRows]


class EncryptedHistogram(_Msg):
    """Encrypted (g, h, count) sums per feature and bin of one node; `n_bins[f]` is feature
    f's bin count, bins in feature order, each feature's sums packed `pack_bits` apart into
    as many ciphertexts as they need (the layout both parties must share)."""

    kind: Literal["histogram"] = "histogram"
    tree: Count
    node: Count
    n_bins: list[Count]
    pack_bits: Count
    ciphertexts: bytes


class HistogramBatch(_Msg):
    kind: Literal["histograms"] = "histograms"
    tree: Count
    histograms: list[EncryptedHistogram]


class SplitDecision(_Msg):
    """The active party tells the winning passive party which of its features and bins won;
    rows with bin <= `bin` go left. The passive party keeps the threshold."""

    kind: Literal["split"] = "split"
    tree: Count
    node: Count
    feature: Count
    bin: Count
    rows: bytes  # the node's instance space


class InstanceSplit(_Msg):
    """The winning passive party's answer: an opaque record id and the left rows."""

    kind: Literal["instance_split"] = "instance_split"
    tree: Count
    node: Count
    record: Count
    left: bytes


class PredictRequest(_Msg):
    """Joint prediction: route `n_rows` aligned rows through these records of the party."""

    kind: Literal["predict_request"] = "predict_request"
    n_rows: Count
    records: list[Count]


class PredictRoutes(_Msg):
    """One left-rows bitmap per requested record, concatenated in request order."""

    kind: Literal["predict_routes"] = "predict_routes"
    n_rows: Count
    records: list[Count]
    left: bytes


# --- vertical logistic regression (silos/vertical/logreg.py) -------------------------------


class LrBatch(_Msg):
    """The active party opens step `step`: the aligned rows of its mini-batch, uint32
    little-endian. The passive party answers with its encrypted partial scores."""

    kind: Literal["lr_batch"] = "lr_batch"
    step: Count
    rows: bytes


class LrScores(_Msg):
    """The passive party's partial scores X_P w_P of the batch's rows, fixed point, under its
    own Paillier key: the active party cannot read them."""

    kind: Literal["lr_scores"] = "lr_scores"
    step: Count
    ciphertexts: bytes


class LrExchange(_Msg):
    """The active party's half of a step: its part of every batch row's residual under its
    own key (`residual`), and its gradient plus a random mask under the passive party's key,
    one ciphertext per active feature, for the passive party to decrypt (`masked`)."""

    kind: Literal["lr_exchange"] = "lr_exchange"
    step: Count
    residual: bytes
    masked: bytes


class LrExchangeReply(_Msg):
    """The passive party's gradient plus its mask under the active party's key (`masked`),
    and the active party's masked gradient decrypted (`opened`, 256-byte big-endian ints)."""

    kind: Literal["lr_exchange_reply"] = "lr_exchange_reply"
    step: Count
    masked: bytes
    opened: bytes


class LrOpened(_Msg):
    """The passive party's masked gradient, decrypted by the active party."""

    kind: Literal["lr_opened"] = "lr_opened"
    step: Count
    opened: bytes


class LrPredictRequest(_Msg):
    """Joint prediction: the passive party's partial scores of its `n_rows` rows to predict."""

    kind: Literal["lr_predict_request"] = "lr_predict_request"
    n_rows: Count


class LrPredictScores(_Msg):
    """Partial scores of the rows to predict, float64 little-endian, in the clear: the active
    party adds its own and the intercept (it learns these sums, as in FATE's hetero LR)."""

    kind: Literal["lr_predict_scores"] = "lr_predict_scores"
    n_rows: Count
    scores: bytes


class Ack(_Msg):
    kind: Literal["ack"] = "ack"


class Features(_Msg):
    """A passive party tells the active party how many feature columns it brings (after PSI,
    before the first tree): their names and values stay with it."""

    kind: Literal["features"] = "features"
    count: Annotated[int, Field(ge=0, le=MAX_FEATURES)]


VerticalMessage = Annotated[
    PsiPoints
    | HeKey
    | EncryptedGradients
    | HistogramRequest
    | HistogramBatch
    | SplitDecision
    | InstanceSplit
    | PredictRequest
    | PredictRoutes
    | LrBatch
    | LrScores
    | LrExchange
    | LrExchangeReply
    | LrOpened
    | LrPredictRequest
    | LrPredictScores
    | Ack
    | Features,
    Field(discriminator="kind"),
]


class Envelope(BaseModel):
    """Parses any vertical message by its `kind`."""

    message: VerticalMessage


# --- sealed envelope ----------------------------------------------------------------------


class Sealed(BaseModel):
    """An authenticated, encrypted message from `sender` to `recipient`; `seq` rises by one
    per message on each (sender, recipient) direction so a replay is refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    run: Party
    sender: Party
    recipient: Party
    seq: StoredCount
    nonce: bytes = Field(min_length=12, max_length=12)
    body: bytes

    def header(self) -> bytes:
        """The associated data the AEAD binds: everything but the body."""
        return json.dumps(
            [self.run, self.sender, self.recipient, self.seq, self.nonce.hex()],
            separators=(",", ":"),
        ).encode()


def frame(sealed: Sealed) -> bytes:
    """The bytes a relay carries: 4-byte header length, header JSON, then the body."""
    head = sealed.header()
    return len(head).to_bytes(4, "big") + head + sealed.body


def unframe(data: bytes) -> Sealed:
    if len(data) < 4:
        raise ValueError("vertical frame shorter than its 4-byte header length")
    size = int.from_bytes(data[:4], "big")
    if size > MAX_FRAME_HEADER:
        raise ValueError(f"vertical frame header of {size} bytes, more than {MAX_FRAME_HEADER}")
    try:
        run, sender, recipient, seq, nonce = json.loads(data[4 : 4 + size])
        return Sealed(
            run=run,
            sender=sender,
            recipient=recipient,
            seq=seq,
            nonce=bytes.fromhex(nonce),
            body=data[4 + size :],
        )
    except (ValueError, TypeError) as exc:
        raise ValueError(f"vertical frame header is malformed: {exc}") from exc
    except RecursionError as exc:  # nested deeper than the flat list a header is
        raise ValueError("vertical frame header is nested too deeply to be a header") from exc


# --- the service relay: runs and the events the ledger records ------------------------------


VerticalMode = Literal["train", "predict", "psi_size"]


class VerticalParams(BaseModel):
    """What the parties' agents need besides their own data: the run's hyperparameters and
    whether to predict the rows each party lists for prediction (`[vertical] predict_data`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    model: Literal["secureboost", "logreg"] = Field(
        default="secureboost",
        description="SecureBoost (trees, depth, bins) or logistic regression (epochs, "
        "batch_rows, learning_rate, l2; two parties)",
    )
    trees: int = Field(default=3, ge=1, le=1000)
    depth: int = Field(default=3, ge=1, le=16)
    bins: int = Field(default=32, ge=2, le=256)
    epochs: int = Field(default=2, ge=1, le=1000)
    batch_rows: int = Field(default=1024, ge=32, le=2048)  # silos/vertical/logreg.py
    learning_rate: float = Field(default=0.5, gt=0, le=10)
    l2: float = Field(default=1e-3, ge=0, le=10)
    predict: bool = Field(
        default=False, description="train: then predict the parties' prediction rows jointly"
    )


class VerticalRunCreate(BaseModel):
    """A vertical run: approved silos of `federation`, `active` (the label holder) among them.

    `mode` "train" fits a model; "predict" routes the parties' prediction rows through the
    halves of the model that run `model_run` left at each party; "psi_size" only counts the
    customers every party holds (each party learns the size, not which ids)."""

    model_config = ConfigDict(extra="forbid")
    federation: Party
    active: Party
    parties: list[Party] = Field(min_length=2, max_length=16)
    mode: VerticalMode = "train"
    params: VerticalParams = VerticalParams()
    model_run: Party | None = None

    @model_validator(mode="after")
    def _model_run_for_predict(self) -> VerticalRunCreate:
        if (self.mode == "predict") != (self.model_run is not None):
            raise ValueError(
                "a predict run names its model_run (a finished training run); a train run does not"
            )
        if self.mode == "train" and self.params.model == "logreg" and len(self.parties) != 2:
            raise ValueError(
                f"vertical logistic regression takes two parties (the active and one "
                f"passive); this run names {len(self.parties)}"
            )
        if self.mode == "psi_size" and len(self.parties) != 2:
            raise ValueError(  # silos/vertical/psi.py: it would show every overlap's size
                f"a size-only intersection takes two parties; this run names "
                f"{len(self.parties)}, and each would learn the size of every overlap of the "
                f"others, not one count"
            )
        if self.params.model == "logreg" and not self.params.learning_rate * self.params.l2 < 2:
            raise ValueError(  # each step scales the weights by 1 - learning_rate x l2
                f"learning_rate x l2 must be below 2 for logistic regression, not "
                f"{self.params.learning_rate * self.params.l2:g}"
            )
        return self


class VerticalRunOut(BaseModel):
    run_id: str
    federation: str
    active: str
    parties: list[str]
    status: Literal["running", "finished", "failed"]
    mode: VerticalMode = "train"
    params: VerticalParams = VerticalParams()
    model_run: str | None = None
    reason: str | None = None
    psi_size: int | None = None
    psi_digest: str | None = None
    trees: int = 0
    epochs: int = 0
    model_digest: str | None = None
    created_at: datetime | None = None
    finished_at: datetime | None = None


class PsiDone(BaseModel):
    """A party's intersection: its size and hash (the ids stay with the party); no hash in
    a size-only run, where the party does not know which ids are common."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["psi_done"] = "psi_done"
    size: StoredCount
    digest: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class LineageNode(BaseModel):
    """Who split a node, and at what depth: never the feature's threshold or bin."""

    model_config = ConfigDict(extra="forbid")
    node: Count
    party: Party
    depth: Annotated[int, Field(ge=0, le=64)]


class TreeDone(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["tree"] = "tree"
    tree: Count
    nodes: list[LineageNode]
    leaves: Count


class EpochDone(BaseModel):
    """Logistic regression: an epoch over the aligned rows is done (its steps and rows; the
    weights stay with their parties)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["epoch"] = "epoch"
    epoch: Count
    steps: Count
    rows: Count


class RunDone(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["finished"] = "finished"
    trees: Count
    epochs: Count = 0
    model_digest: str = Field(pattern=r"^[0-9a-f]{64}$")


class RunFailed(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["failed"] = "failed"
    reason: str = Field(max_length=2000)


class VerticalEvent(BaseModel):
    event: Annotated[
        PsiDone | TreeDone | EpochDone | RunDone | RunFailed, Field(discriminator="kind")
    ]
