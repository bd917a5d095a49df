"""PEFT LoRA adapters: merged into a GPT-2's weights at conversion (convert.py's `lora=`), or
applied at load time, unmerged (pygpt.load's `lora=`: low_rank_terms, at the end).

An adapter folder is what peft's save_pretrained writes: adapter_config.json and
adapter_model.safetensors (or adapter_model.bin, a pickle that needs torch). peft itself is
not needed: the merge is numpy, on the canonical float32 tensors of convert._canonical, before
any quantization.

A LoRA on a linear layer adds scaling * (B @ A) to its weight, A [r, n_in] and B [n_out, r]:
[n_out, n_in], our layout. peft's fan_in_fan_out only transposes that delta into Conv1D's
[n_in, n_out] storage (peft sets it per layer type, whatever the config says), and
convert._canonical has transposed Conv1D back, so the delta is B @ A for a Conv1D and a
Linear alike. An embedding's delta is scaling * (B @ A).T, A [r, n_rows], B [n_cols, r].
scaling = lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora, r and lora_alpha per layer
from rank_pattern / alpha_pattern. Tensors an adapter saves whole (modules_to_save; the
biases of bias="all" or "lora_only") replace the base's before its deltas are added, as when
peft loads the adapter and then merges it.

What cannot be merged exactly is an AdapterError (a ConversionError), never a different
model: DoRA and the other LoRA variants, initialisations that change the base weights (PiSSA,
OLoRA, CorDA, LoftQ, LoRA-GA), adapter types other than LoRA, layers GPT-2 lacks, shapes that
do not fit the base, and a LoRA on only one of the token embedding and the LM head, which
pygpt stores as one tensor. A missing folder or file is a FileNotFoundError.
"""

from __future__ import annotations

import argparse
import json
import math
import numbers
import os
import re

import numpy as np

from ._format import expected_tensors
from .convert import ConversionError, _load_state_file


class AdapterError(ConversionError):
    """A PEFT adapter pygpt cannot apply: merged at conversion (convert's lora=) or at load time
    (pygpt.load's lora=). A ConversionError, and so a ValueError."""


CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
# peft's LoraConfig defaults, for the keys a config leaves out
DEFAULTS = {"r": 8, "lora_alpha": 8, "use_rslora": False, "bias": "none", "rank_pattern": {}, "alpha_pattern": {}}
# keys that do not change the merged weights: bookkeeping, training-only settings, how layers
# were chosen (the saved tensors say which were), the inits' own settings (init_lora_weights
# is checked), and keys checked on their own. Any other key set to a true value is refused.
NEUTRAL_KEYS = {
    "peft_type", "task_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
    "inference_mode", "r", "lora_alpha", "use_rslora", "rank_pattern", "alpha_pattern", "bias", "lora_bias",
    "modules_to_save", "target_modules", "exclude_modules", "layers_to_transform", "layers_pattern",
    "fan_in_fan_out", "lora_dropout", "init_lora_weights", "use_dora", "ensure_weight_tying",
    "target_modules_to_tie", "modules_to_tie", "eva_config", "corda_config", "lora_ga_config", "megatron_core",
    "qalora_group_size", "runtime_config",
}
# init_lora_weights that leave the base weights as they are: PiSSA, OLoRA, CorDA, LoftQ and
# LoRA-GA subtract their start from the base (peft's path_initial_model_for_weight_conversion
# saves them as plain LoRA, with init_lora_weights true), and MiCA is a variant
PLAIN_INITS = (True, False, "gaussian", "eva", "orthogonal")
BIASES = ("none", "all", "lora_only")

# a saved key, less peft's "base_model.model.": the module's path in the model peft wrapped, then the tensor
_LORA_TENSOR = re.compile(r"(.+)\.(lora_A\.weight|lora_B\.weight|lora_B\.bias|lora_embedding_A|lora_embedding_B)")
_WHOLE_TENSOR = re.compile(r"(.+?)(?:\.base_layer|\.modules_to_save)?\.(weight|bias)")
_LINEAR_PARTS = {"lora_A.weight", "lora_B.weight"}
_EMBEDDING_PARTS = {"lora_embedding_A", "lora_embedding_B"}


def merge_adapters(arrays: dict, folders) -> dict:
    """Merges the adapters in `folders` (a folder, or a list merged in order) into `arrays`,
    convert._canonical's {our name: float32 array}; returns arrays."""
    if isinstance(folders, (str, os.PathLike)):
        folders = [folders]
    for folder in folders:
        config, tensors = read_adapter(folder)
        _merge(arrays, config, tensors, os.fspath(folder))
    return arrays


