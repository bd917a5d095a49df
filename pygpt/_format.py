"""The pygpt model folder: config.json and the header of model.safetensors.

JSON is parsed here, with Python's json module, and checked against the config; the C++
core receives a plain list of validated tensors (name, dtype, shape, begin, end) and
checks the byte ranges once more against the real mapping. Layout: docs/FORMAT.md.
"""

from __future__ import annotations

import json
import math
import os

from ._core import ModelFormatError

FORMAT_VERSION = 1
DTYPES = ("f32", "f16", "bf16", "int8", "int4")
ACTIVATIONS = ("gelu_tanh", "gelu_erf")
ST_DTYPE_SIZE = {"F32": 4, "F16": 2, "BF16": 2, "I8": 1, "U8": 1}
ST_DTYPE_OF = {"f32": "F32", "f16": "F16", "bf16": "BF16"}

MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_N_CTX = 1 << 20
MAX_DIM = 1 << 20


def read_config(model_dir: str) -> dict:
    """Reads and validates config.json of a pygpt model folder."""
    path = os.path.join(model_dir, "config.json")
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"model folder not found: {model_dir}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"not a pygpt model folder (no config.json): {model_dir}")
    try:
        with open(path, "rb") as f:
            cfg = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:  # RecursionError: deep nesting
        raise ModelFormatError(f"{path}: not valid JSON: {e}") from None
    return validate_config(cfg, path)


# Hugging Face GPT2Config's attention scaling, and GPT-2's values (docs/FORMAT.md).
ATTENTION_SCALING = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False}
# Hugging Face's name: true (GPT-2's, and the default) when the LM head is the token
# embedding; false when the file also holds an LM head of its own, lm_head.weight.
OPTIONAL_FLAGS = {**ATTENTION_SCALING, "tie_word_embeddings": True}


def validate_config(cfg, where: str = "config.json") -> dict:
    if not isinstance(cfg, dict):
        raise ModelFormatError(f"{where}: expected a JSON object")
    if cfg.get("format") != "pygpt":
        raise ModelFormatError(f"{where}: not a pygpt config (\"format\": \"pygpt\" missing); "
                               "convert the model with tools/convert.py")
    version = cfg.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFormatError(f"{where}: format_version {version!r} is not supported (expected {FORMAT_VERSION})")

    def positive_int(key, limit):
        v = cfg.get(key)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ModelFormatError(f"{where}: '{key}' must be an integer, got {v!r}")
        if not 0 < v <= limit:
            raise ModelFormatError(f"{where}: '{key}' = {v} is out of range (1..{limit})")
        return v

    out = dict(cfg)
    for key in ("n_layer", "n_head", "n_embd", "vocab_size"):
        out[key] = positive_int(key, MAX_DIM)
    out["n_ctx"] = positive_int("n_ctx", MAX_N_CTX)
    if out["n_embd"] % out["n_head"] != 0:
        raise ModelFormatError(f"{where}: n_embd {out['n_embd']} is not divisible by n_head {out['n_head']}")
    eps = cfg.get("layer_norm_epsilon")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (0 < eps < 1):
        raise ModelFormatError(f"{where}: 'layer_norm_epsilon' must be a number in (0, 1), got {eps!r}")
    out["layer_norm_epsilon"] = float(eps)
    if cfg.get("activation") not in ACTIVATIONS:
        raise ModelFormatError(f"{where}: 'activation' must be one of {ACTIVATIONS}, got {cfg.get('activation')!r}")
    if not isinstance(cfg.get("bias"), bool):
        raise ModelFormatError(f"{where}: 'bias' must be true or false, got {cfg.get('bias')!r}")
    if cfg.get("dtype") not in DTYPES:
        raise ModelFormatError(f"{where}: 'dtype' must be one of {DTYPES}, got {cfg.get('dtype')!r}")
    if cfg["dtype"] in ("int8", "int4"):
        g = cfg.get("quant_group_size")  # 0: one scale per row
        if isinstance(g, bool) or not isinstance(g, int) or not 0 <= g <= MAX_DIM:
            raise ModelFormatError(f"{where}: 'quant_group_size' must be an integer in 0..{MAX_DIM}, got {g!r}")
        out["quant_group_size"] = g
    for key, default in OPTIONAL_FLAGS.items():  # optional: GPT-2's own without them
        v = cfg.get(key, default)
        if not isinstance(v, bool):
            raise ModelFormatError(f"{where}: '{key}' must be true or false, got {v!r}")
        out[key] = v
    return out


def _matrix_specs(name: str, n_out: int, n_in: int, cfg: dict) -> dict:
    dtype = cfg["dtype"]
    if dtype in ST_DTYPE_OF:
        return {name: (ST_DTYPE_OF[dtype], [n_out, n_in])}
    from . import quantize

    try:
        return quantize.tensor_specs(name, n_out, n_in, dtype, cfg["quant_group_size"])
    except ValueError as e:  # a group size that does not fit this matrix: the config is wrong
        raise ModelFormatError(f"config.json: tensor '{name}': {e}") from None


