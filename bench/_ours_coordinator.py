"""fedsilo's coordinator for one benchmark run, as its own process (what `fedsilo train` runs,
plus the secure-aggregation switch the CLI does not expose): runs the `federated_training`
flow for a RunSpec given as JSON and writes the flow's result as JSON.

    python bench/_ours_coordinator.py --service-url URL --token-file F --spec SPEC.json --out R.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows.coordinator import federated_training  # noqa: E402
from schemas.specs import RunSpec  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--service-url", required=True)
    parser.add_argument("--token-file", type=Path, required=True)
    parser.add_argument("--spec", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models-dir", type=Path, required=True)
    args = parser.parse_args()
    spec = RunSpec.model_validate_json(args.spec.read_text())
    result = federated_training(
        service_urls=[args.service_url],
        admin_token_file=str(args.token_file.resolve()),
        federation=spec.federation,
        dataset=spec.dataset,
        model=spec.model,
        strategy=spec.strategy,
        training=spec.training,
        rounds=spec.rounds,
        min_silos=spec.min_silos,
        round_deadline_s=spec.round_deadline_s,
        output_dir=str(args.models_dir),
        secure_aggregation=spec.secure_aggregation,
    )
    args.out.write_text(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