def read_adapter(folder) -> tuple[dict, dict]:
    """(checked config with peft's defaults filled in, {key less "base_model.model.": float32
    array}) of a peft adapter folder."""
    folder = os.fspath(folder)
    path = os.path.join(folder, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{folder}: no {CONFIG_FILE} (not a peft adapter folder)")
    config = _read_config(path)
    for name in WEIGHT_FILES:
        p = os.path.join(folder, name)
        if os.path.isfile(p):
            try:
                return config, _read_tensors(p)
            except AdapterError:
                raise
            except ConversionError as e:  # convert's reader: a file it cannot read
                raise AdapterError(str(e)) from None
    raise FileNotFoundError(f"{folder}: no {' or '.join(WEIGHT_FILES)}")


def _read_tensors(path) -> dict:
    # convert's reader: it widens bfloat16, which adapters trained in it are saved as
    sd = _load_state_file(path)
    return {key.removeprefix("base_model.model."):
            t.detach().float().cpu().numpy() if hasattr(t, "detach") else np.asarray(t, dtype=np.float32)
            for key, t in sd.items()}


# -- the config -----------------------------------------------------------------------------

def _read_config(path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (UnicodeDecodeError, ValueError) as e:
        raise AdapterError(f"{path}: not a JSON file: {e}") from None
    if not isinstance(raw, dict):
        raise AdapterError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    config = {**DEFAULTS, **{k: v for k, v in raw.items() if v is not None}}
    _check_mergeable(config, path)
    _check_values(config, path)
    return config


def _check_mergeable(config, path) -> None:
    kind = config.get("peft_type")
    if kind != "LORA":
        raise AdapterError(f"{path}: peft_type {kind!r} is not a LoRA adapter: pygpt applies LoRA (\"LORA\") only")
    if config.get("use_dora"):
        raise AdapterError(f"{path}: a DoRA adapter (use_dora) rescales each weight by a learned magnitude: "
                           "pygpt applies plain LoRA only; merge it with peft's merge_and_unload and convert that")
    init = config.get("init_lora_weights", True)
    if not any(init is v or (isinstance(v, str) and init == v) for v in PLAIN_INITS):
        raise AdapterError(f"{path}: init_lora_weights {init!r} changes the base weights, so the adapter does not "
                           "apply to the base model as saved; save it with peft's "
                           "path_initial_model_for_weight_conversion to get a plain LoRA")
    for key, value in config.items():
        if key not in NEUTRAL_KEYS and value:
            raise AdapterError(f"{path}: {key} = {value!r} is a LoRA feature pygpt cannot merge")


def _check_values(config, path) -> None:
    def positive_int(v):
        return isinstance(v, int) and not isinstance(v, bool) and v > 0

    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    problems = []
    if not positive_int(config["r"]):
        problems.append(f"r must be a positive integer, got {config['r']!r}")
    if not number(config["lora_alpha"]):
        problems.append(f"lora_alpha must be a number, got {config['lora_alpha']!r}")
    for key, valid in (("rank_pattern", positive_int), ("alpha_pattern", number)):
        patterns = config[key]
        if not isinstance(patterns, dict) or not all(_is_regex(k) and valid(v) for k, v in patterns.items()):
            problems.append(f"{key} must map module name patterns to values like r's / lora_alpha's, got {patterns!r}")
    if not isinstance(config["use_rslora"], bool):
        problems.append(f"use_rslora must be true or false, got {config['use_rslora']!r}")
    if config["bias"] not in BIASES:
        problems.append(f"bias must be one of {BIASES}, got {config['bias']!r}")
    if problems:
        raise AdapterError(f"{path}: {'; '.join(problems)}")


def _is_regex(pattern) -> bool:
    try:
        re.compile(pattern)
        return True
    except (re.error, TypeError):
        return False


def _check_targets(config, layers, where) -> None:
    """Each name of a target_modules list must name a GPT-2 layer (peft matches the end of a
    module's path); a regex, or "all-linear", leaves it to the saved tensors. layers: our names
    of the base's matrices ("wte", "h.0.attn.c_attn", ...)."""
    targets = config.get("target_modules")
    if not isinstance(targets, list):
        return
    layers = ["transformer." + name for name in layers] + ["lm_head"]
    for target in targets:
        if not any(layer == target or layer.endswith("." + str(target)) for layer in layers):
            raise AdapterError(f"{where}: target_modules names {target!r}, which is not a layer of this GPT-2 "
                               "(c_attn, c_proj, c_fc, wte, wpe, lm_head): an adapter for another model")


def _pattern_value(patterns: dict, path: str, default):
    """peft's get_pattern_key: the value of the first pattern matching the end of the
    module's path at a '.', else the default."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", path):
            return value
    return default


def _rank_and_scaling(config, path) -> tuple[int, float]:
    r = _pattern_value(config["rank_pattern"], path, config["r"])
    alpha = _pattern_value(config["alpha_pattern"], path, config["lora_alpha"])
    return r, alpha / (math.sqrt(r) if config["use_rslora"] else r)


# -- merging --------------------------------------------------------------------------------

def _our_name(path: str) -> str:
    """'transformer.h.0.attn.c_attn' (GPT2LMHeadModel), 'h.0.attn.c_attn' (GPT2Model) -> 'h.0.attn.c_attn'"""
    return path.removeprefix("_orig_mod.").removeprefix("transformer.")


def _merge(arrays, config, tensors, where) -> None:
    _check_targets(config, [name.removesuffix(".weight") for name, a in arrays.items() if a.ndim == 2], where)
    tied = "lm_head.weight" not in arrays  # an untied LM head is a linear layer of its own
    loras, whole = _split(tensors, where, tied)
    for name, (key, a) in whole.items():
        _replace(arrays, name, key, a, where, tied)
    _untie_head(loras, config, where, tied)
    for path, parts in loras.items():
        _add_delta(arrays, path, parts, *_rank_and_scaling(config, path), where)


def _split(tensors, where, tied: bool = True) -> tuple[dict, dict]:
    """({module path: {tensor: array}} of the LoRAs, {our name: (key, array)} of the tensors
    saved whole). peft saves a modules_to_save layer's trained copy under the layer's name,
    and with bias="all" its wrapper's copy (".modules_to_save.") and the original it leaves
    unused (".original_module.", skipped) too. An adapter that holds neither is an AdapterError."""
    loras, whole = {}, {}
    for key, a in tensors.items():
        m = _LORA_TENSOR.fullmatch(key)
        if m:
            loras.setdefault(m[1], {})[m[2]] = a
        elif "lora_" in key:
            raise AdapterError(f"{where}: tensor '{key}' belongs to a LoRA variant pygpt cannot merge "
                               "(plain LoRA has lora_A / lora_B, or lora_embedding_A / _B)")
        elif ".original_module." not in key:
            name = _whole_name(key, tied)
            if name in whole and not np.array_equal(whole[name][1], a):
                raise AdapterError(f"{where}: '{whole[name][0]}' and '{key}' are two different values of '{name}'")
            whole[name] = (key, a)
    for path, parts in loras.items():
        if not (set(parts) - {"lora_B.bias"} in (_LINEAR_PARTS, _EMBEDDING_PARTS)):
            raise AdapterError(f"{where}: the LoRA of '{path}' has {sorted(parts)}: it needs an A and a B")
    if not loras and not whole:
        raise AdapterError(f"{where}: the adapter holds no tensors")
    return loras, whole


def _whole_name(key, tied: bool = True) -> str:
    m = _WHOLE_TENSOR.fullmatch(key)
    name = f"{_our_name(m[1])}.{m[2]}" if m else key
    return "wte.weight" if tied and name == "lm_head.weight" else name


def _replace(arrays, name, key, a, where, tied: bool = True) -> None:
    """A tensor saved whole (modules_to_save, a bias of bias="all" / "lora_only") replaces the base's.
    Untied (`tied` false), wte and lm_head are two tensors, each [V, C] as peft saves it."""
    if name not in arrays:
        raise AdapterError(f"{where}: tensor '{key}' is not one of this GPT-2's")
    base = arrays[name]
    if name == "wte.weight" and tied:
        if a.shape == base.shape and np.array_equal(a, base):
            return  # a copy of the base's (peft's save_embedding_layers)
        raise AdapterError(f"{where}: '{key}' replaces the token embedding (modules_to_save), and peft replaces it "
                           "on one side only of the embedding / LM head that pygpt stores as one tensor")
    known_layout = {"wpe.weight"} | (set() if tied else {"wte.weight", "lm_head.weight"})  # [rows, C]
    if a.ndim == 2 and name not in known_layout:
        raise AdapterError(f"{where}: '{key}' replaces a whole linear layer (modules_to_save), whose layout, "
                           "Conv1D's [n_in, n_out] or Linear's [n_out, n_in], the adapter does not record; merge "
                           "it with peft's merge_and_unload and convert that")
    if a.shape != base.shape:
        raise AdapterError(f"{where}: tensor '{key}' has shape {list(a.shape)}, the base model's "
                           f"{list(base.shape)}: an adapter for another model")
    arrays[name] = np.ascontiguousarray(a, dtype=np.float32)


def _untie_head(loras, config, where, tied: bool = True) -> None:
    """pygpt stores the token embedding and a tied LM head as one tensor, so a LoRA on either
    merges only where both carry the same one, as peft's ensure_weight_tying makes them
    (lm_head's A and B are wte's B.T and A.T); that one merges into wte.
    (peft's merge_and_unload adds it to the shared weight twice.) An untied head (`tied`
    false) is a layer of its own, its LoRA merged into it."""
    if not tied:
        return
    wte = next((p for p in loras if _our_name(p) == "wte"), None)
    head = next((p for p in loras if _our_name(p) == "lm_head"), None)
    if wte is None and head is None:
        return
    if head is None or wte is None:
        one, other = ("token embedding (wte)", "LM head") if head is None else ("LM head (lm_head)", "token embedding")
        raise AdapterError(f"{where}: a LoRA on the {one} alone leaves the {other} tied to it unchanged, "
                           "and pygpt stores the two as one tensor; train it with "
                           "LoraConfig(target_modules=[..., \"lm_head\"], ensure_weight_tying=True)")
    e, h = loras[wte], loras[head]
    tied = (set(h) == _LINEAR_PARTS and set(e) == _EMBEDDING_PARTS
            and np.array_equal(h["lora_A.weight"], e["lora_embedding_B"].T)
            and np.array_equal(h["lora_B.weight"], e["lora_embedding_A"].T)
            and _rank_and_scaling(config, head) == _rank_and_scaling(config, wte))
    if not tied:
        raise AdapterError(f"{where}: the LoRAs on the token embedding (wte) and the LM head differ, and pygpt "
                           "stores the two as one tensor (peft's ensure_weight_tying=True makes them one)")
    del loras[head]


def _add_delta(arrays, path, parts, r, scaling, where) -> None:
    """W += scaling * (B @ A) on our [n_out, n_in] (an embedding's A.T and B.T play B and A);
    a LoRA bias (lora_bias) adds scaling * b to the layer's bias."""
    name = _our_name(path)
    embedding = "lora_embedding_A" in parts
    if f"{name}.weight" not in arrays or arrays[f"{name}.weight"].ndim != 2 or embedding != (name in ("wte", "wpe")):
        raise AdapterError(f"{where}: '{path}' is not a layer of this GPT-2 that LoRA adapts "
                           "(c_attn, c_proj, c_fc; wte, wpe): an adapter for another model")
    w = arrays[f"{name}.weight"]
    if embedding:
        a, b = parts["lora_embedding_A"], parts["lora_embedding_B"]
        down, up = b.T, a.T
    else:
        a, b = parts["lora_A.weight"], parts["lora_B.weight"]
        down, up = a, b
    _check_fits(path, a, b, down, up, w.shape, r, where)
    arrays[f"{name}.weight"] = (w + scaling * (up.astype(np.float64) @ down)).astype(np.float32)
    if "lora_B.bias" in parts:
        _add_bias(arrays, path, scaling * parts["lora_B.bias"].astype(np.float64), where)


def _check_fits(path, a, b, down, up, shape, r, where) -> None:
    """down [r, n_in] and up [n_out, r], made of the LoRA's A and B, fit a layer [n_out, n_in]."""
    n_out, n_in = shape
    if down.shape != (r, n_in) or up.shape != (n_out, r):
        raise AdapterError(f"{where}: the LoRA of '{path}' has A {list(a.shape)} and B {list(b.shape)}, which do "
                           f"not fit the base layer [n_out, n_in] = {list(shape)} with r = {r} (the config's "
                           "r / rank_pattern): an adapter for another model, or a config that is not its own")


def _add_bias(arrays, path, delta, where) -> None:
    name = f"{_our_name(path)}.bias"
    if name not in arrays:
        raise AdapterError(f"{where}: the LoRA of '{path}' has a bias (lora_bias), and the base layer has none")
    if delta.shape != arrays[name].shape:
        raise AdapterError(f"{where}: the LoRA bias of '{path}' has shape {list(delta.shape)}, the base layer's "
                           f"{list(arrays[name].shape)}")
    arrays[name] = (arrays[name] + delta).astype(np.float32)


# -- applied at load time, unmerged (pygpt.load's lora=) ------------------------------------------

MERGE_INSTEAD = "merge the adapter into the model at conversion instead (pygpt convert SOURCE OUT --lora ADAPTER)"


def adapter_list(lora) -> list:
    """pygpt.load's lora= as [(folder, scale)]: None, a folder, or a list (or tuple) of folders
    and (folder, scale) pairs. A TypeError names what is not one, a ValueError a scale that is
    not finite."""
    if lora is None:
        return []
    if isinstance(lora, (str, os.PathLike)):
        return [(os.fspath(lora), 1.0)]
    if not isinstance(lora, (list, tuple)):
        raise TypeError(f"lora must be an adapter folder or a list of folders and (folder, scale) pairs, "
                        f"not {type(lora).__name__}")
    if len(lora) == 2 and isinstance(lora[0], (str, os.PathLike)) and _is_number(lora[1]):
        raise TypeError(f"lora={lora!r}: a (folder, scale) pair goes in a list: lora=[{lora!r}]")
    adapters = []
    for item in lora:
        if isinstance(item, (str, os.PathLike)):
            folder, scale = item, 1.0
        elif isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], (str, os.PathLike)):
            folder, scale = item
            if not _is_number(scale):
                raise TypeError(f"lora: the scale of {os.fspath(folder)!r} must be a number, got {scale!r}")
            if not math.isfinite(scale):
                raise ValueError(f"lora: the scale of {os.fspath(folder)!r} must be finite, got {scale}")
        else:
            raise TypeError(f"lora: each item must be an adapter folder or a (folder, scale) pair, got {item!r}")
        adapters.append((os.fspath(folder), float(scale)))
    return adapters


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def linear_shapes(config: dict) -> dict:
    """{our name: (n_out, n_in)} of the linear layers of a GPT-2 of this config (pygpt's
    config.json), as the model file lays them out (_format.expected_tensors)."""
    specs = expected_tensors({**config, "dtype": "f32"})
    return {name.removesuffix(".weight"): tuple(shape) for name, (_, shape) in specs.items()
            if name.startswith("h.") and name.endswith(".weight") and len(shape) == 2}


def _is_stored_copy(base, config: dict, name: str, a) -> bool:
    """Whether `a`, a tensor an adapter saved whole, is the model's own `name` as its file stores
    it (base: (model.safetensors path, its header's [(name, dtype, shape, begin, end)])):
    encoded as the converter encodes that dtype, byte for byte."""
    from .convert import _quantize_into

    if base is None:
        return False
    path, header = base
    where = {t[0]: t for t in header}
    encoded = {}
    dtype = "f32" if name == "wpe.weight" else config["dtype"]  # the position embedding is stored as f32
    try:
        _quantize_into(encoded, name, np.ascontiguousarray(a, dtype=np.float32), dtype,
                       config.get("quant_group_size", 0))
    except ValueError:  # a shape the dtype's layout does not take: not this model's
        return False
    with open(path, "rb") as f:
        for tname, (st_dtype, arr) in encoded.items():
            t = where.get(tname)
            if t is None or t[1] != st_dtype or list(t[2]) != list(arr.shape):
                return False
            f.seek(t[3])
            if f.read(t[4] - t[3]) != np.ascontiguousarray(arr).tobytes():
                return False
    return True


def low_rank_terms(adapters, config: dict, base=None) -> dict:
    """{our layer name: (A [R, n_in], B [n_out, R])}, float32, that apply the [(folder, scale)]
    adapters unmerged to a GPT-2 of this config: y = x W^T + b + (x A^T) B^T. Each adapter's
    A and B stack along R in order, its LoRA's scaling times its scale folded into its columns
    of B (float64, then rounded once). As peft's forward applies them: a LoRA on the LM head
    ("lm_head", [V, C]) adapts the logits alone, and one on an embedding ("wte" or "wpe",
    taken as a layer [C, rows] whose input is row i's one-hot: peft's lora_embedding_A [R, rows]
    and _B [C, R]) the embedding alone, tied to the head or not (a merge would change both of a
    tied pair). peft saves the embeddings' and the head's weights whole beside such LoRAs
    (save_embedding_layers): a copy of the model's own is passed over, which `base`
    (model.safetensors and its header, _is_stored_copy) lets it check. What only a merge can
    do is an AdapterError naming it."""
    C = config["n_embd"]
    shapes = {**linear_shapes(config), "lm_head": (config["vocab_size"], C), "wte": (C, config["vocab_size"]),
              "wpe": (C, config["n_ctx"])}
    layers = list(shapes)
    terms = {}  # layer: ([A, ...], [B, ...])
    tied = config.get("tie_word_embeddings", True)
    for folder, scale in adapters:
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{folder}: no such adapter folder" if not os.path.exists(folder)
                                    else f"{folder}: not a folder (an adapter is a folder with {CONFIG_FILE})")
        adapter_config, tensors = read_adapter(folder)
        _check_targets(adapter_config, layers, folder)
        loras, whole = _split(tensors, folder, tied)
        for path, parts in loras.items():
            name = _our_name(path)
            embedding = name in ("wte", "wpe")
            if name not in shapes or set(parts) - {"lora_B.bias"} != (_EMBEDDING_PARTS if embedding else _LINEAR_PARTS):
                raise AdapterError(f"{folder}: '{path}' is not a layer of this GPT-2 that LoRA adapts "
                                   "(c_attn, c_proj, c_fc, lm_head; wte, wpe): an adapter for another model")
            if "lora_B.bias" in parts:
                raise AdapterError(f"{folder}: the LoRA of '{path}' has a bias (lora_bias), which pygpt does not add "
                                   f"at load time; {MERGE_INSTEAD}")
            a, b = (parts["lora_embedding_A"], parts["lora_embedding_B"]) if embedding else (
                parts["lora_A.weight"], parts["lora_B.weight"])
            r, scaling = _rank_and_scaling(adapter_config, path)
            _check_fits(path, a, b, a, b, shapes[name], r, folder)
            down, up = terms.setdefault(name, ([], []))
            down.append(a.astype(np.float32))
            up.append((b.astype(np.float64) * (scaling * scale)).astype(np.float32))
        whole = {name: (key, a) for name, (key, a) in whole.items()
                 if not (name in ("wte.weight", "wpe.weight", "lm_head.weight")
                         and _is_stored_copy(base, config, name, a))}
        if whole:
            key = next(iter(whole.values()))[0]
            raise AdapterError(f"{folder}: '{key}' is a tensor the adapter saves whole (modules_to_save, or a bias of "
                               "bias=\"all\" / \"lora_only\"), which replaces the base model's: pygpt applies only "
                               f"LoRA pairs at load time; {MERGE_INSTEAD}")
    return {name: (np.ascontiguousarray(np.concatenate(down, axis=0)), np.ascontiguousarray(np.concatenate(up, axis=1)))
            for name, (down, up) in terms.items()}


