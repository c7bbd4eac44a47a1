"""tools/deadzone.py --write: stores a deadzone in a model's entropy tables (their id unchanged), or says in one
line why it cannot."""
from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

from vitok.codecs.entropy import load_entropy_tables

TOOL = Path(__file__).resolve().parents[2] / "tools" / "deadzone.py"


@pytest.mark.skipif(not TOOL.is_file(), reason="tools/ is not in this checkout")
def test_write_stores_a_deadzone_or_refuses_it_in_one_line(tiny1d, tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("deadzone_tool", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    model = tmp_path / "m"
    shutil.copytree(tiny1d[2], model)
    before = load_entropy_tables(model)
    monkeypatch.setattr(sys, "argv", ["deadzone.py", str(model), "--write", "0.1"])
    tool.main()
    after = load_entropy_tables(model)
    assert after.deadzone == 0.1 and after.table_id == before.table_id
    assert "wrote deadzone 0.1" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["deadzone.py", str(model), "--write", "0.7"])
    with pytest.raises(SystemExit, match=r"^error: entropy tables: deadzone must be a number in \[0, 0\.5\), "
                                         r"got 0\.7$"):
        tool.main()
    assert load_entropy_tables(model).deadzone == 0.1   # left as it was
