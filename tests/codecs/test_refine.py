"""Encoder-side refinement (``refine``): tokens moved through the frozen decoder before quantizing decode better,
from streams any decoder reads, and bad settings are refused before any work."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from vitok.codecs.container import read_vtok
from vitok.codecs.errors import CodecError
from vitok.codecs.payload import parse_chunk
from vitok.codecs.refine import refine_tokens


def _psnr(rec: np.ndarray, frames: np.ndarray) -> float:
    return 10 * np.log10(255.0 ** 2 / ((rec.astype(np.float64) - frames) ** 2).mean())


@pytest.fixture(scope="module")
def tiled(clip):
    """8 frames of carphone at 72x96: 2x2 tiles of the tiny models' 64 px, overlapping."""
    from vitok.data.io import read_video
    from vitok.data.samples import sample_path

    frames, _ = read_video(sample_path("carphone"), num_frames=8)
    return np.ascontiguousarray(frames[:, 30:102, 40:136])


def _tile_error(tok, x, z, tokens=None) -> float:
    """The blended frame's squared error of tokens ``z`` (N, C) of one chunk ``x``."""
    lat = tok.make_latents(z[None], *x.shape[2:], num_tokens=tokens)
    with torch.no_grad():
        return float((tok.decode(lat).float() - x).square().sum())


@pytest.mark.parametrize("model", ["1d", "grid"])
def test_refined_tokens_decode_closer_to_the_frames(tiny1d, tinygrid, tiled, model, monkeypatch):
    """Over 2x2 overlapping tiles, refined a tile at a time (batches of 3, so a batch holds tiles of two rows), the
    blended frame's error falls with every step taken (the random-init tiny 1D model's decoder barely reads its
    tokens: its error falls by less than 0.1 %); a 1D model's tokens past the kept count stay as the encoder gave
    them."""
    import vitok.codecs.refine as refine
    from vitok.data.convert import frames_to_tensor

    monkeypatch.setattr(refine, "TILES_PER_BATCH", 3)
    tok = (tiny1d if model == "1d" else tinygrid)[0]
    x = frames_to_tensor(tiled)
    z = tok.encode(x).z[0].float()
    tokens = 8 if model == "1d" else None
    errors = [_tile_error(tok, x, refine_tokens(tok, x, z, steps, tokens), tokens) for steps in (0, 2, 10)]
    assert errors[0] > errors[1] > errors[2], errors
    if model == "grid":
        assert errors[2] < 0.97 * errors[0], errors
    else:
        k = tok.max_tokens
        refined = refine_tokens(tok, x, z, 2, tokens)
        assert torch.equal(refined.view(4, k, -1)[:, tokens:], z.view(4, k, -1)[:, tokens:])
        assert not torch.equal(refined.view(4, k, -1)[:, :tokens], z.view(4, k, -1)[:, :tokens])
    assert refine_tokens(tok, x, z, 0) is z


@pytest.mark.parametrize("step", [0.5, None])
def test_the_last_quarter_of_the_steps_render_the_tokens_rounded_to_the_step(tiny1d, clip, step, monkeypatch):
    """Given the step the tokens will be coded at, the decoder sees them on that step's grid (about the tables'
    offsets, in the tables' std) in the last steps // 4 steps, and off it before; the gradient passes through."""
    from vitok.data.convert import frames_to_tensor

    tok, tables, _ = tiny1d
    x = frames_to_tensor(clip[0][:8])
    z = tok.encode(x).z[0].float()
    seen = []
    decode = tok.decode_unit
    monkeypatch.setattr(tok, "decode_unit", lambda t, *a: seen.append(t.detach().clone()) or decode(t, *a))
    out = refine_tokens(tok, x, z, 9, 8, scale=tables.std, step=step, offset=tables.mean)
    std, mean = (torch.as_tensor(a) for a in (tables.std, tables.mean))
    on_grid = [bool(torch.allclose(v := (t[0] - mean) / std / (step or 1), v.round(), atol=1e-4)) for t in seen]
    assert on_grid == [False] * 7 + [step is not None] * 2
    rounded_last = refine_tokens(tok, x, z, 9, 8, scale=tables.std, step=0.5, offset=tables.mean)
    assert torch.equal(out, rounded_last) == (step is not None)   # the rounded steps moved the tokens elsewhere
    assert not torch.equal(out.view(-1, 16)[:8], z.view(-1, 16)[:8])
    with pytest.raises(ValueError, match="scale"):   # a step in no known units
        refine_tokens(tok, x, z, 4, 8, step=0.5)


