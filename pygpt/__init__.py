"""pygpt: fast CPU inference for GPT-2, a C++ core with a small Python API."""

from . import _core
from ._core import ModelFormatError
from .generation import GenerationOutput, Timings, generate_text as generate
from .model import Model, load
from .tokenizer import Tokenizer

__version__ = "0.1.0"


def system_info() -> dict:
    """Which kernel path (ISA) a model loaded now would use, and the default thread count."""
    from ._threads import default_threads

    return {
        "isa": _core.select_isa(""),
        "cpu_avx2": _core.cpu_has_avx2(),
        "cpu_avx512": _core.cpu_has_avx512(),
        "physical_cores": _core.physical_cores(),
        "n_threads": default_threads(),
    }


__all__ = ["GenerationOutput", "Model", "ModelFormatError", "Timings", "Tokenizer", "generate", "load", "system_info",
           "__version__"]
