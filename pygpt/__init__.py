"""pygpt: fast CPU inference for GPT-2, a C++ core with a small Python API."""

import os as _os

# OpenMP worker threads sleep as soon as a parallel region ends instead of spinning. Measured
# on 2 shared cores: spinning made a 2-thread decode step of the shipped model 18 ms instead of
# 0.3 ms (a spinning worker holds the core the other thread needs), and an app embedding pygpt
# sees ~0% CPU while idle. libgomp reads this once, when _core loads it; set the variable
# yourself before importing pygpt to choose otherwise.
_os.environ.setdefault("OMP_WAIT_POLICY", "passive")

from . import _core  # noqa: E402
from ._core import ModelFormatError  # noqa: E402
from .batching import Batcher, BatcherClosed
from .chat import ChatTemplate
from .generation import GenerationOutput, Timings, generate_text as generate
from .grammar import Grammar
from .model import Model, load
from .tokenizer import Tokenizer

__version__ = "0.1.0"


def system_info() -> dict:
    """Which kernel path (ISA) a model loaded now would use, every path this CPU can run (the
    values PYGPT_ISA accepts here), and the default thread count."""
    from ._threads import default_threads

    return {
        "isa": _core.select_isa(""),
        "isas": ["scalar"] + ["avx2"] * _core.cpu_has_avx2() + ["avx2vnni"] * _core.cpu_has_avx2_vnni()
        + ["avx512"] * _core.cpu_has_avx512()
        + ["avx512bf16"] * _core.cpu_has_avx512_bf16() + ["amx"] * _core.cpu_has_amx()
        + ["neon"] * _core.cpu_has_neon()
        + ["neondot"] * _core.cpu_has_neon_dot(),
        "cpu_avx2": _core.cpu_has_avx2(),
        "cpu_avx2_vnni": _core.cpu_has_avx2_vnni(),
        "cpu_avx512": _core.cpu_has_avx512(),
        "cpu_avx512_bf16": _core.cpu_has_avx512_bf16(),
        "cpu_amx": _core.cpu_has_amx(),
        "cpu_neon": _core.cpu_has_neon(),
        "cpu_neon_dot": _core.cpu_has_neon_dot(),
        "physical_cores": _core.physical_cores(),
        "n_threads": default_threads(),
    }


__all__ = ["Batcher", "BatcherClosed", "ChatTemplate", "GenerationOutput", "Grammar", "Model", "ModelFormatError", "Timings", "Tokenizer", "generate", "load", "system_info",
           "__version__"]
