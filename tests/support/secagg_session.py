"""A secure-aggregation session past its setup stage, for tests of the later stages: the
service's half and one client per silo, each silo with a fresh identity key."""

from __future__ import annotations

from aggregation.secagg import session_server
from schemas.secagg.crypto import generate_identity, identity_public_bytes
from schemas.secagg.session_config import SessionConfig
from silos.secagg import session


def open_session(
    cfg: SessionConfig,
) -> tuple[session_server.SessionServer, dict[str, session.SessionClient]]:
    """Every silo of `cfg` starts its half and advertises its keys; the server closes setup and
    every client accepts the adverts."""
    ids = {s: generate_identity() for s in cfg.silos}
    roster = {s: identity_public_bytes(k) for s, k in ids.items()}
    srv = session_server.SessionServer(cfg, roster)
    clients = {}
    for s in cfg.silos:
        clients[s], advert = session.start_session(cfg, s, ids[s], roster)
        session_server.receive_advert(srv, advert)
    adverts = session_server.close_setup(srv)
    for client in clients.values():
        session.accept_adverts(client, adverts)
    return srv, clients
