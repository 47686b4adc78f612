"""The row count in a key advert is signed by its silo, apart from the keys' signature, so
that weights can be checked by every silo and adverts stay readable across versions."""

from __future__ import annotations

import json
import struct
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from schemas.secagg.exceptions import SignatureError
from schemas.secagg.messages import MAGIC, AdvertiseKeys

KEY = Ed25519PrivateKey.generate()
PUBLIC = KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _advert() -> AdvertiseKeys:
    return AdvertiseKeys.create(
        KEY, run_id="r", round_num=3, silo="a", c_pk=bytes(32), s_pk=bytes(range(32))
    )


def test_a_signed_count_round_trips_and_a_changed_one_is_refused() -> None:
    advert = AdvertiseKeys.from_bytes(_advert().counted(KEY, 40).to_bytes())
    assert advert.n_examples == 40
    advert.verify(PUBLIC)
    advert.verify_count(PUBLIC)
    with pytest.raises(SignatureError):
        replace(advert, n_examples=4000).verify_count(PUBLIC)
    other = Ed25519PrivateKey.generate()
    with pytest.raises(SignatureError):
        _advert().counted(other, 40).verify_count(PUBLIC)


def test_an_older_silos_advert_without_a_count_still_reads_and_verifies() -> None:
    raw = _advert().to_bytes()
    (size,) = struct.unpack(">I", raw[4:8])
    header = json.loads(raw[8 : 8 + size])
    del header["n_examples"], header["count_signature"]  # as an older silo wrote it
    body = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    old = AdvertiseKeys.from_bytes(MAGIC + struct.pack(">I", len(body)) + body)
    assert old.n_examples is None
    old.verify(PUBLIC)
    old.verify_count(PUBLIC)  # no count: nothing to check
    counted = _advert().counted(KEY, 40)
    assert counted.body() == old.body()  # the keys' signature is the same either way