def test_the_bundled_1d_model_decodes_better_refined_for_its_step():
    """On held-out segment 6 at 64 tokens and step 1, the codec's tokens, refined 8 steps with the last 2 rounded to
    the step, decode better than tokens refined unrounded and coded the same way (+0.72 dB; +0.07 to +0.32 on
    segments 0, 2 and 4), for about the same bytes (README, "Encoder-side refinement", for the sweep's figures)."""
    from vitok.codecs.neural import VitokCodec
    from vitok.data.convert import frames_to_tensor
    from vitok.data.samples import eval_segments

    _, frames = eval_segments(num_frames=17, size=128)[6]
    codec = VitokCodec("vitok-1d").with_refinement(8)
    data = codec.encode(frames, Fraction(25), tokens=64, step=1.0)
    tok, tables = codec.tok, codec.tables
    x = frames_to_tensor(frames)
    plain = refine_tokens(tok, x, tok.encode(x).z[0].float(), 8, 64, scale=tables.std)
    code = codec._code_tokens((plain.view(1, tok.max_tokens, -1), None), 17, 64, 1.0)
    psnr_plain = _psnr(codec.reconstruct(code.q, 64, 1.0, 17, 128, 128), frames)
    psnr_rounded = _psnr(codec.decode(data)[0], frames)
    assert psnr_rounded > psnr_plain + 0.4, (psnr_rounded, psnr_plain)
    assert len(data) < 1.1 * len(code.payload) + 60, (len(data), len(code.payload))   # + the file's header


def test_refine_zero_codes_as_before_and_refined_streams_decode_anywhere(codec1d, clip):
    frames, fps = clip
    plain = codec1d.encode(frames, fps, tokens=8)
    assert codec1d.encode(frames, fps, tokens=8, refine=0) == plain
    refined = codec1d.encode(frames, fps, tokens=8, refine=5)
    assert refined != plain and codec1d.with_refinement(5) is not codec1d
    assert codec1d.encode(frames, fps, tokens=8, refine=np.int64(5)) == refined
    rec_plain, _ = codec1d.decode(plain)
    rec, _ = codec1d.decode(refined)   # a codec that never refines decodes it
    assert _psnr(rec, frames) > _psnr(rec_plain, frames)
    assert read_vtok(refined)[0] == read_vtok(plain)[0]   # the same header: nothing about refining is stored


def test_the_bundled_1d_model_gains_on_a_held_out_segment():
    """The shipped 1D model at 64 tokens on a held-out 17x128x128 segment: 5 steps already buy a fraction of a dB
    (20 steps: about +1 dB; README, "Encoder-side refinement")."""
    from vitok.codecs.neural import VitokCodec
    from vitok.data.samples import eval_segments

    _, frames = eval_segments(num_frames=17, size=128)[0]
    codec = VitokCodec("vitok-1d")
    plain, refined = (codec.encode(frames, Fraction(25), tokens=64, refine=r) for r in (0, 5))
    gain = _psnr(codec.decode(refined)[0], frames) - _psnr(codec.decode(plain)[0], frames)
    assert gain > 0.2, gain
    assert len(refined) < 1.2 * len(plain)


def test_a_byte_budget_codes_each_count_from_its_own_refined_tokens(codec1d, clip):
    """Rate control refines a 1D chunk's tokens for every count it weighs; the chosen count is coded from the tokens
    refined for it, so each chunk's PSNR is what was weighed and the budget holds."""
    frames, fps = clip
    budget = len(codec1d.encode(frames, fps, tokens=6))
    data, stats = codec1d.encode_with_stats(frames, fps, bytes=budget, refine=4)
    assert len(data) <= budget
    header, chunks = read_vtok(data)
    assert all(parse_chunk(p)[2] for _, p in chunks)
    for chunk, rec, psnr in zip((frames[:8], frames[8:16], frames[16:]), codec1d.iter_decode(data),
                                stats.chunk_psnr):
        assert psnr == pytest.approx(_psnr(rec, chunk), abs=1e-9)


