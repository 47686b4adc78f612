"""A federation's certificate authority for XGBoost's collective: CA, server and silo certs.

The collective's gRPC server requires and verifies client certificates against the CA given
as its ``client_cert_path``, and every worker verifies the server against the same CA. So the
federation runs one small CA: the coordinator issues the service a server certificate (with
the address silos dial in its subjectAltName) and each approved silo a client certificate
(CN = the silo's name). ECDSA P-256 keys, SHA-256 signatures, short validity by default.
"""

from __future__ import annotations

# The general certificate code moved to aggregation.pki (the service's mutual TLS uses it too);
# this module keeps the names the collective's callers import.
from aggregation.pki import Issued, Key, issue_ca, issue_leaf, write_private_key

__all__ = ["Issued", "Key", "issue_ca", "issue_leaf", "write_private_key"]
