"""Make ``release-NNNN-hub.tar.gz`` (test_upgrade.py's fixture) with a previous release's code.

The hub is written by that release itself: its service, four real silo agents and a 2-round
logreg run (plain aggregation), so every row comes through its schema. For release 0007:

    git archive f3e55a7 | tar -x -C /tmp/prev
    PYTHONPATH=/tmp/prev:/tmp/prev/tests PREFECT_API_URL=http://127.0.0.1:4200/api \
        .venv/bin/python tests/infra/data/make_release_hub.py /tmp/hub-root \
        http://127.0.0.1:4200/api tests/infra/data/release-0007-hub.tar.gz

The service stops cleanly before the archive is written, so SQLite has no -wal left over.
"""

import sys
import tarfile
from pathlib import Path

import aggregation

assert len(sys.argv) == 4, __doc__
print("writing a hub with the release at", Path(aggregation.__file__).parent.parent)
from support.fault_helpers import start_federation, train  # noqa: E402  (after the check)

root = Path(sys.argv[1])
fed = start_federation(root, sys.argv[2])
try:
    result = train(fed.urls, fed.token, root / "models", 2, secure=False, deadline_s=900)
    print("run", result["run_id"])
finally:
    fed.stop()
workspace = root / "service"
with tarfile.open(sys.argv[3], "w:gz") as tar:
    for name in ("service.db", "admin.token", "keys", "models"):
        tar.add(workspace / name, arcname=name)
