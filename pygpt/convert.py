"""Converts a PyTorch GPT-2 into a pygpt model folder.

Sources:
  * a Hugging Face model id ("gpt2", "distilgpt2", ...; downloaded when online)
  * a local Hugging Face folder (save_pretrained: model.safetensors or pytorch_model.bin)
  * a nanoGPT checkpoint (ckpt.pt with "model_args" and "model")
  * an llm.c checkpoint (gpt2_124M.bin: fp32 version 3 or bf16 version 5)
  * a plain state_dict (.pt, .bin or .safetensors) with `config=` (a config.json)
  * a GGUF file of llama.cpp (any weight type the gguf package expands; pygpt/gguf_source.py)
  * any of these with PEFT LoRA adapters merged in (`lora=`: pygpt/lora.py)

Every source becomes the same canonical tensors (docs/FORMAT.md): linear weights as
[n_out, n_in] (Hugging Face's Conv1D stores [n_in, n_out] and is transposed), the tied
token embedding stored once (an LM head that differs from it kept as lm_head.weight),
buffers that are not weights dropped. Sources in safetensors
files (a Hugging Face folder with model.safetensors, a .safetensors state_dict) and llm.c
checkpoints convert with numpy alone; pickled checkpoints (.bin, .pt, nanoGPT) need torch,
and downloads from the hub transformers.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import tempfile

import numpy as np

from ._format import (ATTENTION_SCALING, DTYPES, FORMAT_VERSION, expected_tensors, read_safetensors_header,
                      validate_config)
from . import generation_config
from .chat import CHAT_TEMPLATE_FILE
from .generation_config import FILE as GENERATION_CONFIG_FILE
from .tokenizer import ENDOFTEXT, HF_TOKENIZER, HF_TOKENIZER_CONFIG, Tokenizer, find_tokenizer


class ConversionError(ValueError):
    """The source is not a GPT-2 model this converter understands."""


HF_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
                  "gelu": "gelu_erf"}
LLMC_MAGIC = 20240326
# the type of a source's block-quantized matrices that int8 / int4 at groups of 32 store exactly
SOURCE_BLOCKS = {"int4": "q4_0", "int8": "q8_0"}
_MASK_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?")  # a model id: name or owner/name
TOKENIZER_FILES = (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe"))


# -- reading sources ------------------------------------------------------------------------

def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError("converting needs PyTorch: pip install 'pygpt[convert]'") from None
    return torch


def _load_pickle(path):
    torch = _torch()
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad source
        raise ConversionError(f"{path}: cannot load as a PyTorch checkpoint with weights_only=True: {e}") from None


# safetensors dtype -> numpy dtype as stored (BF16: its 16 bits, widened by _read_safetensors)
_ST_NUMPY = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
             "I8": "i1", "U8": "u1", "BOOL": "?"}


def from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) -> float32: they are the high half of a float32."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _read_safetensors(path):
    """{name: numpy array} of a safetensors file, floats as float32, without torch (the
    safetensors package's numpy reader has no bfloat16, which Hugging Face checkpoints use).
    The header is checked as a pygpt model's (_format), with every dtype of _ST_NUMPY."""
    try:
        tensors = read_safetensors_header(path, {k: np.dtype(v).itemsize for k, v in _ST_NUMPY.items()})
        sd = {}
        for name, dtype, shape, begin, _end in tensors:
            a = np.fromfile(path, dtype=_ST_NUMPY[dtype], count=int(np.prod(shape)), offset=begin).reshape(shape)
            if dtype == "BF16":
                a = from_bf16_bits(a)
            elif a.dtype.kind == "f":
                a = a.astype(np.float32, copy=False)
            sd[name] = a
        return sd
    except (OSError, ValueError) as e:  # ModelFormatError is a ValueError
        raise ConversionError(f"{path}: cannot read safetensors: {e}") from None


def _load_state_file(path):
    if path.endswith(".safetensors"):
        return _read_safetensors(path)
    sd = _load_pickle(path)
    if not isinstance(sd, dict):
        raise ConversionError(f"{path}: expected a state_dict (a dict of tensors), got {type(sd).__name__}")
    return sd


def _config_from_hf(hf: dict, where: str) -> dict:
    if hf.get("model_type") not in (None, "gpt2"):
        raise ConversionError(f"{where}: model_type {hf.get('model_type')!r} is not GPT-2")
    try:
        act = hf.get("activation_function", "gelu_new")
        if act not in HF_ACTIVATIONS:
            raise ConversionError(f"{where}: activation_function {act!r} is not supported")
        if hf.get("n_inner") not in (None, 4 * hf["n_embd"]):
            raise ConversionError(f"{where}: n_inner {hf['n_inner']!r}: pygpt's MLP is 4 x n_embd wide "
                                  f"({4 * hf['n_embd']}), as GPT-2's")
        if hf.get("add_cross_attention"):
            raise ConversionError(f"{where}: add_cross_attention: a GPT-2 with cross-attention (an "
                                  "encoder-decoder's decoder) is not supported")
        scaling = {key: hf.get(key, default) for key, default in ATTENTION_SCALING.items()}
        return {
            "n_layer": hf["n_layer"], "n_head": hf["n_head"], "n_embd": hf["n_embd"],
            "n_ctx": hf.get("n_positions", hf.get("n_ctx")), "vocab_size": hf["vocab_size"],
            "layer_norm_epsilon": hf.get("layer_norm_epsilon", 1e-5), "activation": HF_ACTIVATIONS[act],
            **{key: v for key, v in scaling.items() if v != ATTENTION_SCALING[key]},  # GPT-2's: not written
            "tie_word_embeddings": hf.get("tie_word_embeddings", True) is not False,
        }
    except KeyError as e:
        raise ConversionError(f"{where}: GPT-2 config lacks {e}") from None


def _read_hf_folder(folder):
    cfg_path = os.path.join(folder, "config.json")
    with open(cfg_path) as f:
        hf = json.load(f)
    if "format" in hf and hf.get("format") == "pygpt":
        raise ConversionError(f"{folder} is already a pygpt model folder")
    config = _config_from_hf(hf, cfg_path)
    for name in ("model.safetensors", "pytorch_model.bin"):
        p = os.path.join(folder, name)
        if os.path.isfile(p):
            return _load_state_file(p), config
        if os.path.isfile(p + ".index.json"):
            return _load_shards(p + ".index.json"), config
    raise ConversionError(f"{folder}: no model.safetensors or pytorch_model.bin (or their shards' "
                          "index.json)")


def _load_shards(index_path):
    """The state_dict of a checkpoint save_pretrained split in shards (its weight_map names
    each tensor's file, beside the index)."""
    try:
        with open(index_path, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        files = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConversionError(f"{index_path}: not a shard index (a weight_map of tensor -> file): {e}") from None
    sd = {}
    for name in files:
        if not isinstance(name, str) or os.path.basename(name) != name:
            raise ConversionError(f"{index_path}: shard {name!r} is not a file name beside the index")
        path = os.path.join(os.path.dirname(index_path), name)
        if not os.path.isfile(path):
            raise ConversionError(f"{index_path}: shard {name} is missing")
        shard = _load_state_file(path)
        for key in shard:
            if key in sd:
                raise ConversionError(f"{index_path}: tensor '{key}' is in two shards")
        sd.update(shard)
    missing = sorted(set(weight_map) - set(sd))
    if missing:
        raise ConversionError(f"{index_path}: tensors the index lists are in no shard: {missing[:5]}")
    return sd


def _read_hf_hub(model_id):
    try:
        from transformers import GPT2LMHeadModel
    except ImportError:
        raise ImportError("converting a Hugging Face model id needs transformers: pip install 'pygpt[convert]'") from None
    try:
        model = GPT2LMHeadModel.from_pretrained(model_id)  # downloads when online
    except Exception as e:  # noqa: BLE001
        raise ConversionError(f"cannot load '{model_id}' as a local path or a Hugging Face GPT-2 model: {e}") from None
    return model.state_dict(), _config_from_hf(model.config.to_dict(), model_id), _hub_tokenizer(model_id)


def _hub_tokenizer(model_id):
    """The folder (in the Hugging Face cache) holding the model's tokenizer.json, or its
    vocab.json + merges.txt, and its chat template's files where it has them."""
    from huggingface_hub import hf_hub_download

    folder = None
    for files in ((HF_TOKENIZER,), *TOKENIZER_FILES[:1]):
        try:
            folder = os.path.dirname([hf_hub_download(model_id, name) for name in files][0])
            break
        except Exception:  # noqa: BLE001 - a model without tokenizer files converts without them
            pass
    if folder is None:
        return None
    for name in (HF_TOKENIZER_CONFIG, CHAT_TEMPLATE_FILE, GENERATION_CONFIG_FILE):
        try:
            hf_hub_download(model_id, name)
        except Exception:  # noqa: BLE001 - most models have no chat template (or generation config)
            pass
    return folder


def _read_nanogpt(ckpt, where):
    args = ckpt["model_args"]
    try:
        config = {
            "n_layer": args["n_layer"], "n_head": args["n_head"], "n_embd": args["n_embd"],
            "n_ctx": args["block_size"], "vocab_size": args["vocab_size"],
            "layer_norm_epsilon": 1e-5,
            # nanoGPT's MLP uses nn.GELU(), the exact erf form; tools/train.py records its own
            "activation": args.get("activation", "gelu_erf"),
        }
    except KeyError as e:
        raise ConversionError(f"{where}: nanoGPT model_args lacks {e}") from None
    sd = ckpt.get("model")
    if not isinstance(sd, dict):
        raise ConversionError(f"{where}: nanoGPT checkpoint has no 'model' state_dict")
    sd = {k.removeprefix("_orig_mod."): v for k, v in sd.items()}  # torch.compile's prefix
    return sd, config


def _read_llmc(path):
    """llm.c's checkpoint: a 256 x int32 header, then every parameter in a fixed order."""
    header = np.fromfile(path, dtype="<i4", count=256)
    if header.size < 256 or header[0] != LLMC_MAGIC:
        raise ConversionError(f"{path}: not an llm.c checkpoint (bad magic)")
    version = int(header[1])
    if version not in (3, 5):
        raise ConversionError(f"{path}: llm.c version {version} is not supported (3 = fp32, 5 = bf16)")
    maxT, V, L, NH, C, Vp = (int(v) for v in header[2:8])
    C3, C4 = 3 * C, 4 * C
    shapes = [("wte", (Vp, C)), ("wpe", (maxT, C)), ("ln_1.weight", (L, C)), ("ln_1.bias", (L, C)),
              ("attn.c_attn.weight", (L, C3, C)), ("attn.c_attn.bias", (L, C3)),
              ("attn.c_proj.weight", (L, C, C)), ("attn.c_proj.bias", (L, C)),
              ("ln_2.weight", (L, C)), ("ln_2.bias", (L, C)),
              ("mlp.c_fc.weight", (L, C4, C)), ("mlp.c_fc.bias", (L, C4)),
              ("mlp.c_proj.weight", (L, C, C4)), ("mlp.c_proj.bias", (L, C)),
              ("ln_f.weight", (C,)), ("ln_f.bias", (C,))]
    count = sum(int(np.prod(s)) for _, s in shapes)
    raw = np.fromfile(path, dtype="<f4" if version == 3 else "<u2", offset=256 * 4)
    if raw.size < count:
        raise ConversionError(f"{path}: truncated llm.c checkpoint ({raw.size} of {count} parameters)")
    if version == 5:  # bf16
        raw = from_bf16_bits(raw[:count])
    sd, off = {}, 0
    for name, shape in shapes:
        n = int(np.prod(shape))
        t = raw[off:off + n].reshape(shape)
        off += n
        if name in ("wte", "wpe"):
            sd[f"transformer.{name}.weight"] = t
        elif name.startswith("ln_f"):
            sd[f"transformer.{name}"] = t
        else:
            for i in range(L):
                sd[f"transformer.h.{i}.{name}"] = t[i]
    config = {"n_layer": L, "n_head": NH, "n_embd": C, "n_ctx": maxT, "vocab_size": V,
              "layer_norm_epsilon": 1e-5, "activation": "gelu_tanh"}  # llm.c: GELU, tanh form
    return sd, config


def read_source(source, config=None):
    """(state_dict, partial config, tokenizer folder or None) from any supported source."""
    source = os.fspath(source)
    if os.path.isdir(source):
        if not os.path.isfile(os.path.join(source, "config.json")):
            raise ConversionError(f"{source}: a folder without config.json is not a Hugging Face model")
        sd, cfg = _read_hf_folder(source)
        return sd, cfg, source
    if os.path.isfile(source):
        from . import gguf_source

        if gguf_source.is_gguf(source):  # llama.cpp's file, with its tokenizer
            folder = tempfile.mkdtemp(prefix="pygpt-gguf-")
            atexit.register(shutil.rmtree, folder, ignore_errors=True)
            sd, cfg = gguf_source.read(source, folder)
            return sd, cfg, folder
        if config is not None:  # a plain state_dict
            with open(config) as f:
                raw = json.load(f)
            cfg = raw if "activation" in raw else _config_from_hf(raw, config)
            return _load_state_file(source), cfg, None
        if source.endswith(".bin"):
            with open(source, "rb") as f:
                magic = int.from_bytes(f.read(4), "little")
            if magic == LLMC_MAGIC:
                sd, cfg = _read_llmc(source)
                return sd, cfg, None
        obj = _load_state_file(source)
        if "model_args" in obj:
            sd, cfg = _read_nanogpt(obj, source)
            return sd, cfg, None
        raise ConversionError(f"{source}: a plain state_dict needs config= (--config) with its GPT-2 config")
    if not _HUB_ID.fullmatch(source) or ".." in source or source.endswith((".pt", ".bin", ".safetensors", ".gguf")):
        raise FileNotFoundError(f"no such file or folder: {source}")
    return _read_hf_hub(source)  # "gpt2", "openai-community/gpt2": a Hugging Face model id


# -- canonical tensors ----------------------------------------------------------------------

def _canonical(sd: dict, cfg: dict) -> dict:
    """Maps HF / nanoGPT / llm.c names to ours; float32 numpy arrays, linear weights [out, in]."""
    out = {}
    for key, t in sd.items():
        if not hasattr(t, "shape"):
            continue
        name = key.removeprefix("transformer.")
        if _MASK_BUFFER.fullmatch(name):
            continue  # the causal-mask buffers of older Hugging Face checkpoints, not weights
        out[name] = t
    C = cfg["n_embd"]
    if "wte.weight" not in out:
        raise ConversionError("not a GPT-2 state_dict: no token embedding (wte.weight)")
    if "h.0.attn.c_attn.weight" not in out:
        raise ConversionError("not a GPT-2 state_dict: no h.0.attn.c_attn.weight")
    # Conv1D (Hugging Face / OpenAI) stores [in, out]; nn.Linear (nanoGPT, llm.c) [out, in].
    conv1d = tuple(out["h.0.attn.c_attn.weight"].shape) == (C, 3 * C)
    # GPT-2's LM head is the token embedding (tied; a copy saved beside it is dropped); one
    # that differs is kept as lm_head.weight, a matrix of its own (tie_word_embeddings false)
    lm_head, wte = out.get("lm_head.weight"), out["wte.weight"]
    if lm_head is not None:
        if tuple(lm_head.shape) != tuple(wte.shape):
            raise ConversionError(f"the LM head has shape {list(lm_head.shape)}, the token embedding "
                                  f"{list(wte.shape)}: a GPT-2's are both [vocab_size, n_embd]")
        if bool((lm_head == wte).all()):
            del out["lm_head.weight"]
    elif cfg.get("tie_word_embeddings") is False:
        raise ConversionError("the config says the LM head is not tied (tie_word_embeddings false) "
                              "but the source has no lm_head.weight")
    arrays = {}
    for name, t in out.items():
        a = t.detach().float().cpu().numpy() if hasattr(t, "detach") else np.asarray(t, dtype=np.float32)
        if conv1d and name.startswith("h.") and a.ndim == 2:
            a = a.T
        arrays[name] = np.ascontiguousarray(a, dtype=np.float32)
    return arrays


def to_bf16_bits(w: np.ndarray) -> np.ndarray:
    """float32 -> the bits of bfloat16, rounded to nearest even (as torch's .to(bfloat16));
    NaN stays NaN."""
    bits = np.ascontiguousarray(w, dtype=np.float32).view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    nan = np.isnan(w)
    if nan.any():
        rounded[nan] = ((bits[nan] >> 16) | np.uint32(0x40)).astype(np.uint16)
    return rounded


def _quantize_into(tensors: dict, name: str, w: np.ndarray, dtype: str, group: int) -> None:
    """tensors[name...] = (safetensors dtype, array) of weight w stored as dtype."""
    if dtype == "f32":
        tensors[name] = ("F32", w)
    elif dtype == "f16":
        tensors[name] = ("F16", w.astype(np.float16))  # round to nearest even
    elif dtype == "bf16":
        tensors[name] = ("BF16", to_bf16_bits(w))
    else:
        from . import quantize

        for tname, arr in quantize.quantize(name, w, dtype, group).items():
            arr = np.ascontiguousarray(arr)
            tensors[tname] = ({np.dtype(np.int8): "I8", np.dtype(np.uint8): "U8", np.dtype(np.float32): "F32"}
                              [arr.dtype], arr)


def _write_safetensors(path: str, tensors: dict, metadata: dict) -> None:
    """Writes {name: (safetensors dtype, array)} as a safetensors file (the safetensors
    package's numpy writer cannot label bfloat16 bits as BF16): a JSON header, padded to 8
    bytes, then the tensors' bytes in order."""
    header, offset = {"__metadata__": metadata}, 0
    for name, (dtype, a) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for _, a in tensors.values():
            f.write(np.ascontiguousarray(a).tobytes())


def _chat_template(folder, verbose: bool = False):
    """A Hugging Face folder's chat template, or None: its chat_template.jinja (what newer
    transformers saves, and prefers), else tokenizer_config.json's "chat_template", a string or
    a list of {"name", "template"} of which "default" is the one used."""
    if folder is None:
        return None
    path = os.path.join(folder, CHAT_TEMPLATE_FILE)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return f.read()
    path = os.path.join(folder, HF_TOKENIZER_CONFIG)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            template = json.load(f).get("chat_template")
    except (ValueError, AttributeError) as e:  # not JSON, or not an object
        raise ConversionError(f"{path}: not a tokenizer config: {e}") from None
    if isinstance(template, list) and all(isinstance(t, dict) and isinstance(t.get("name"), str) and
                                          isinstance(t.get("template"), str) for t in template):
        named = {t["name"]: t["template"] for t in template}
        if "default" not in named:
            if verbose:
                print(f"warning: {path} has chat templates {sorted(named)} but no \"default\" one; none is kept")
            return None
        template = named["default"]
    if template is not None and not isinstance(template, str):
        raise ConversionError(f"{path}: \"chat_template\" must be a string or a list of {{\"name\", \"template\"}}")
    return template


def _generation_config(folder):
    """A Hugging Face folder's generation_config.json as text, checked to be a JSON object that
    pygpt reads (pygpt/generation_config.py), or None where the folder has none."""
    if folder is None:
        return None
    path = os.path.join(folder, GENERATION_CONFIG_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        generation_config.read(json.loads(text), where=path)
    except (UnicodeDecodeError, ValueError) as e:
        raise ConversionError(f"{path}: {e}") from None
    return text


def _find_tokenizer(folder):
    """folder, if it holds a tokenizer (tokenizer.json, vocab.json + merges.txt, ...), else None."""
    if folder is None or find_tokenizer(folder) is None:
        return None
    return folder


def _write_tokenizer(tokenizer: Tokenizer, tok_dir: str, out_dir: str) -> None:
    """Copies the tokenizer's files from tok_dir: its tokenizer.json, else its vocab.json +
    merges.txt (or encoder.json + vocab.bpe) and, where it has added tokens, a
    tokenizer_config.json listing them (as transformers does). Another conversion's tokenizer
    files in out_dir are removed first."""
    for name in (HF_TOKENIZER, HF_TOKENIZER_CONFIG, *(f for files in TOKENIZER_FILES for f in files)):
        if os.path.isfile(os.path.join(out_dir, name)):
            os.remove(os.path.join(out_dir, name))
    if find_tokenizer(tok_dir) == HF_TOKENIZER:
        shutil.copyfile(os.path.join(tok_dir, HF_TOKENIZER), os.path.join(out_dir, HF_TOKENIZER))
        return
    for files in TOKENIZER_FILES:
        if all(os.path.isfile(os.path.join(tok_dir, f)) for f in files):
            for name in files:
                shutil.copyfile(os.path.join(tok_dir, name), os.path.join(out_dir, name))
            break
    added, matching = tokenizer.added_tokens, tokenizer.matching
    if set(added) - {ENDOFTEXT}:
        specials = tokenizer.special_tokens
        listed = {str(i): {"content": text, "special": text in specials, **matching.get(text, {})}
                  for text, i in sorted(added.items(), key=lambda kv: kv[1])}
        with open(os.path.join(out_dir, HF_TOKENIZER_CONFIG), "w", encoding="utf-8") as f:
            json.dump({"added_tokens_decoder": listed}, f, indent=2, ensure_ascii=False)
            f.write("\n")


def _drop_from_page_cache(path):
    """Writes the file out and drops it from the page cache, so that the first pygpt.load
    reads it back into 2 MiB folios (the loader asks for them): the folios a write leaves
    are mostly small, and decode reads weights 15-25% faster through 2 MiB pages
    (docs/DESIGN.md, "Memory"). Best effort: a system without it loses nothing."""
    if not hasattr(os, "posix_fadvise"):
        return
    try:
        with open(path, "rb") as f:
            os.fsync(f.fileno())
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass


def convert(source, out_dir, dtype: str = "f32", tokenizer=None, config=None, group_size: int | None = None,
            vocab_size: int | None = None, verbose: bool = False, lora=None) -> str:
    """Converts `source` into the pygpt model folder `out_dir`; returns out_dir. `lora`: a
    peft LoRA adapter folder, or a list of them, merged in order into the float32 weights
    before any quantization."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if tokenizer is not None and _find_tokenizer(os.fspath(tokenizer)) is None:
        raise FileNotFoundError(f"{tokenizer}: no tokenizer.json, vocab.json + merges.txt (or encoder.json "
                                "+ vocab.bpe)")
    sd, cfg, tok_src = read_source(source, config)
    tok_dir = _find_tokenizer(os.fspath(tokenizer)) if tokenizer is not None else _find_tokenizer(tok_src)
    tok = Tokenizer.from_dir(tok_dir) if tok_dir is not None else None  # checked before anything is written
    defaults = _generation_config(tok_src)  # the source's own sampling defaults
    template = _chat_template(tok_src, verbose)  # the source's own, else the tokenizer folder's
    if template is None and tokenizer is not None:
        template = _chat_template(os.fspath(tokenizer), verbose)

    arrays = _canonical(sd, cfg)
    if lora:
        from .lora import merge_adapters

        arrays = merge_adapters(arrays, lora)
    bias = "h.0.attn.c_attn.bias" in arrays
    cfg = dict(cfg)
    # nanoGPT and llm.c pad the vocabulary (50257 -> 50304) for speed: trim to the real size
    if vocab_size is None and tok is not None:
        vocab_size = tok.vocab_size
    if vocab_size is not None and arrays["wte.weight"].shape[0] > vocab_size >= 1:
        cfg["vocab_size"] = vocab_size
    cfg["vocab_size"] = min(cfg["vocab_size"], arrays["wte.weight"].shape[0])
    for name in ("wte.weight", "lm_head.weight"):
        if name in arrays and arrays[name].shape[0] != cfg["vocab_size"]:
            arrays[name] = np.ascontiguousarray(arrays[name][: cfg["vocab_size"]])
    untied = "lm_head.weight" in arrays
    if tok is not None and tok.vocab_size > cfg["vocab_size"]:
        raise ConversionError(f"the tokenizer has {tok.vocab_size} tokens but the model's embedding only "
                              f"{cfg['vocab_size']} rows (tokens added without resize_token_embeddings?)")

    config_json = {
        "format": "pygpt", "format_version": FORMAT_VERSION, "architecture": "gpt2",
        "n_layer": int(cfg["n_layer"]), "n_head": int(cfg["n_head"]), "n_embd": int(cfg["n_embd"]),
        "n_ctx": int(cfg["n_ctx"]), "vocab_size": int(cfg["vocab_size"]),
        "layer_norm_epsilon": float(cfg["layer_norm_epsilon"]), "activation": cfg["activation"],
        "bias": bias, "dtype": dtype,
        **{key: cfg[key] for key in ATTENTION_SCALING if key in cfg},
        **({"tie_word_embeddings": False} if untied else {}),  # GPT-2's tied head: not written
    }
    if dtype in ("int8", "int4"):
        from . import quantize

        if group_size is None:  # the default group, or one scale per row where it does not fit
            blocks = cfg.get("source_type") == SOURCE_BLOCKS.get(dtype)  # a q4_0 / q8_0 GGUF file's (gguf_source.py)
            group_size = 32 if blocks else quantize.DEFAULT_GROUP[dtype]
            if not all(quantize.group_fits(n, group_size) for n in (cfg["n_embd"], 4 * cfg["n_embd"])):
                group_size = 0
            elif blocks and verbose:
                print(f"{dtype} in groups of 32, the blocks of the source's {cfg['source_type']}: its weights again")
        config_json["quant_group_size"] = int(group_size)
    try:
        validated = validate_config(config_json)
    except ValueError as e:
        raise ConversionError(f"not a valid GPT-2 config: {e}") from None

    # check every tensor against the shapes the config implies, then store
    expected = expected_tensors({**validated, "dtype": "f32"})
    for name, (_, shape) in expected.items():
        if name not in arrays:
            raise ConversionError(f"source lacks tensor '{name}' (expected shape {shape})")
        if list(arrays[name].shape) != list(shape):
            raise ConversionError(f"tensor '{name}' has shape {list(arrays[name].shape)}, expected {shape}")
    extra = sorted(set(arrays) - set(expected))
    if extra:
        raise ConversionError(f"source has tensors a GPT-2 does not: {extra[:5]}")

    tensors = {}
    for name in expected:
        w = arrays[name]
        if name.endswith(".weight") and w.ndim == 2 and name != "wpe.weight":
            _quantize_into(tensors, name, w, dtype, group_size)
        else:
            tensors[name] = ("F32", w)

    os.makedirs(out_dir, exist_ok=True)
    st_path = os.path.join(out_dir, "model.safetensors")
    _write_safetensors(st_path, tensors, {"format": "pygpt"})
    _drop_from_page_cache(st_path)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump({**config_json, "source": os.path.basename(os.fspath(source).rstrip("/"))}, f, indent=2)
        f.write("\n")
    if tok is not None:
        _write_tokenizer(tok, tok_dir, out_dir)
    elif verbose:
        print("warning: no tokenizer files found; pass tokenizer=DIR to add tokenizer.json or vocab.json + "
              "merges.txt")
    template_path = os.path.join(out_dir, CHAT_TEMPLATE_FILE)
    if template is not None:
        with open(template_path, "w", encoding="utf-8", newline="") as f:
            f.write(template)
    elif os.path.isfile(template_path):  # an earlier conversion's: not this source's template
        os.remove(template_path)
    defaults_path = os.path.join(out_dir, GENERATION_CONFIG_FILE)
    if defaults is not None:
        with open(defaults_path, "w", encoding="utf-8", newline="") as f:
            f.write(defaults)
    elif os.path.isfile(defaults_path):  # likewise an earlier conversion's
        os.remove(defaults_path)
    return out_dir


DESCRIPTION = ("Convert a GPT-2 (Hugging Face id or folder, nanoGPT ckpt.pt, llm.c .bin, or a plain "
               "state_dict with --config) into a pygpt model folder. Safetensors sources and llm.c "
               "checkpoints need no PyTorch; pickles and downloads need pip install 'pygpt[convert]'.")


def add_arguments(p) -> None:
    """The arguments of the convert command, on an argparse parser."""
    p.add_argument("source", help="model id, Hugging Face folder, checkpoint file, or llama.cpp GGUF file")
    p.add_argument("out", help="output folder")
    p.add_argument("--dtype", choices=DTYPES, default="f32", help="weight storage type (default f32)")
    p.add_argument("--group-size", type=int, default=None,
                   help="int8/int4: inputs per scale, 0 = one scale per row, else 32 or a multiple of 64 "
                        "(default: int8 per row, int4 64)")
    p.add_argument("--tokenizer", help="folder with tokenizer.json or vocab.json + merges.txt when the source "
                   "has none")
    p.add_argument("--config", help="config.json for a plain state_dict")
    p.add_argument("--vocab-size", type=int, help="trim a padded vocabulary to this size")
    p.add_argument("--lora", action="append", metavar="DIR",
                   help="a peft LoRA adapter folder to merge in (repeat to merge several, in order)")


def run(args) -> int:
    """Runs the convert command for parsed `args`."""
    convert(args.source, args.out, dtype=args.dtype, tokenizer=args.tokenizer, config=args.config,
            group_size=args.group_size, vocab_size=args.vocab_size, verbose=True, lora=args.lora)
    print(f"wrote {args.out}")
    return 0


def main(argv=None) -> int:
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="convert.py", description=DESCRIPTION)
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError, ImportError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
