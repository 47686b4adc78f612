"""The silo's privacy budget file, signed with its Ed25519 identity key.

``workspace/privacy/spent.json`` records, per run, the noise multiplier and the number of
noised rounds this silo contributed; `silos.privacy` turns it into epsilon. A hand edit that
lowers the count would let the silo spend more than its policy allows, so the file is::

    {"format": "fedsilo-privacy-budget/1", "silo_key": <hex>, "state": {...}, "signature": <hex>}

where ``signature`` is the silo key's Ed25519 signature of ``SIGNING_PREFIX`` + the state's
canonical JSON; ``state`` is ``{"runs": {run_id: {"sigma", "rounds", "released"}}, "resets":
[...]}`` (``released``: the id of each counted message, `silos.privacy.release_id`).
A file that does not verify, an unsigned file once a signed one was written (the marker
``privacy/signed`` says so), or a missing file after that or beside privacy_spent statements
in the silo's copy of its lineage (the whole ``privacy/`` folder deleted), raises
`PrivacyBudgetError` naming the file: restore it from a backup, or reset it on purpose::

    fedsilo silo reset-privacy-budget --config silo.toml --reason "restored host, no backup"
    python -m silos.privacy_budget reset --config silo.toml --reason "..."  # without the CLI

which keeps the rejected file beside it and records the reset in the signed state. A budget
that verifies is not reset unless ``--discard-valid-budget`` says so: its spent rounds would be
forgotten.

An unsigned file of the older format, on a silo that never wrote a signed one, is signed on
first load (with a log line saying so). The signature makes an edit evident; it cannot stop
someone who can also read the silo's key, which is why the key is its owner's only (0600).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from silos.config import SiloConfig, load_silo_config
from silos.exceptions import PrivacyBudgetError, SiloConfigError
from silos.files import private_dir, write_private
from silos.keys import load_silo_key
from silos.lineage_copy import records_path

log = logging.getLogger("fedsilo.silo.privacy")

FORMAT = "fedsilo-privacy-budget/1"
SIGNING_PREFIX = b"fedsilo/privacy-budget/v1\n"
MARKER_TEXT = (
    "This silo's privacy budget (spent.json) is signed with its identity key since {at}.\n"
    "An unsigned or missing spent.json is refused from now on.\n"
)

State = dict[str, Any]
"""``{"runs": {run_id: {"sigma": float, "rounds": int, "released": [str]}}, "resets": [...]}``."""


def budget_path(workspace: Path) -> Path:
    return workspace / "privacy" / "spent.json"


def _marker(workspace: Path) -> Path:
    return workspace / "privacy" / "signed"


def _privacy_statements(workspace: Path) -> int:
    """How many privacy_spent statements the silo's copy of its lineage holds: a silo that
    sent one had a budget, so a missing budget beside them is a deleted one, not a new silo."""
    path = records_path(workspace)
    if not path.exists():
        return 0
    with path.open(encoding="utf-8") as fh:  # read once per fresh budget: cheap enough
        return sum(
            1
            for record in (json.loads(line) for line in fh if "privacy_spent" in line)
            if record.get("statement", {}).get("kind") == "privacy_spent"
        )


def _canonical(state: State) -> bytes:
    return json.dumps(state, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _public_hex(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def _what_to_do(config: SiloConfig) -> str:
    return (
        f"restore {budget_path(config.workspace)} from a backup, or reset the budget on purpose "
        f"with `fedsilo silo reset-privacy-budget --config {config.source} --reason '...'` "
        "(the reset is recorded; the rejected file is kept beside it)"
    )


def _refuse(config: SiloConfig, problem: str) -> PrivacyBudgetError:
    return PrivacyBudgetError(
        f"privacy budget {budget_path(config.workspace)} {problem}; this silo trains no more "
        f"until it is resolved: {_what_to_do(config)}"
    )


def load(config: SiloConfig) -> State:
    """The verified budget state (empty on a fresh silo); migrates an old unsigned file.

    Raises
    ------
    PrivacyBudgetError
        The file does not verify with the silo's key, is unsigned or missing although a
        signed one was written before, or cannot be read.
    """
    path, ws = budget_path(config.workspace), config.workspace
    signed_before = _marker(ws).exists()
    if not path.exists():
        if signed_before:
            raise _refuse(config, "is missing although a signed budget was written before")
        spent = _privacy_statements(ws)
        if spent:  # the whole privacy/ folder went: its marker with it
            raise _refuse(
                config,
                f"is missing although this silo's copy of its lineage ({records_path(ws)}) "
                f"holds {spent} privacy_spent statements",
            )
        return {"runs": {}, "resets": []}
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _refuse(config, f"cannot be read ({exc})") from exc
    key = load_silo_key(config.key_path, config.workspace)
    if isinstance(doc, dict) and doc.get("format") == FORMAT:
        return _verified(config, doc, key)
    if signed_before:
        raise _refuse(config, "is not signed although a signed budget was written before")
    state = _migrated(config, doc)
    save(config, state, key)
    log.warning(
        "privacy budget %s was unsigned (an older fedsilo); it is now signed with this silo's "
        "key, and an unsigned or edited file will be refused from now on",
        path,
    )
    return state


def _verified(config: SiloConfig, doc: dict[str, Any], key: Ed25519PrivateKey) -> State:
    state = doc.get("state")
    try:
        signature = bytes.fromhex(str(doc.get("signature", "")))
        key.public_key().verify(signature, SIGNING_PREFIX + _canonical(state))  # type: ignore[arg-type]
    except (InvalidSignature, ValueError, TypeError) as exc:
        if _spent_under_other_key(doc, key) is not None:
            raise _refuse(
                config,
                f"is signed by another key ({str(doc.get('silo_key'))[:16]}...) than this "
                f"silo's ({_public_hex(key)[:16]}...): the silo's identity key changed. "
                f"Restore the key file {config.key_path} it was signed with rather than reset",
            ) from exc
        raise _refuse(
            config, "does not match its signature (edited by hand, or signed by another key)"
        ) from exc
    if not isinstance(state, dict) or not isinstance(state.get("runs"), dict):
        raise _refuse(config, "is signed but not a budget state")
    return state


def _read_doc(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def _spent_under_other_key(doc: Any, key: Ed25519PrivateKey) -> dict[str, Any] | None:
    """The runs of a budget that verifies under the key it names, when that is not `key`
    (the silo's key changed, not the budget), else None."""
    if not isinstance(doc, dict) or doc.get("silo_key") == _public_hex(key):
        return None
    try:
        other = Ed25519PublicKey.from_public_bytes(bytes.fromhex(str(doc.get("silo_key"))))
        signature = bytes.fromhex(str(doc.get("signature", "")))
        other.verify(signature, SIGNING_PREFIX + _canonical(doc.get("state")))  # type: ignore[arg-type]
    except (InvalidSignature, ValueError, TypeError):
        return None
    runs = doc["state"].get("runs") if isinstance(doc.get("state"), dict) else None
    return runs if isinstance(runs, dict) else None


def _migrated(config: SiloConfig, doc: Any) -> State:
    """An old unsigned file ({run_id: {"sigma", "rounds"}}) as a state, if it parses."""
    try:
        runs = {
            str(rid): {"sigma": float(e["sigma"]), "rounds": int(e["rounds"])}
            for rid, e in doc.items()
        }
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise _refuse(config, "is neither a signed budget nor an older unsigned one") from exc
    return {"runs": runs, "resets": []}


def save(config: SiloConfig, state: State, key: Ed25519PrivateKey | None = None) -> None:
    """Sign `state` with the silo's key and write it (0600, atomically)."""
    key = key or load_silo_key(config.key_path, config.workspace)
    doc = {
        "format": FORMAT,
        "silo_key": _public_hex(key),
        "state": state,
        "signature": key.sign(SIGNING_PREFIX + _canonical(state)).hex(),
    }
    path = budget_path(config.workspace)
    private_dir(path.parent)
    # durable: a power cut must not leave an empty or torn budget (which stops training until
    # it is reset) nor lose a round counted before its message was sent; once a round, cheap
    write_private(path, json.dumps(doc, indent=2, sort_keys=True).encode(), durable=True)
    marker = _marker(config.workspace)
    if not marker.exists():
        write_private(marker, MARKER_TEXT.format(at=_now()).encode(), durable=True)


def check(config: SiloConfig) -> None:
    """Verify the budget file (and sign an old unsigned one); raises `PrivacyBudgetError`."""
    load(config)


def reset(config: SiloConfig, reason: str, *, discard_valid: bool = False) -> Path | None:
    """Start the budget again from zero, on the operator's explicit decision.

    The current file (if any) is renamed ``spent.json.rejected-<UTC time>`` (with ``-2``, ``-3``
    ... when that name is taken); the new signed state records the reset (time, reason, the
    rejected file's name and sha256). Returns the rejected file's path.

    Raises
    ------
    PrivacyBudgetError
        The budget verifies and `discard_valid` is not set: a reset would forget rounds spent.
    """
    if not reason.strip():
        raise ValueError("a privacy budget reset needs a reason (it is recorded)")
    path = budget_path(config.workspace)
    try:
        runs = load(config)["runs"]
    except PrivacyBudgetError:
        # one that verifies under the key it names is valid: only the silo's key changed
        runs = _spent_under_other_key(
            _read_doc(path), load_silo_key(config.key_path, config.workspace)
        )
    if runs is None:
        valid = False
    else:
        valid = bool(runs)  # a budget that spent nothing loses nothing in a reset
        if valid and not discard_valid:
            spent = sum(e["rounds"] for e in runs.values())
            raise PrivacyBudgetError(
                f"privacy budget {path} verifies (it records {spent} noised rounds over "
                f"{len(runs)} runs): refusing to reset it, which would forget them; add "
                "--discard-valid-budget to discard a valid budget on purpose"
            )
    at = _now()
    record: dict[str, Any] = {"at": at, "reason": reason.strip()}
    if valid:
        record["discarded_valid_budget"] = True
    kept = None
    if path.exists():
        kept = _unused(path.with_name(f"{path.name}.rejected-{at.replace(':', '')}"))
        record.update(
            rejected=kept.name, rejected_sha256=hashlib.sha256(path.read_bytes()).hexdigest()
        )
        path.replace(kept)
    save(config, {"runs": {}, "resets": [record]})
    log.warning("privacy budget %s reset: %s", path, reason)
    return kept


def _unused(path: Path) -> Path:
    """`path`, or `path-2`, `path-3`...: the first that does not exist (a kept file is never
    overwritten, even by two resets in the same second)."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def main(argv: list[str] | None = None) -> int:
    """``python -m silos.privacy_budget {check,reset} --config silo.toml [--reason ...]``."""
    parser = argparse.ArgumentParser(prog="python -m silos.privacy_budget", description=__doc__)
    parser.add_argument("action", choices=["check", "reset"])
    parser.add_argument("--config", required=True, help="the silo's silo.toml")
    parser.add_argument("--reason", default="", help="why the budget is reset (recorded)")
    parser.add_argument(
        "--discard-valid-budget", action="store_true", help="reset even a budget that verifies"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        config = load_silo_config(args.config)
        if args.action == "check":
            check(config)
            print(f"privacy budget {budget_path(config.workspace)}: signature verified")
        else:
            kept = reset(config, args.reason, discard_valid=args.discard_valid_budget)
            print(f"privacy budget reset; previous file kept as {kept}" if kept else "reset")
    except (PrivacyBudgetError, SiloConfigError, ValueError) as exc:
        print(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
