#!/usr/bin/env bash
# Certificates and tokens for infra/docker-compose.yml: the coordinator's and each silo
# operator's commands from infra/README.md, run on one machine for the single-host topology.
#
#   infra/bootstrap.sh [SECRETS_DIR]        # default: infra/secrets
#
# In a real federation each `silo enrol` runs on that silo's machine and only the CSR and the
# signed certificate travel between the silo operator and the coordinator.
set -euo pipefail
secrets=${1:-$(dirname "$0")/secrets}
federation=${FEDSILO_FEDERATION:-heart}
silos=${FEDSILO_SILOS:-cleveland hungary va_long_beach}
fedsilo=${FEDSILO:-fedsilo}

# coordinator: the federation's CA, the service's and coordinator's certificates, the tokens
"$fedsilo" federation init --federation "$federation" --dir "$secrets/federation" --host service

for silo in $silos; do
    # silo operator: identity key, TLS key and certificate request (send silo.csr)
    "$fedsilo" silo enrol --federation "$federation" --silo "$silo" --dir "$secrets/$silo" \
        --token-file "$secrets/federation/ca/enrolment.token"
    # coordinator: check the request and sign it (send back silo.pem and ca.pem)
    "$fedsilo" federation sign-csr "$secrets/$silo/silo.csr" --dir "$secrets/federation" \
        --out "$secrets/$silo/silo.pem"
done
