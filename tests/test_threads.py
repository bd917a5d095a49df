"""The team of threads that runs a forward pass (csrc/threads.h): one OpenMP region per
call, a barrier between steps, and any thread's failure reported on the calling thread
without a hang. Also: logits bitwise identical for any n_threads, at every dtype."""

import numpy as np
import pytest

import pygpt
from pygpt import _core


@pytest.mark.parametrize("n_threads", [1, 2, 3, 5, 8])
def test_barrier_holds_every_thread_until_all_arrive(n_threads):
    assert _core._team_selftest(n_threads, 2000, -1, -1) == n_threads


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n_threads,fail_thread,fail_round", [(1, 0, 0), (2, 1, 0), (2, 0, 7), (4, 3, 500), (8, 5, 1)])
def test_failure_in_one_thread_is_raised_not_hung(n_threads, fail_thread, fail_round):
    with pytest.raises(RuntimeError, match=f"thread {fail_thread} failed at round {fail_round}"):
        _core._team_selftest(n_threads, 1000, fail_thread, fail_round)
    # the team is usable again afterwards
    assert _core._team_selftest(n_threads, 10, -1, -1) == n_threads


@pytest.fixture(scope="module")
def tiny_folders(hf_model_factory, tmp_path_factory):
    import pygpt.convert

    _, hf_dir, f32_dir = hf_model_factory("tiny")
    out = {"f32": f32_dir}
    for dtype in ("bf16", "int8", "int4"):
        d = str(tmp_path_factory.mktemp(f"tiny-{dtype}"))
        pygpt.convert.convert(hf_dir, d, dtype=dtype)
        out[dtype] = d
    return out


@pytest.mark.parametrize("dtype", ["f32", "bf16", "int8", "int4"])
def test_logits_and_tokens_identical_for_any_thread_count(tiny_folders, dtype):
    ids = np.random.default_rng(5).integers(0, 50257, 37).tolist()
    ref = pygpt.load(tiny_folders[dtype], n_threads=1)
    ref_logits = ref.logits(ids)
    ref_tokens = [o.tokens for o in ref.generate([ids, ids[:5], ids[:20]], max_new_tokens=6, ignore_eos=True)]
    for n in (2, 3, 4, 7):
        m = pygpt.load(tiny_folders[dtype], n_threads=n)
        assert np.array_equal(m.logits(ids), ref_logits), f"n_threads={n}"
        tokens = [o.tokens for o in m.generate([ids, ids[:5], ids[:20]], max_new_tokens=6, ignore_eos=True)]
        assert tokens == ref_tokens, f"n_threads={n}"
