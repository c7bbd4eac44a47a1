"""Fuzzing: mutated real .vtok streams give BitstreamError or decode; nothing else, no hang, no big allocation."""
from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vitok.codecs import fuzz


@pytest.fixture(scope="module")
def corpus(codec1d, clip, stream1d):
    frames, fps = clip
    streams = [stream1d, codec1d.encode(frames[:3], fps, step=2.0), fuzz.as_version_1(stream1d)]
    return streams, [fuzz.layout(s) for s in streams]


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), which=st.integers(0, 2))
def test_mutants_parse_or_raise_bitstream_error(corpus, seed, which):
    streams, layouts = corpus
    _, mutant = fuzz.mutate(streams[which], random.Random(seed), layouts[which])
    assert fuzz.check(mutant, None, max_seconds=2.0) in ("ok", "rejected")


@settings(max_examples=100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_mutants_decode_or_raise_bitstream_error(corpus, codec1d, seed):
    streams, layouts = corpus
    _decodes_or_is_rejected(streams[1], layouts[1], codec1d, seed,
                            [fuzz.m_payload, fuzz.m_meta, fuzz.m_chunk_field, fuzz.m_header_field, fuzz.m_bitflip])


def _decodes_or_is_rejected(stream: bytes, layout, codec, seed: int, mutators: list) -> None:
    """One of ``mutators`` (picked by ``seed``) applied to ``stream`` decodes with ``codec`` or is rejected."""
    rng = random.Random(seed)
    mutant = rng.choice(mutators)(stream, layout, rng)
    assert fuzz.check(mutant, codec, pixels=seed % 4 == 0, max_seconds=5.0) in ("ok", "rejected")


@pytest.fixture(scope="module")
def predicting(codec1d_inter, clip):
    """Three chunks of the same frames at step 0.5, the later two predicted from the one before, and its layout."""
    frames, fps = clip
    stream = codec1d_inter.encode(np.concatenate([frames[:8]] * 3), fps, step=0.5)
    return stream, fuzz.layout(stream)


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_mutants_of_a_predicting_stream_decode_or_raise_bitstream_error(predicting, codec1d_inter, seed):
    _decodes_or_is_rejected(*predicting, codec1d_inter, seed, [fuzz.m_payload, fuzz.m_chunk_field, fuzz.m_bitflip])


@settings(max_examples=100, deadline=None, derandomize=True)
@given(data=st.binary(max_size=300))
def test_random_bytes_are_rejected(data):
    assert fuzz.check(b"VTOK" + data, None) == "rejected"


def test_check_flags_other_exceptions():
    class Broken:
        def decode(self, data):
            raise IndexError("boom")

    with pytest.raises(fuzz.FuzzFailure, match="IndexError"):
        fuzz.check(b"x", Broken(), pixels=True)


def test_fuzz_script_runs(capsys):
    assert fuzz.main(["--seconds", "1", "--parse-only"]) == 0
    assert "mutants" in capsys.readouterr().out
