"""The avx2vnni kernel path (AVX2 + AVX-VNNI: Intel's client CPUs since Alder Lake) on a CPU
without AVX-VNNI: tools/avx2vnni_check.sh builds the module with that path's one AVX-VNNI
instruction in its EVEX form (AVX512-VNNI + VL, the same operation) and runs every test
parametrized over the kernel paths for avx2vnni (against the scalar reference, bitwise at
int8 and int4). Where the CPU has AVX-VNNI, the rest of the suite runs the path itself."""

import importlib.util
import os
import platform
import shutil
import subprocess
import sys

import pytest

import pygpt
from pygpt import _core

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="an x86-64 kernel path")
@pytest.mark.skipif("avx2vnni" in pygpt.system_info()["isas"], reason="the suite runs the path natively here")
@pytest.mark.skipif(not _core.cpu_has_avx512(), reason="the EVEX form needs AVX512-VNNI and VL")
@pytest.mark.skipif(not (shutil.which("cmake") and shutil.which("ninja") and importlib.util.find_spec("pybind11")),
                    reason="needs cmake, ninja and pybind11 (the test extras)")
def test_avx2vnni_path_through_the_evex_build(tmp_path):
    env = dict(os.environ, AVX2VNNI_BUILD=str(tmp_path / "build"))
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONSAFEPATH", None)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    r = subprocess.run(["bash", os.path.join(ROOT, "tools", "avx2vnni_check.sh")], capture_output=True, text=True,
                       env=env, timeout=1500)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "'avx2vnni'" in out  # the build's paths, printed by the script
    summary = out.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, summary
    assert int(summary.split(" passed")[0].split()[-1]) >= 200, summary
