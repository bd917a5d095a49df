"""Weight quantizers used by the converter (NumPy only; the runtime never re-quantizes).

A quantized linear weight W [n_out, n_in] is stored as two safetensors tensors (layouts in
docs/FORMAT.md, "Quantized layouts"):

* ``<name>``         U8, in panels of 16 rows, per panel blocks of 64 inputs:
                     int8: [ceil(n_out / 16), ceil(n_in / 64) * 1024], q + 128 (|q| <= 127):
                     16 runs of 64 bytes per block, run j holding 4 bytes of each of the 16
                     rows (row r at 4r), byte i = input 4j + i;
                     int4: [ceil(n_out / 16), ceil(n_in / 64) * 512], q + 8 as nibbles
                     (q in [-8, 7]): 8 runs of 64 bytes per block, run j holding 4 bytes of
                     each row, byte i = input 4j + i (low nibble) and input 32 + 4j + i (high);
* ``<name>_scales``  F32 [ceil(n_out / 16), n_groups * 16]: W[o, k] ~= q[o, k] * scale(o, k // group),
                     scale(o, g) at [o // 16, g * 16 + o % 16].

``group`` is the number of inputs per scale: 0 means one scale per row (group = n_in),
otherwise a multiple of 64 that divides n_in, or 32 where n_in is a multiple of 64 (two
groups a block: its first and second 32 inputs, llama.cpp's block size). Rows past n_out in
the last panel and inputs past n_in in the last block hold q = 0 (scale 0 for the rows).
"""

from __future__ import annotations

import numpy as np

DTYPES = ("int8", "int4")
#: group used when the converter is not given one: int8 per row, int4 per 64 inputs
DEFAULT_GROUP = {"int8": 0, "int4": 64}
BLOCK = 64  # inputs per block (and per SIMD step of the integer kernels)
PANEL = 16  # rows per panel (one 32-bit lane per row in a 64-byte vector)


def _group(n_in: int, group: int) -> int:
    """The effective group size, validated."""
    if group == 0:
        return n_in
    if group == 32 and n_in % BLOCK == 0:
        return group
    if group < 0 or n_in % group != 0 or (group != n_in and group % BLOCK != 0):
        raise ValueError(
            f"group size {group} does not fit {n_in} inputs: use 0 (one scale per row), "
            f"a multiple of {BLOCK} that divides {n_in}, or 32 (inputs a multiple of {BLOCK})"
        )
    return group


def group_fits(n_in: int, group: int) -> bool:
    """Whether rows of n_in inputs can have `group` inputs per scale (0: one per row)."""
    try:
        _group(n_in, group)
    except ValueError:
        return False
    return True


def _check(dtype: str) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"unknown quantized dtype {dtype!r}: expected one of {DTYPES}")


