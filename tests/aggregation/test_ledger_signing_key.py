"""The service's ledger signing key off the database host: a 0600 key file, or a signer hook."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from aggregation.service import ledger
from aggregation.service.db import make_sessionmaker, transaction
from aggregation.service.keys import SigningKeyError, load_service_signer, public_hex
from aggregation.service.main import create_app
from aggregation.service.settings import ServiceSettings
from schemas.ledger_verify import verify_chain


def _key_file(path: Path, mode: int) -> Ed25519PrivateKey:
    key = Ed25519PrivateKey.generate()
    path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    path.chmod(mode)
    return key


def test_a_group_or_world_readable_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.pem"
    _key_file(path, 0o640)
    with pytest.raises(SigningKeyError, match=r"mode -rw-r-----.*chmod 600"):
        load_service_signer(tmp_path, key_file=path)
    path.chmod(0o604)
    with pytest.raises(SigningKeyError, match="chmod 600"):
        load_service_signer(tmp_path, key_file=path)


def test_the_service_signs_with_the_key_file(sqlite_url: str, tmp_path: Path) -> None:
    path = tmp_path / "ledger.pem"
    key = _key_file(path, 0o600)
    settings = ServiceSettings(
        workspace=tmp_path / "svc", database_url=sqlite_url, signing_key_file=path
    )
    app = create_app(settings)
    recorder = app.state.recorder
    assert public_hex(recorder.service_key) == public_hex(key)
    assert not (tmp_path / "svc" / "keys" / "service_ed25519.pem").exists()
    with transaction(app.state.sessions) as s:
        recorder.service(s, "metrics", {"round": 1}, "run-1")
    with app.state.sessions() as s:
        entries = list(ledger.iter_records(s))
    assert verify_chain(entries, {"service": key.public_key()}).ok
    app.state.engine.dispose()


HOOK = """
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

KEY = Ed25519PrivateKey.generate()


class TokenSigner:  # stands in for a PKCS#11 session or a KMS client
    calls = 0

    def public_key_bytes(self):
        return KEY.public_key().public_bytes_raw()

    def sign(self, message):
        TokenSigner.calls += 1
        return KEY.sign(message)


class WrongKey(TokenSigner):
    def sign(self, message):
        return Ed25519PrivateKey.generate().sign(message)


def make_signer():
    return TokenSigner()


def make_wrong():
    return WrongKey()


def make_nothing():
    return object()
"""


def test_the_service_signs_through_a_signer_hook(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "fake_hsm.py").write_text(textwrap.dedent(HOOK))
    monkeypatch.syspath_prepend(str(tmp_path))
    import fake_hsm  # type: ignore[import-not-found]

    settings = ServiceSettings(
        workspace=tmp_path / "svc", database_url=sqlite_url, signer="fake_hsm:make_signer"
    )
    app = create_app(settings)
    recorder = app.state.recorder
    before = fake_hsm.TokenSigner.calls
    with transaction(make_sessionmaker(app.state.engine)) as s:
        recorder.service(s, "metrics", {"round": 1}, "run-1")
    assert fake_hsm.TokenSigner.calls == before + 1
    with app.state.sessions() as s:
        entries = list(ledger.iter_records(s))
    assert verify_chain(entries, {"service": fake_hsm.KEY.public_key()}).ok
    app.state.engine.dispose()
    with pytest.raises(SigningKeyError, match="does not verify with its public key"):
        load_service_signer(tmp_path, hook="fake_hsm:make_wrong")
    with pytest.raises(SigningKeyError, match="lacks public_key_bytes"):
        load_service_signer(tmp_path, hook="fake_hsm:make_nothing")
    with pytest.raises(SigningKeyError, match="not 'module:factory'"):
        load_service_signer(tmp_path, hook="fake_hsm")
    with pytest.raises(SigningKeyError, match="cannot be loaded"):
        load_service_signer(tmp_path, hook="no_such_hsm_module:make")