def _refined_for(codec, frames, picks):
    """``_unit_costs``' choices of ``frames`` at step 0.5, refined where a rate control picking ``picks`` (a
    candidate index per unit) looks."""
    import contextlib

    choices = codec._unit_costs(frames, 0.5)
    codec._refine_picks([choices], lambda _: [list(picks)], 0.5, lambda _: contextlib.nullcontext((frames, choices)))
    return choices


def test_per_tile_rate_control_codes_each_tile_from_tokens_refined_for_its_count(codec1d, tiled):
    """Per-tile rate control refines the counts it picks; a tile coded with k tokens holds exactly the integers it
    holds when the whole chunk is coded at k (tiles are refined apart), whatever the other tiles keep. A PSNR target
    then reports the PSNR the stream decodes to, and a byte budget holds."""
    fps = Fraction(25)
    refining = codec1d.with_refinement(4)
    mixed = (1, 8, 4, 8)
    counts = refining._unit_costs(tiled, 0.5).costs.counts
    choices = _refined_for(refining, tiled, [counts.index(k) for k in mixed])
    code = refining._code_units(choices, mixed, 0.5, len(tiled))
    begins = np.cumsum((0,) + mixed)
    for k in set(mixed):
        _, q, tokens, _ = next(refining.iter_symbols(refining.encode(tiled, fps, tokens=k, refine=4,
                                                                       adapt_units=False)))
        assert tokens == k
        for u, kept in enumerate(mixed):
            if kept == k:
                assert np.array_equal(code.q[begins[u]:begins[u + 1]], q[u * k:(u + 1) * k]), (k, u)
    plain = codec1d._unit_costs(tiled, 0.5)
    assert not np.array_equal(codec1d._code_units(plain, mixed, 0.5, len(tiled)).q, code.q)   # refined

    few, all_ = (_psnr(refining.decode(refining.encode(tiled, fps, tokens=k, adapt_units=False))[0], tiled)
                 for k in (1, refining.tok.max_tokens))
    target = (few + all_) / 2   # within reach (the random-init model's PSNR barely moves with its tokens)
    data, stats = codec1d.encode_with_stats(tiled, fps, psnr=target, refine=4)
    assert data != codec1d.encode(tiled, fps, psnr=target)   # refined
    rec, _ = codec1d.decode(data)
    assert stats.chunk_psnr[0] == pytest.approx(_psnr(rec, tiled), abs=1e-9) and stats.chunk_psnr[0] >= target
    budget = len(codec1d.encode(tiled, fps, tokens=4, adapt_units=False))
    data = codec1d.encode(tiled, fps, bytes=budget, refine=4)
    assert len(data) <= budget and data != codec1d.encode(tiled, fps, bytes=budget)


def test_units_refined_alone_match_their_tiles_refined_together(tiny1d, tiled):
    """``refine_tokens`` refines any units of a chunk (``tiles``, one repeated, each with its own count) as it refines
    them with the whole chunk: a tile's steps do not depend on the tiles beside it, nor on other counts."""
    from vitok.data.convert import frames_to_tensor

    tok = tiny1d[0]
    x = frames_to_tensor(tiled)
    k = tok.max_tokens
    z = tok.encode(x).z[0].float().view(4, k, -1)
    whole = {n: refine_tokens(tok, x, z.reshape(-1, z.shape[-1]), 3, n).view(4, k, -1) for n in (4, 8)}
    picked = refine_tokens(tok, x, z[[2, 2, 0]].reshape(-1, z.shape[-1]), 3, [4, 8, 8], tiles=[2, 2, 0]).view(3, k, -1)
    for j, (u, n) in enumerate([(2, 4), (2, 8), (0, 8)]):
        torch.testing.assert_close(picked[j], whole[n][u], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="2 token counts for 3 units"):
        refine_tokens(tok, x, z[[2, 2, 0]].reshape(-1, z.shape[-1]), 3, [4, 8], tiles=[2, 2, 0])


