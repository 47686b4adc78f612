"""The agent's warm-up: validate and load the silo's data once at start, then report ready.

Great Expectations' first run in a process costs tens of seconds on a loaded machine (imports,
context, suite). Paying it at start, before any round opens, keeps round 1 inside its
deadline; the gate's result is cached in the workspace, so round 1 only re-fingerprints the
table. The service hears the outcome (`ReadyIn`): a silo whose data failed still serves, and
declines each round with the reason.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from schemas.wire import ReadyIn
from silos import memory
from silos.client import SiloClient
from silos.client_errors import ServiceRejected
from silos.config import SiloConfig
from silos.contract_store import check_at_start, contract_for
from silos.dask_data import prepare_run_data
from silos.round_gate import check_round

log = logging.getLogger("fedsilo.silo")


@dataclass(frozen=True)
class WarmUp:
    report: ReadyIn
    seconds: float


def warm_up(config: SiloConfig) -> WarmUp:
    """Run the validation gate and load the data once; never raises on bad data or contract."""
    # GX announces hundreds of registrations at INFO on its first import: not the silo's news
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    started = time.monotonic()
    contract_name, version, data_sha = config.data.contract, "unknown", None
    try:
        contract = contract_for(config)
        contract_name, version = contract.name, contract.version
        summary = check_round(config).summary
        data_sha = summary.data_sha256
        if not summary.success:
            detail = f"data failed contract {contract.name} v{contract.version}: {summary.reason()}"
        else:
            prepare_run_data(config)  # the split and encoding: one class only fails here
            detail = ""
    except Exception as exc:  # reported to the service and declined per round, not fatal here
        detail = f"{type(exc).__name__}: {exc}"
    report = ReadyIn(
        contract=contract_name,
        contract_version=str(version),
        data_sha256=data_sha,
        validated=not detail,
        detail=" ".join(detail.split())[:2000],
    )
    return WarmUp(report, time.monotonic() - started)


def warm_up_and_report(client: SiloClient, config: SiloConfig) -> WarmUp:
    """`warm_up`, logged, then ``POST /v1/silo/ready``."""
    check_at_start(client, config)  # the pinned contract version, or news of a published one
    result = warm_up(config)
    memory.release()  # idle at the warm-up's garbage-free size, not at its peak
    if result.report.validated:
        log.info(
            "silo %s: warmed up in %.1fs: data %s… passed contract %s v%s and loaded",
            config.silo.name,
            result.seconds,
            (result.report.data_sha256 or "")[:12],
            result.report.contract,
            result.report.contract_version,
        )
    else:
        log.warning(
            "silo %s: warmed up in %.1fs, but its data cannot take part (it will decline "
            "rounds until fixed): %s",
            config.silo.name,
            result.seconds,
            result.report.detail,
        )
    try:
        client.ready(result.report)
    except ServiceRejected as exc:  # an older service without the route: serve anyway
        log.warning("silo %s: the service did not take its ready report: %s", client.silo, exc)
    return result
