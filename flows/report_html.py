"""HTML building blocks of the report: inline CSS, escaping, tables, formatted values.

Cells passed to `table` are HTML already; everything that comes from the ledger goes through
`esc` first.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1200px;
color:#1d232a;padding:0 1rem;line-height:1.4}
h1{margin-bottom:.2rem}h2{border-bottom:2px solid #d0d7de;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}
th,td{border:1px solid #d0d7de;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f5f7}code,pre{font-family:ui-monospace,monospace;font-size:.85rem}
pre{background:#f6f8fa;padding:.6rem;overflow-x:auto}
.pass{color:#116329;font-weight:600}.fail{color:#b42318;font-weight:600}
.banner{padding:.7rem 1rem;border-radius:6px;margin:1rem 0;font-weight:600}
.banner.pass{background:#dafbe1;border:1px solid #4ac26b}
.banner.fail{background:#ffebe9;border:1px solid #ff8182}
.muted{color:#57606a}img{max-width:100%;border:1px solid #d0d7de}
"""


def esc(value: Any) -> str:
    """HTML-escape any value's text, quotes included (safe in attributes)."""
    return html.escape(str(value), quote=True)


def table(headers: Sequence[str] | None, rows: Iterable[Sequence[str]]) -> str:
    """An HTML table; cells are already-escaped HTML. Without headers the first column is one."""
    head = ""
    if headers is not None:
        head = "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr></thead>"
        body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    else:
        body = "".join(
            f"<tr><th>{row[0]}</th>" + "".join(f"<td>{c}</td>" for c in row[1:]) + "</tr>"
            for row in rows
        )
    return f"<table>{head}<tbody>{body}</tbody></table>"


def digest(value: Any) -> str:
    """A sha256 shortened for reading, the full value in the tooltip and copyable text."""
    text = str(value or "")
    if not text:
        return "-"
    return f'<code title="{esc(text)}">{esc(text[:16])}&hellip;</code>'


def fmt(value: Any) -> str:
    """A metric or count for a table cell; ``-`` when absent."""
    if isinstance(value, float):
        # Small values (a delta of 1e-5) keep their significant digits.
        return f"{value:.4f}" if value == 0 or abs(value) >= 0.01 else f"{value:.3g}"
    return "-" if value is None else esc(value)


def verdict(ok: bool, yes: str = "PASS", no: str = "FAIL") -> str:
    """A coloured PASS/FAIL (or other) label."""
    return f'<span class="pass">{yes}</span>' if ok else f'<span class="fail">{no}</span>'
