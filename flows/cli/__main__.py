"""``python -m flows.cli``: the `fedsilo` command line (how the demo starts its processes)."""

from flows.cli import app

app()
