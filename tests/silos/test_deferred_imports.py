"""silos.deferred_imports: a placeholder until first use, then the real module, imported once."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from silos.deferred_imports import Deferred, defer, is_deferred, load


@pytest.fixture
def probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A module of our own on sys.path that counts its imports in a file."""
    name = f"fedsilo_probe_{tmp_path.name.replace('-', '_')}"
    counter = tmp_path / "imports"
    (tmp_path / f"{name}.py").write_text(
        "from pathlib import Path\n"
        f"_c = Path({str(counter)!r})\n"
        "_c.write_text(str(int(_c.read_text() or 0) + 1) if _c.exists() else '1')\n"
        "ANSWER = 42\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def _imports(probe: str) -> int:
    """How often `probe` ran: its counter file sits beside it, in the first sys.path entry
    (the fixture's tmp_path)."""
    path = Path(sys.path[0], "imports")
    assert Path(sys.path[0], f"{probe}.py").exists()
    return int(path.read_text()) if path.exists() else 0


def test_placeholder_imports_the_real_module_at_first_use(probe: str) -> None:
    assert defer(probe) == [probe]
    placeholder = sys.modules[probe]
    assert isinstance(placeholder, Deferred) and is_deferred(probe)
    assert _imports(probe) == 0
    imported = importlib.import_module(probe)  # an import statement gets the placeholder
    assert imported is placeholder and _imports(probe) == 0
    assert placeholder.ANSWER == 42  # first attribute read: the real import
    assert _imports(probe) == 1 and not is_deferred(probe)
    real = sys.modules[probe]
    assert not isinstance(real, Deferred) and real.ANSWER == 42
    assert placeholder.ANSWER == 42 and load(probe) is real and _imports(probe) == 1


def test_imported_or_missing_modules_are_left_alone(probe: str) -> None:
    real = importlib.import_module(probe)
    assert defer(probe, "fedsilo_no_such_module") == []
    assert sys.modules[probe] is real and "fedsilo_no_such_module" not in sys.modules
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("fedsilo_no_such_module")
