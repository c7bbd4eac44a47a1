"""tools/rdoq.py --write: stores a lambda and the model's distortion weights in its entropy tables (their id
unchanged), or says in one line why it cannot."""
from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

from vitok.codecs.entropy import load_entropy_tables

TOOL = Path(__file__).resolve().parents[2] / "tools" / "rdoq.py"


@pytest.mark.skipif(not TOOL.is_file(), reason="tools/ is not in this checkout")
def test_write_stores_a_lambda_or_refuses_it_in_one_line(tinygrid, tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("rdoq_tool", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    model = tmp_path / "m"
    shutil.copytree(tinygrid[2], model)
    before = load_entropy_tables(model)
    monkeypatch.setattr(sys, "argv", ["rdoq.py", str(model), "--write", "0.1"])
    tool.main()
    after = load_entropy_tables(model)
    assert after.rd_lambda == 0.1 and after.table_id == before.table_id
    w = after.distortion_weights   # measured on the training segments: positive, mean 1, not all alike
    assert w.shape == (before.channels,) and (w > 0).all() and w.mean() == pytest.approx(1, abs=1e-3) and w.std() > 0
    assert "wrote lambda 0.1" in capsys.readouterr().out
    monkeypatch.setattr(tool, "distortion_weights", None)   # refused before any measuring
    for argv, message in ([str(model), "--write", "-1"], r"rd_lambda must be a number in \[0, 100\], got -1\.0"), \
                         ([str(model), "0.1", "-2"], r"rd_lambda must be a number in \[0, 100\], got -2\.0"), \
                         ([str(tmp_path / "nothing"), "--write", "0.1"], r".*nothing"):
        monkeypatch.setattr(sys, "argv", ["rdoq.py", *argv])
        with pytest.raises(SystemExit, match=rf"^error: (entropy tables: )?{message}"):
            tool.main()
    assert load_entropy_tables(model).meta == after.meta   # left as it was