def test_per_tile_rate_control_refines_the_counts_it_picks_not_every_count(codec1d, tiled, monkeypatch):
    """Refinement follows the picks: each tile's picked count, the two below it and the one above are refined,
    again as the refined costs move the picks, until they rest on refined counts. Under a PSNR target, the counts
    coded are refined ones, and some counts never are."""
    refining = codec1d.with_refinement(4)
    counts = refining._unit_costs(tiled, 0.5).costs.counts
    assert len(counts) == 5
    fixed = _refined_for(refining, tiled, [3, 4, 0, 2])
    assert fixed.refined.tolist() == [[c in range(1, 5) for c in range(5)], [c in range(2, 5) for c in range(5)],
                                      [c in range(0, 2) for c in range(5)], [c in range(0, 4) for c in range(5)]]

    seen, real = [], refining._unit_costs
    monkeypatch.setattr(refining, "_unit_costs", lambda *a: seen.append(real(*a)) or seen[-1])
    fps = Fraction(25)
    few, all_ = (_psnr(refining.decode(refining.encode(tiled, fps, tokens=k, adapt_units=False))[0], tiled)
                 for k in (1, refining.tok.max_tokens))
    _, stats = refining.encode_with_stats(tiled, fps, psnr=(few + all_) / 2)
    (choices,) = seen
    coded = stats.tokens[0] if isinstance(stats.tokens[0], tuple) else (stats.tokens[0],) * 4   # one count: an int
    assert all(choices.refined[u, counts.index(k)] for u, k in enumerate(coded)), (coded, choices.refined)
    assert not choices.refined.all(), choices.refined


def test_refinement_follows_the_picks_as_they_move(codec1d, tiled):
    """Picks that move once their counts are refined are refined around again, until they rest on refined ones."""
    import contextlib

    refining = codec1d.with_refinement(2)
    choices = refining._unit_costs(tiled, 0.5)
    picks, asked = iter([4, 3]), []

    def choose(_):
        asked.append(next(picks, 3))
        return [[asked[-1]] * 4]

    refining._refine_picks([choices], choose, 0.5, lambda _: contextlib.nullcontext((tiled, choices)))
    assert asked == [4, 3, 3] and choices.refined.tolist() == [[False, True, True, True, True]] * 4


def test_a_refining_byte_budget_codes_refined_counts_in_every_chunk_and_tile(codec1d, monkeypatch):
    """Over two chunks of 2x2 tiles, a refining byte budget codes every tile's count from tokens refined for it,
    whatever target its tightening reaches, and the budget holds."""
    from vitok.data.io import read_video
    from vitok.data.samples import sample_path

    frames, _ = read_video(sample_path("carphone"), num_frames=12)
    frames, fps = np.ascontiguousarray(frames[:, 30:102, 40:136]), Fraction(25)
    refining, coded = codec1d.with_refinement(2), []
    real = refining._code_units

    def spy(choices, tokens, *args):
        coded.append([bool(choices.refined[u, choices.costs.counts.index(k)]) for u, k in enumerate(tokens)])
        return real(choices, tokens, *args)

    monkeypatch.setattr(refining, "_code_units", spy)
    budget = len(codec1d.encode(frames, fps, tokens=4, adapt_units=False))
    data = refining.encode(frames, fps, bytes=budget)
    assert len(data) <= budget and len(coded) >= 2 and all(all(tiles) for tiles in coded), coded
    assert len(codec1d.decode(data)[0]) == 12


def _counting_refinements(codec, monkeypatch, chunks=None) -> list:
    """The token counts ``codec`` refines whole chunks for (``_for_count``), recorded from now on; with ``chunks``
    (their frames), as (chunk index, count)."""
    counts, real = [], codec._for_count

    def counting(frames, given, k, step):
        which = [n for n, c in enumerate(chunks) if np.array_equal(c, frames)] if chunks else None
        counts.append((*which, k) if chunks else k)
        return real(frames, given, k, step)

    monkeypatch.setattr(codec, "_for_count", counting)
    return counts