def tensor_specs(name: str, n_out: int, n_in: int, dtype: str, group: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The tensors a quantized weight is stored as: {tensor name: (safetensors dtype, shape)}."""
    _check(dtype)
    g = _group(n_in, group)
    panels, padded = -(-n_out // PANEL), -(-n_in // BLOCK) * BLOCK
    return {name: ("U8", (panels, padded * PANEL // (1 if dtype == "int8" else 2))),
            name + "_scales": ("F32", (panels, n_in // g * PANEL))}


def quantize(name: str, w: np.ndarray, dtype: str, group: int = -1) -> dict[str, np.ndarray]:
    """The tensors of weight `name` quantized: {name: data, name + "_scales": scales}.

    group -1: DEFAULT_GROUP[dtype]; 0: one scale per row. See quantize_matrix."""
    return {name + suffix: arr for suffix, arr in quantize_matrix(w, dtype, group).items()}


def quantize_matrix(w: np.ndarray, dtype: str, group: int = -1) -> dict[str, np.ndarray]:
    """Quantizes W [n_out, n_in] (float) to {"": data, "_scales": scales} (suffixes of the name).

    int8: symmetric, scale = max|W| / 127 per group, q = round(W / scale).
    int4: symmetric, scale = -(the value of largest magnitude) / 8 per group, so that value
    maps to -8 exactly and the rest of [-8, 7] is used (as in llama.cpp's q4_0);
    q = clip(round(W / scale), -8, 7). A group of zeros gets scale 0.
    """
    _check(dtype)
    if group == -1:
        group = DEFAULT_GROUP[dtype]
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D weight, got shape {w.shape}")
    n_out, n_in = w.shape
    g = _group(n_in, group)
    blocks = w.reshape(n_out, n_in // g, g)
    if dtype == "int8":
        scale = np.abs(blocks).max(axis=2) / np.float32(127)
        inv = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale > 0)
        q = np.clip(np.rint(blocks * inv[..., None]), -127, 127).astype(np.int8).reshape(n_out, n_in)
        return {"": pack_int8(q), "_scales": panel_scales(scale.astype(np.float32))}
    idx = np.abs(blocks).argmax(axis=2)
    extreme = np.take_along_axis(blocks, idx[..., None], axis=2)[..., 0]
    scale = (extreme / np.float32(-8)).astype(np.float32)
    inv = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale != 0)
    q = np.clip(np.rint(blocks * inv[..., None]), -8, 7).astype(np.int8).reshape(n_out, n_in)
    return {"": pack_int4(q), "_scales": panel_scales(scale)}


def _panel_rows(q: np.ndarray, offset: int) -> np.ndarray:
    """q [n_out, n_in] + offset as U8, padded with q = 0 to whole panels and blocks:
    [panels, 16, blocks, 64]."""
    n_out, n_in = q.shape
    panels, blocks = -(-n_out // PANEL), -(-n_in // BLOCK)
    u = np.full((panels * PANEL, blocks * BLOCK), offset, dtype=np.uint8)
    u[:n_out, :n_in] = (q.astype(np.int16) + offset).astype(np.uint8)
    return u.reshape(panels, PANEL, blocks, BLOCK)


def pack_int8(q: np.ndarray) -> np.ndarray:
    """int8 values q [n_out, n_in] in [-127, 127] -> U8 [ceil(n_out / 16), ceil(n_in / 64) * 1024]
    (see module doc)."""
    u = _panel_rows(q, 128)
    panels, _, blocks, _ = u.shape
    runs = u.reshape(panels, PANEL, blocks, 16, 4)  # [panel, row, block, run j, byte i]
    return np.ascontiguousarray(runs.transpose(0, 2, 3, 1, 4)).reshape(panels, -1)


def unpack_int8(data: np.ndarray, n_out: int, n_in: int) -> np.ndarray:
    """The inverse of pack_int8: int8 [n_out, n_in]."""
    panels = data.shape[0]
    u = data.reshape(panels, -1, 16, PANEL, 4).transpose(0, 3, 1, 2, 4)  # [panel, row, block, j, i]
    return (u.reshape(panels * PANEL, -1)[:n_out, :n_in].astype(np.int16) - 128).astype(np.int8)


def pack_int4(q: np.ndarray) -> np.ndarray:
    """int4 values q [n_out, n_in] in [-8, 7] -> U8 [ceil(n_out / 16), ceil(n_in / 64) * 512]
    (see module doc)."""
    u = _panel_rows(q, 8)
    panels, _, blocks, _ = u.shape
    u = u.reshape(panels, PANEL, blocks, 2, 8, 4)  # [panel, row, block, half, run j, byte i]
    nib = u[:, :, :, 0] | (u[:, :, :, 1] << 4)  # [panel, row, block, j, i]
    return np.ascontiguousarray(nib.transpose(0, 2, 3, 1, 4)).reshape(panels, -1)


def unpack_int4(data: np.ndarray, n_out: int, n_in: int) -> np.ndarray:
    """The inverse of pack_int4: int8 [n_out, n_in] values in [-8, 7]."""
    panels = data.shape[0]
    nib = data.reshape(panels, -1, 8, PANEL, 4).transpose(0, 3, 1, 2, 4)  # [panel, row, block, j, i]
    q = np.stack([nib & 0x0F, nib >> 4], axis=3)  # [panel, row, block, half, j, i]
    return q.reshape(panels * PANEL, -1)[:n_out, :n_in].astype(np.int8) - 8


def panel_scales(scale: np.ndarray) -> np.ndarray:
    """Scales [n_out, n_groups] -> [ceil(n_out / 16), n_groups * 16] (see module doc)."""
    n_out, n_groups = scale.shape
    panels = -(-n_out // PANEL)
    out = np.zeros((panels * PANEL, n_groups), dtype=np.float32)
    out[:n_out] = scale
    return np.ascontiguousarray(out.reshape(panels, PANEL, n_groups).transpose(0, 2, 1)).reshape(panels, -1)


def row_scales(scales: np.ndarray, n_out: int) -> np.ndarray:
    """The inverse of panel_scales: [n_out, n_groups]."""
    panels = scales.shape[0]
    return scales.reshape(panels, -1, PANEL).transpose(0, 2, 1).reshape(panels * PANEL, -1)[:n_out]


def dequantize(parts: dict[str, np.ndarray], dtype: str, n_out: int, n_in: int) -> np.ndarray:
    """W [n_out, n_in] float32 as the runtime sees it: q * scale."""
    _check(dtype)
    data, scales = parts[""], parts["_scales"]
    unpack = unpack_int8 if dtype == "int8" else unpack_int4
    q, scales = unpack(data, n_out, n_in).astype(np.float32), row_scales(scales, n_out)
    g = n_in // scales.shape[1]
    return (q.reshape(n_out, -1, g) * scales[..., None]).reshape(n_out, n_in)
