"""tools/kernel_loops: the C++ loops over single kernels still build against csrc (they include
its kernel files directly, so a change there can break them unseen), and the port loop reads
every kind it names. Rates are the loops' output, never asserted here."""

import os
import platform
import re
import shutil
import subprocess

import pytest

from pygpt import _core

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOOPS = ("q4_tiles", "q8_prompt", "attention_int8", "ports")


needs_gxx = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or not shutil.which("g++"),
                               reason="the loops are x86-64 AVX-512 code built with g++")


@pytest.fixture(scope="module")
def loops(tmp_path_factory):
    out = tmp_path_factory.mktemp("kernel_loops")
    subprocess.run(["bash", os.path.join(ROOT, "tools", "kernel_loops", "build.sh"), str(out)], check=True,
                   capture_output=True, text=True, timeout=600)
    return out


@needs_gxx
def test_every_loop_builds(loops):
    for name in LOOPS:
        assert os.access(loops / name, os.X_OK), name


@needs_gxx
@pytest.mark.skipif(not _core.cpu_has_avx512_bf16(), reason="runs AVX-512 VNNI and BF16 instructions")
def test_ports_prints_a_rate_for_every_kind(loops):
    out = subprocess.run([str(loops / "ports"), "1000"], check=True, capture_output=True, text=True,
                         timeout=60).stdout
    rows = re.findall(r"^(\S.*?)\s+(\d+\.\d+) G instructions/s  \((.+)\)$", out, re.M)
    assert len(rows) == 12 == len(out.splitlines()), out
    names = [r[0] for r in rows]
    assert names[0] == "vpdpbusd zmm" and "vpdpbusd + vfmadd231ps" in names
    assert all(float(r[1]) > 0 for r in rows)


@needs_gxx
def test_ports_refuses_a_count_below_one(loops):
    p = subprocess.run([str(loops / "ports"), "0"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "usage" in p.stderr
