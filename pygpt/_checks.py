"""Opt-in checks of the weights themselves (the header checks are in _format.py).

check_finite reads every floating-point tensor of model.safetensors once and raises
pygpt.ModelFormatError naming the first tensor that holds a NaN or an infinity. It costs a
full read of the file, so pygpt.load runs it only when asked (check_finite=True).
"""

from __future__ import annotations

import numpy as np

from ._core import ModelFormatError

# Bits of a non-finite value (exponent all ones) for the float formats of safetensors.
# bf16 has no numpy dtype: its bits are read as uint16, like f16's, and masked.
_EXP_MASK = {"F16": np.uint16(0x7C00), "BF16": np.uint16(0x7F80)}
_CHUNK = 1 << 22  # elements per slice: bounds the temporary memory (16 MiB of f32)


def check_finite(path: str, tensors: list) -> None:
    """Raises ModelFormatError if a F32/F16/BF16 tensor holds NaN or +-Inf.

    path: the model.safetensors file; tensors: [(name, dtype, shape, begin, end)] as returned
    by _format.read_safetensors_header (begin/end absolute file offsets). Integer tensors (the
    int8/int4 codes) are skipped; their float scales are checked.
    """
    found = _first_non_finite(path, tensors)  # returns after the mapping is released
    if found is not None:
        name, i, value = found
        raise ModelFormatError(f"tensor '{name}': element {i} is {value} (the weights hold NaN or Inf)")


def _first_non_finite(path: str, tensors: list):
    """(tensor name, flat index, value) of the first non-finite weight, or None."""
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    for name, dtype, _shape, begin, end in tensors:
        if dtype == "F32":
            view = np.dtype("<f4")
        elif dtype in _EXP_MASK:
            view = np.dtype("<u2")
        else:
            continue
        raw = mm[begin:end]
        if raw.size % view.itemsize:
            raise ModelFormatError(f"tensor '{name}': {raw.size} bytes is not a whole number of {dtype}")
        values = raw.view(view)
        for start in range(0, values.size, _CHUNK):
            part = values[start:start + _CHUNK]
            if dtype == "F32":
                bad = ~np.isfinite(part)
            else:
                mask = _EXP_MASK[dtype]
                bad = (part & mask) == mask
            if bad.any():
                j = int(np.argmax(bad))
                value = float(part[j]) if dtype == "F32" else _decode_half(int(part[j]), dtype)
                return name, start + j, value
    return None


def _decode_half(bits: int, dtype: str) -> float:
    if dtype == "F16":
        return float(np.array([bits], np.uint16).view(np.float16)[0])
    return float(np.array([bits << 16], np.uint32).view(np.float32)[0])
