"""The envelope a silo wraps around its new trees: what they are for and what they grew from.

Tree updates are native models (XGBoost JSON, LightGBM text) holding only the trees the silo
grew this round. The envelope binds them to a run, a round, a silo and the sha256 of the global
model they were grown from, so the service can refuse trees meant for another round or grown
from a stale model before it parses a single tree.

Layout (all lengths big-endian)::

    b"FSTU" | u32 header length | header JSON (UTF-8, sorted keys) | native model bytes

The envelope is then sealed (`schemas.sealed`): signed by the silo and encrypted to the
service, because tree updates are not additive and secure aggregation cannot hide them.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas import WIRE_VERSION
from schemas.exceptions import SchemaError
from schemas.tree_params import TreeMode

MAGIC = b"FSTU"
_LEN_BYTES = 4
MAX_HEADER_BYTES = 64 * 1024
SHA256_PATTERN = r"^[0-9a-f]{64}$"


class TreePayloadError(SchemaError):
    """A tree-update envelope does not decode, or its model bytes do not match its header."""


class TreeUpdateHeader(BaseModel):
    """Metadata of one silo's tree update for one round."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    wire: str = WIRE_VERSION
    run_id: str = Field(min_length=1)
    round: int = Field(ge=1)
    silo: str = Field(min_length=1)
    kind: Literal["xgboost", "lightgbm"]
    mode: TreeMode  # secure-hist never sends tree updates; the service checks the run's mode
    base_model_sha256: str | None = Field(
        default=None,
        pattern=SHA256_PATTERN,
        description="sha256 of the global model the trees were grown from; None = from scratch",
    )
    n_base_trees: int = Field(
        ge=0, description="boosting rounds in the base model (K trees each for multiclass)"
    )
    n_new_trees: int = Field(
        ge=1, description="boosting rounds in the attached model (K trees each for multiclass)"
    )
    n_examples: int = Field(
        ge=1, le=2**31 - 1, description="training rows the trees were grown on (32-bit column)"
    )
    n_features: int = Field(ge=1)
    model_sha256: str = Field(pattern=SHA256_PATTERN)
    library_version: str = ""
    train_seconds: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    metrics_json: str | None = Field(
        default=None, description="the silo's evaluation of the base model on its holdout"
    )


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of `data` (how global models and tree payloads are identified)."""
    return hashlib.sha256(data).hexdigest()


def encode_tree_update(header: TreeUpdateHeader, model: bytes) -> bytes:
    """Serialize header and native model bytes into one envelope.

    Raises
    ------
    TreePayloadError
        The header's `model_sha256` is not the sha256 of `model`.
    """
    if header.model_sha256 != sha256_hex(model):
        raise TreePayloadError("header.model_sha256 does not match the attached model bytes")
    body = json.dumps(header.model_dump(mode="json"), sort_keys=True).encode()
    return MAGIC + len(body).to_bytes(_LEN_BYTES, "big") + body + model


def decode_tree_update(payload: bytes) -> tuple[TreeUpdateHeader, bytes]:
    """Split an envelope into its validated header and the native model bytes.

    Raises
    ------
    TreePayloadError
        Wrong magic, truncated or oversized header, header not valid JSON or not a valid
        `TreeUpdateHeader`, a wire version this fedsilo does not speak, or model bytes whose
        sha256 differs from the header's.
    """
    if payload[:4] != MAGIC:
        raise TreePayloadError("not a fedsilo tree update (missing FSTU magic)")
    size = int.from_bytes(payload[4 : 4 + _LEN_BYTES], "big")
    start = 4 + _LEN_BYTES
    if size <= 0 or size > MAX_HEADER_BYTES or start + size > len(payload):
        raise TreePayloadError(f"tree update header length {size} is out of bounds")
    try:
        header = TreeUpdateHeader.model_validate_json(payload[start : start + size])
    except ValidationError as exc:
        raise TreePayloadError(f"tree update header is invalid: {exc}") from exc
    if header.wire != WIRE_VERSION:
        raise TreePayloadError(
            f"tree update wire version {header.wire!r}; this fedsilo speaks {WIRE_VERSION!r}"
        )
    model = payload[start + size :]
    if sha256_hex(model) != header.model_sha256:
        raise TreePayloadError("tree update model bytes do not match header.model_sha256")
    return header, model
