"""Golden streams: `.vtok` files written once by the bundled models (tools/golden_streams.py) decode to exactly the
integers they held, so no change to vitok, its format or CompressAI's coder leaves older files undecodable."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from vitok.codecs.neural import VitokCodec

GOLDEN = Path(__file__).resolve().parent / "golden"
TOOL = Path(__file__).resolve().parents[2] / "tools" / "golden_streams.py"
EXPECTED = json.loads((GOLDEN / "expected.json").read_text())


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("golden_streams", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not TOOL.is_file(), reason="tools/ is not in this checkout")
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_golden_stream_decodes_to_the_same_integers(tool, name):
    want = EXPECTED[name]
    data = (GOLDEN / f"{name}.vtok").read_bytes()
    codec = VitokCodec(want["model"])
    assert len(data) == want["bytes"] and tool.symbols_hash(codec, data) == want["symbols"]
    frames, _ = codec.decode(data)   # pixels may move by one level on other hardware: the PSNR stays
    assert tool.psnr(frames, tool.golden_frames(name)) == pytest.approx(want["psnr"], abs=0.05)


@pytest.mark.parametrize("model", sorted({v["model"] for v in EXPECTED.values()}))
def test_every_golden_stream_decodes_with_the_tables_it_names_and_todays_are_pinned(model):
    """Streams coded with a bundled model's earlier tables decode with those tables, kept beside the model and found
    by the id the stream names; and some golden stream names the tables the model codes with today (new tables
    need a new golden stream: `python tools/golden_streams.py NAME`)."""
    from vitok.codecs.container import VtokReader

    codec = VitokCodec(model)
    named = []
    for name in (n for n, v in EXPECTED.items() if v["model"] == model):
        with VtokReader(GOLDEN / f"{name}.vtok") as r:
            named.append(r.header.meta["tables"])
            assert codec.for_stream(r.header).tables.table_id == named[-1]
    assert codec.tables.table_id in named


def test_kept_tables_of_other_weights_are_not_used_and_old_pickles_decode(tmp_path):
    """Kept tables left from other weights (a model retrained into its folder) are passed over, so the stream is
    refused for what it is, a table mismatch; a codec pickled before kept tables existed still decodes."""
    import pickle
    import shutil

    from vitok.codecs.entropy import EntropyTables, kept_name
    from vitok.codecs.errors import BitstreamError
    from vitok.codecs.models import bundled_dir

    folder = tmp_path / "g"
    shutil.copytree(bundled_dir("vitok-grid"), folder)
    data = (GOLDEN / "grid.vtok").read_bytes()
    kept = folder / kept_name(VitokCodec(folder).for_stream(_header(data)).tables.table_id)
    tables = EntropyTables.load(kept)
    tables.meta["weights_hash"] = "ab" * 32
    tables.save(kept)
    with pytest.raises(BitstreamError, match="entropy table mismatch"):
        VitokCodec(folder).decode(data)
    old = VitokCodec("vitok-grid")
    state = {k: v for k, v in old.__getstate__().items() if k not in ("_earlier", "_in_folder", "_tile_overlap")}
    again = VitokCodec.__new__(VitokCodec)   # as pickle rebuilds one
    again.__setstate__(pickle.loads(pickle.dumps(state)))   # a codec pickled by the vitok before
    today = next(data for data in ((GOLDEN / f"{n}.vtok").read_bytes() for n in EXPECTED)
                 if _header(data).meta["tables"] == old.tables.table_id)   # a stream of the tables it codes with
    assert again.decode(today)[0].shape == (9, 48, 64, 3)


def _header(data: bytes):
    from vitok.codecs.container import VtokReader

    with VtokReader(data) as r:
        return r.header