def test_a_per_chunk_psnr_target_searches_refined_counts_where_plain_ones_say(codec1d, tiled, monkeypatch):
    """Per-chunk rate control under a PSNR target probes refined counts where the counts coded plain (cheap) say
    the target lies: it picks the cheapest refined count reaching the target, as bisection did, refining fewer
    counts (here 3 against bisection's 4), and codes that count's refined tokens. The tiny model's pixels hardly
    depend on its tokens, so its PSNRs are stood in for: a rising ladder, plain counts 1.5 dB short of it."""
    from dataclasses import replace

    fps, refining = Fraction(25), codec1d.with_refinement(2)
    grid = [k for k, _ in refining._rate_candidates(None)]
    ladder = {k: 20.0 + 2 * i for i, k in enumerate(grid)}   # each count's refined PSNR
    given, real_tokens, real_evaluate = [], refining._tokens_of, refining._evaluate

    def evaluate(frames, tokens, step, tokens_of, prev=None):
        cand, code = real_evaluate(frames, tokens, step, tokens_of, prev)
        psnr = ladder[tokens] - (1.5 if tokens_of is given[-1] else 0.0)   # the encoder's tokens: plain
        cand = replace(cand, sse=frames.size * 255.0 ** 2 / 10 ** (psnr / 10))
        code.psnr = cand.psnr
        return cand, code

    monkeypatch.setattr(refining, "_tokens_of", lambda frames: given.append(real_tokens(frames)) or given[-1])
    monkeypatch.setattr(refining, "_evaluate", evaluate)
    counts = _counting_refinements(refining, monkeypatch)
    for target in (20.5, 25.0, 33.0, 35.0):
        counts.clear()
        data, stats = refining.encode_with_stats(tiled, fps, psnr=target, adapt_units=False)
        expected = min((k for k in grid if ladder[k] >= target), default=grid[-1])
        assert stats.tokens == [expected] and stats.chunk_psnr[0] == pytest.approx(ladder[expected])
        assert expected in counts and len(counts) == len(set(counts)) <= 3, (target, counts)
        _, q, *_ = next(refining.iter_symbols(data))
        _, alone, *_ = next(refining.iter_symbols(refining.encode(tiled, fps, tokens=expected, adapt_units=False)))
        assert np.array_equal(q, alone)


def test_a_per_chunk_byte_budget_refines_around_its_picks_and_codes_refined_counts(codec1d_inter, clip, monkeypatch):
    """Per-chunk rate control under a byte budget (chunks of one tile, predicted from the chunk before) weighs
    every count from the encoder's tokens and refines only around the picks it looks at (each pick, two counts
    below and one above); each chunk's integers are those of the chunk coded alone at its count, refined, and the
    budget holds."""
    import vitok.codecs.neural as neural

    frames, fps = clip
    chunks = (frames[:8], frames[8:16], frames[16:])
    refining = codec1d_inter.with_refinement(2)
    grid, real = refining._rate_candidates(None), neural.allocate_bytes
    for budget in (len(codec1d_inter.encode(frames, fps, tokens=k)) for k in (2, 6)):
        picks = []
        monkeypatch.setattr(neural, "allocate_bytes", lambda *a, **k: picks.append(real(*a, **k)) or picks[-1])
        refined = _counting_refinements(refining, monkeypatch, chunks)
        data = refining.encode(frames, fps, bytes=budget)
        assert len(data) <= budget and len(refined) == len(set(refined)) < 3 * len(grid), refined
        near = {(c, i) for pick in picks for c, p in enumerate(pick) for i in range(p - 2, p + 2)}
        assert {(c, [k for k, _ in grid].index(k)) for c, k in refined} <= near, (refined, picks)
        monkeypatch.undo()
        for (_, q, tokens, step), chunk in zip(refining.iter_symbols(data), chunks):
            _, alone, *_ = next(refining.iter_symbols(refining.encode(chunk, fps, tokens=tokens, step=step)))
            assert np.array_equal(q, alone), tokens


def test_a_per_chunk_byte_budget_weighs_a_count_again_once_the_chunk_before_refines_it(codec1d_inter, clip,
                                                                                        monkeypatch):
    """A chunk's count is weighed coded after the chunk before's tokens for that count, from which it is predicted:
    when the chunk before is refined at a count after the chunk was, the chunk's bytes for it are weighed again, so
    they are those of the two chunks coded at that count, refined. (The first picks are set: chunk 1 at 12 tokens,
    then chunk 0 too, so chunk 1's counts from 6 to 16 are refined first. The chunks repeat one, so a chunk is
    predicted from the one before.)"""
    import vitok.codecs.neural as neural
    from vitok.codecs.container import framing_bytes
    from vitok.codecs.payload import CONTINUES

    frames, fps = np.concatenate([clip[0][:8]] * 3), clip[1]
    refining = codec1d_inter.with_refinement(2)
    grid, real, weighed = refining._rate_candidates(None), neural.allocate_bytes, []
    set_picks = iter([[0, 6, 0], [6, 6, 0]])

    def allocate(options, budget, reserved=0):
        weighed.append(options)
        return next(set_picks, None) or real(options, budget, reserved)

    monkeypatch.setattr(neural, "allocate_bytes", allocate)
    refining.encode(frames, fps, bytes=len(refining.encode(frames, fps, tokens=8)))
    for i in range(4, 8):
        _, (_, (_, second)) = read_vtok(refining.encode(frames[:16], fps, tokens=grid[i][0]))
        assert parse_chunk(second)[0] & CONTINUES   # predicted: its bytes depend on the chunk before
        assert weighed[-1][1][i].nbytes == len(second) + framing_bytes(len(second)), grid[i]


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3", 10_001])
def test_a_bad_refine_is_refused_before_any_work(codec1d, clip, bad):
    frames, fps = clip
    with pytest.raises(CodecError, match="refine must be a whole number of steps in 0..10000"):
        codec1d.check_knobs(refine=bad)
    with pytest.raises(CodecError, match="refine must be"):
        codec1d.encode(frames, fps, refine=bad)