def expected_tensors(cfg: dict) -> dict:
    """{tensor name: (safetensors dtype, shape)} that a model with this config holds."""
    C, V, L = cfg["n_embd"], cfg["vocab_size"], cfg["n_layer"]
    specs = {}
    specs.update(_matrix_specs("wte.weight", V, C, cfg))
    specs["wpe.weight"] = ("F32", [cfg["n_ctx"], C])

    def layer_norm(name):
        specs[f"{name}.weight"] = ("F32", [C])
        if cfg["bias"]:
            specs[f"{name}.bias"] = ("F32", [C])

    def linear(name, n_out, n_in):
        specs.update(_matrix_specs(f"{name}.weight", n_out, n_in, cfg))
        if cfg["bias"]:
            specs[f"{name}.bias"] = ("F32", [n_out])

    for i in range(L):
        p = f"h.{i}."
        layer_norm(p + "ln_1")
        linear(p + "attn.c_attn", 3 * C, C)
        linear(p + "attn.c_proj", C, C)
        layer_norm(p + "ln_2")
        linear(p + "mlp.c_fc", 4 * C, C)
        linear(p + "mlp.c_proj", C, 4 * C)
    layer_norm("ln_f")
    if not cfg.get("tie_word_embeddings", True):
        specs.update(_matrix_specs("lm_head.weight", V, C, cfg))
    return specs


def _no_duplicate_keys(pairs):
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise ModelFormatError(f"tensor '{key}': appears twice in the header")
        obj[key] = value
    return obj


def read_safetensors_header(path: str, dtype_size: dict = ST_DTYPE_SIZE) -> list:
    """Parses and checks the header of a safetensors file whose dtypes are among dtype_size
    ({safetensors dtype: bytes}; by default those a pygpt model may hold).

    Returns [(name, dtype, shape, begin, end)] with begin/end as absolute file offsets.
    Raises FileNotFoundError or ModelFormatError naming the tensor and the problem.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
        head = f.read(8)
        if len(head) < 8:
            raise ModelFormatError(f"{path}: truncated file ({size} bytes, no safetensors header)")
        n = int.from_bytes(head, "little")
        if n < 2 or n > MAX_HEADER_BYTES or 8 + n > size:
            raise ModelFormatError(f"{path}: header length {n} is impossible for a file of {size} bytes")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ModelFormatError(f"{path}: header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise ModelFormatError(f"{path}: header is not a JSON object")

    data_start, data_size = 8 + n, size - 8 - n
    tensors = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise ModelFormatError(f"tensor '{name}': header entry is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in dtype_size:  # (a list is unhashable)
            raise ModelFormatError(f"tensor '{name}': unsupported dtype {dtype!r}")
        if (not isinstance(shape, list) or
                not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise ModelFormatError(f"tensor '{name}': bad shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2 or
                not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
            raise ModelFormatError(f"tensor '{name}': bad data_offsets {offsets!r}")
        begin, end = offsets
        nbytes = math.prod(shape) * dtype_size[dtype]
        if nbytes >= 1 << 62:
            raise ModelFormatError(f"tensor '{name}': shape {shape} is absurdly large")
        if not 0 <= begin <= end <= data_size:
            raise ModelFormatError(f"tensor '{name}': data_offsets {offsets} lie outside the "
                                   f"{data_size} bytes of data")
        if end - begin != nbytes:
            raise ModelFormatError(f"tensor '{name}': {end - begin} bytes of data for shape {shape} {dtype} "
                                   f"({nbytes} bytes)")
        tensors.append((name, dtype, shape, data_start + begin, data_start + end))
    spans = sorted((t[3], t[4], t[0]) for t in tensors if t[4] > t[3])
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise ModelFormatError(f"tensors '{n0}' and '{n1}': data ranges overlap")
    return tensors


def check_tensors(tensors: list, cfg: dict) -> None:
    """Every expected tensor present with its dtype and shape, nothing else."""
    expected = expected_tensors(cfg)
    found = {t[0]: t for t in tensors}
    for name, (dtype, shape) in expected.items():
        if name not in found:
            raise ModelFormatError(f"tensor '{name}': missing from model.safetensors")
        _, fdtype, fshape, _, _ = found[name]
        # quantized matrices changed layout once (rows -> panels of 16 rows): say so
        quantized = cfg["dtype"] in ("int8", "int4") and (name.endswith("_scales") or name + "_scales" in expected)
        hint = (" (int8/int4 weights are stored in panels of 16 rows, docs/FORMAT.md; a folder converted "
                "by an earlier pygpt build must be converted again)") if quantized else ""
        if fdtype != dtype:
            raise ModelFormatError(f"tensor '{name}': dtype {fdtype}, but config.json (dtype "
                                   f"{cfg['dtype']}) needs {dtype}" + hint)
        if list(fshape) != list(shape):
            raise ModelFormatError(f"tensor '{name}': shape {list(fshape)}, but config.json needs {list(shape)}"
                                   + hint)
    for name in found:
        if name not in expected:
            raise ModelFormatError(f"tensor '{name}': not part of a GPT-2 with this config")
