"""tools/profile_decode.py: the perf report it reads, and the process it profiles."""

import pytest


@pytest.fixture(scope="module")
def prof(load_tool):
    return load_tool("profile_decode")


def test_samples_by_symbol_reads_perf_reports_sample_column(prof):
    """Names as perf prints them, less the kernels' namespaces and the padding, which depends on
    the longest name of each report (two reports must give the same keys)."""
    report = """# Samples: 43K of event 'cpu-clock:ppp'
#
# Overhead       Samples  Symbol
# ........  ............  ..........................
#
    35.92%         15634  [.] pygpt::avx512::simd::(anonymous namespace)::panel_tile<true, 8>       -      -
    14.29%          6219  [.] pygpt::avx512::simd::attention_heads_t<signed char, 4>   
     5.43%          2363  [.] pygpt::Barrier::wait
     0.50%           217  [k] _raw_spin_unlock_irqrestore
     0.01%             3  [.] 0x00000000000c5d52
"""
    assert prof.samples_by_symbol(report) == {
        "panel_tile<true, 8>": 15634, "attention_heads_t<signed char, 4>": 6219, "pygpt::Barrier::wait": 2363,
        "_raw_spin_unlock_irqrestore": 217, "0x00000000000c5d52": 3}


def test_worker_generates_from_the_batch_of_prompts(prof, hf_model_factory):
    _, _, path = hf_model_factory("tiny")
    assert prof.worker({"model": path, "batch": 2, "prompt": 8, "runs": 2, "threads": 1, "new": 3}) == [3, 3]
    assert prof.worker({"model": path, "batch": 1, "prompt": 8, "runs": 1, "threads": 1, "new": 1}) == [1]
    with pytest.raises(SystemExit):
        prof.main([])  # a model folder is needed