def test_encode_refine_on_the_command_line(tmp_path, clip, tinygrid, tiny1d):
    """`vitok encode --refine N` writes a file any decode reads, closer to the frames than without, also under a
    per-tile byte budget."""
    from click.testing import CliRunner

    from vitok.cli.main import cli
    from vitok.data.io import write_video

    frames, fps = clip
    video = tmp_path / "clip.mkv"
    write_video(video, frames, fps, codec="ffv1")
    model = str(tinygrid[2])
    decoded = {}
    for steps in ("0", "10"):
        out = tmp_path / f"r{steps}.vtok"
        r = CliRunner().invoke(cli, ["encode", str(video), "-o", str(out), "--model", model, "--step", "1",
                                     "--refine", steps, "-q"])
        assert r.exit_code == 0, r.output
        r = CliRunner().invoke(cli, ["decode", str(out), "-o", str(tmp_path / f"r{steps}.npy"), "--model", model,
                                     "-q"])
        assert r.exit_code == 0, r.output
        decoded[steps] = _psnr(np.load(tmp_path / f"r{steps}.npy"), frames)
    assert decoded["10"] > decoded["0"], decoded
    r = CliRunner().invoke(cli, ["encode", str(video), "-o", str(tmp_path / "bad.vtok"), "--refine", "-1"])
    assert r.exit_code == 2 and "-1 is not in the range" in r.output
    tiles = tmp_path / "tiles.vtok"   # 2x2 tiles of the tiny 1D model, a token count each
    r = CliRunner().invoke(cli, ["encode", str(video), "-o", str(tiles), "--model", str(tiny1d[2]), "--size", "96x72",
                                 "--bytes", "5000", "--refine", "2", "-q"])
    assert r.exit_code == 0, r.output
    assert tiles.stat().st_size <= 5000


def test_refine_leaves_the_model_alone_in_any_grad_mode(tiny1d, clip):
    """Refining under torch.no_grad or inference_mode (how a caller may run its encodes) works and gives the same
    bytes; an unfrozen model's parameters collect no gradients from it."""
    import vitok
    from vitok.codecs.neural import VitokCodec

    frames, fps = clip
    tok, tables, _ = tiny1d
    codec = VitokCodec(tok, tables)
    data = codec.encode(frames[:8], fps, tokens=8, refine=2)
    with torch.no_grad():
        assert codec.encode(frames[:8], fps, tokens=8, refine=2) == data
    with torch.inference_mode():
        assert codec.encode(frames[:8], fps, tokens=8, refine=2) == data
    torch.manual_seed(0)
    live = vitok.create_model("vit1d-tiny")   # not frozen: its parameters require grad
    live.load_state_dict(tok.state_dict())
    VitokCodec(live, tables).encode(frames[:8], fps, tokens=8, refine=2)
    assert all(p.grad is None for p in live.parameters())


def test_a_refining_codec_is_named_and_identified_apart(codec1d, tinygrid):
    """rd tables and caches take a codec's name and identity: a refining twin has its own."""
    twin = codec1d.with_refinement(3)
    assert twin.name == codec1d.name + "+refine3" and twin.identity != codec1d.identity
    assert "-refine3q-" in twin.identity   # refinement rounding its last steps: cached records of the old one rerun
    from vitok.codecs.neural import VitokCodec   # a grid model refines unrounded, as before: no q

    assert "-refine3-" in VitokCodec(*tinygrid[:2]).with_refinement(3).identity
    assert twin.with_refinement(0).name == codec1d.name and twin.with_refinement(0).identity == codec1d.identity
    assert twin.with_refinement(5).name == codec1d.name + "+refine5"