# -- command line: --lora DIR, --lora-scaled DIR SCALE (every command that loads a model) ---------


def add_arguments(p) -> None:
    """--lora DIR and --lora-scaled DIR SCALE, each repeatable, on an argparse parser or group:
    args.lora is then None or pygpt.load's lora= list, in the order given."""
    p.add_argument("--lora", metavar="DIR", action=_AppendAdapter, dest="lora", default=None,
                   help="apply the PEFT LoRA adapter in DIR at load time, unmerged, at any weight dtype (it costs "
                        "some speed; 'pygpt convert --lora' merges it into the weights instead); may be repeated")
    p.add_argument("--lora-scaled", metavar=("DIR", "SCALE"), nargs=2, action=_AppendAdapter, dest="lora",
                   help="the same with the adapter's effect times SCALE (1: as trained); may be repeated")


class _AppendAdapter(argparse.Action):
    """Appends a folder (--lora) or a (folder, scale) pair (--lora-scaled) to args.lora."""

    def __call__(self, parser, namespace, values, option_string=None):
        if isinstance(values, list):  # --lora-scaled DIR SCALE
            folder, text = values
            try:
                scale = float(text)
            except ValueError:
                raise argparse.ArgumentError(self, f"SCALE must be a number, got {text!r}") from None
            if not math.isfinite(scale):
                raise argparse.ArgumentError(self, f"SCALE must be finite, got {text!r}")
            values = (folder, scale)
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest) or []), values])
