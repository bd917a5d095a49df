"""Reads a GPT-2 saved by llama.cpp (a GGUF file of its "gpt2" architecture) for convert.py:
the weights as float32 (quantized types are expanded by the gguf package's own dequantize, so
any type it knows converts: F32, F16, BF16, Q8_0, Q4_0, the K-quants, ...), the config, and the
tokenizer the file carries (its byte-level BPE tokens and merges, written out as vocab.json and
merges.txt), with its chat template if it has one.

GGUF stores each matrix [n_out, n_in] (nn.Linear's layout, ours) and the LM head as
output.weight, which must equal token_embd.weight: pygpt ties them, as GPT-2 does. A q8_0 or
q4_0 file's weights are expanded to float32 and --dtype quantizes them again. Its blocks are 32
weights with a scale each, and int8 and int4 at groups of 32 store the same weights: the config
this returns names the type of the file's layer matrices ("source_type": "q4_0" or "q8_0",
when they all have it), and the converter then defaults to groups of 32 for the matching
--dtype, where quantizing again gives back the file's weights exactly (a block quantized as
ggml's reference quantizer does holds its largest magnitude at -8 or +-127, which sets the
same scale again).
"""

from __future__ import annotations

import json
import os

import numpy as np

from .chat import CHAT_TEMPLATE_FILE
from .convert import ConversionError
from .tokenizer import HF_TOKENIZER_CONFIG

MAGIC = b"GGUF"

# GGUF tensor name (after "blk.N.") -> ours (after "h.N.")
_BLOCK = {
    "attn_norm": "ln_1", "attn_qkv": "attn.c_attn", "attn_output": "attn.c_proj",
    "ffn_norm": "ln_2", "ffn_up": "mlp.c_fc", "ffn_down": "mlp.c_proj",
}
_TOP = {"token_embd": "wte", "position_embd": "wpe", "output_norm": "ln_f", "output": "lm_head"}


def is_gguf(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == MAGIC


def _gguf():
    try:
        import gguf
    except ImportError:
        raise ImportError("converting a GGUF file needs the gguf package: pip install gguf") from None
    return gguf


def _field(reader, key, where, default=None):
    field = reader.fields.get(key)
    if field is None:
        if default is not None:
            return default
        raise ConversionError(f"{where}: no {key} (not a GPT-2 GGUF file llama.cpp wrote)")
    return field.contents()


def read(path: str, tokenizer_dir: str):
    """(state_dict of float32 arrays under our names, config) of a GGUF GPT-2; its tokenizer
    is written into tokenizer_dir (vocab.json, merges.txt, tokenizer_config.json if it has added
    tokens, and chat_template.jinja if the file has a chat template)."""
    gguf = _gguf()
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError, IndexError, KeyError) as e:
        raise ConversionError(f"{path}: not a readable GGUF file: {e}") from None
    arch = _field(reader, "general.architecture", path)
    if arch != "gpt2":
        raise ConversionError(f"{path}: a GGUF file of architecture {arch!r}: pygpt converts GPT-2 (\"gpt2\")")
    C = int(_field(reader, "gpt2.embedding_length", path))
    cfg = {
        "n_layer": int(_field(reader, "gpt2.block_count", path)),
        "n_head": int(_field(reader, "gpt2.attention.head_count", path)),
        "n_embd": C,
        "n_ctx": int(_field(reader, "gpt2.context_length", path)),
        # stored as float32: the shortest decimal that rounds to it (1e-05, not 9.999999747e-06)
        "layer_norm_epsilon": float(str(np.float32(_field(reader, "gpt2.attention.layer_norm_epsilon", path)))),
        "activation": "gelu_tanh",
    }
    ffn = int(_field(reader, "gpt2.feed_forward_length", path, default=4 * C))
    if ffn != 4 * C:
        raise ConversionError(f"{path}: feed_forward_length {ffn}, and GPT-2's MLP is 4 * n_embd = {4 * C} wide")
    sd, bits, types = {}, {}, set()
    for t in reader.tensors:
        name = _our_name(t.name)
        if name is None:
            raise ConversionError(f"{path}: tensor '{t.name}' is not one of a GPT-2's")
        try:
            a = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError as e:
            raise ConversionError(f"{path}: tensor '{t.name}' has type {t.tensor_type.name}, which the gguf "
                                  f"package cannot expand: {e}") from None
        shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists the fastest dimension first
        sd[name] = np.ascontiguousarray(np.asarray(a, dtype=np.float32).reshape(shape))
        block, size = gguf.GGML_QUANT_SIZES[t.tensor_type]
        bits[name] = 8 * size / block
        if name.startswith("h.") and name.endswith(".weight") and len(shape) == 2:
            types.add(t.tensor_type.name.lower())
    _tie(sd, bits)
    if len(types) == 1 and types <= {"q4_0", "q8_0"}:
        cfg["source_type"] = types.pop()
    cfg["vocab_size"] = sd["wte.weight"].shape[0] if "wte.weight" in sd else 0
    _write_tokenizer(reader, path, tokenizer_dir)
    template = reader.fields.get("tokenizer.chat_template")
    if template is not None:
        with open(os.path.join(tokenizer_dir, CHAT_TEMPLATE_FILE), "w", encoding="utf-8", newline="") as f:
            f.write(template.contents())
    return sd, cfg


def _tie(sd: dict, bits: dict) -> None:
    """llama.cpp's quantizer stores the LM head (output.weight) of a tied model at another type
    than the token embedding (q6_K beside q4_0, say): two roundings of one tensor. pygpt keeps
    one, the finer; two tensors of one type that differ are an untied model (kept as two)."""
    head, wte = "lm_head.weight", "wte.weight"
    if head in sd and wte in sd and bits[head] != bits[wte] and sd[head].shape == sd[wte].shape:
        if bits[head] > bits[wte]:
            sd[wte] = sd[head]
        del sd[head]


def _our_name(name: str):
    stem, _, kind = name.rpartition(".")
    if kind not in ("weight", "bias"):
        return None
    if stem in _TOP:
        return f"{_TOP[stem]}.{kind}"
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _BLOCK:
        return f"h.{int(parts[1])}.{_BLOCK[parts[2]]}.{kind}"
    return None


def _write_tokenizer(reader, path: str, folder: str) -> None:
    """vocab.json and merges.txt of the file's byte-level BPE (its tokens are GPT-2's
    byte-to-unicode strings, as vocab.json holds them), and a tokenizer_config.json listing its
    added tokens. llama.cpp's converter writes a Hugging Face tokenizer's added tokens as
    CONTROL (special) or USER_DEFINED tokens holding their text, and pads the list to the
    embedding's rows with UNUSED "[PAD<id>]" tokens: the pads are left out (the converter then
    drops their rows), the added tokens at the end of the list follow the vocabulary, and those
    inside it are listed as added tokens too."""
    if "tokenizer.ggml.tokens" not in reader.fields:
        return
    model = _field(reader, "tokenizer.ggml.model", path, default="gpt2")
    if model != "gpt2":
        raise ConversionError(f"{path}: tokenizer model {model!r}: pygpt reads GPT-2's byte-level BPE (\"gpt2\")")
    pre = _field(reader, "tokenizer.ggml.pre", path, default="gpt-2")  # files before llama.cpp wrote it: GPT-2's
    if pre != "gpt-2":
        raise ConversionError(f"{path}: tokenizer.ggml.pre {pre!r}: pygpt splits text as GPT-2 does (\"gpt-2\"), "
                              "not as this tokenizer's pre-tokenizer")
    TokenType = _gguf().TokenType
    tokens = _field(reader, "tokenizer.ggml.tokens", path)
    merges = _field(reader, "tokenizer.ggml.merges", path, default=[])
    types = _field(reader, "tokenizer.ggml.token_type", path, default=[TokenType.NORMAL] * len(tokens))
    if len(set(tokens)) != len(tokens):
        raise ConversionError(f"{path}: tokenizer.ggml.tokens lists a token twice")
    if len(types) != len(tokens):
        raise ConversionError(f"{path}: tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens")
    n = len(tokens)
    while n > 1 and types[n - 1] == TokenType.UNUSED:
        n -= 1
    added_types = (TokenType.CONTROL, TokenType.USER_DEFINED)
    k = n
    while k > 1 and types[k - 1] in added_types:
        k -= 1
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(tokens[:k])}, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write("#version: 0.2\n" + "".join(m + "\n" for m in merges))
    added = {str(i): {"content": tokens[i], "special": types[i] == TokenType.CONTROL}
             for i in range(n) if types[i] in added_types}
    if added:
        with open(os.path.join(folder, HF_TOKENIZER_CONFIG), "w", encoding="utf-8") as f:
            json.dump({"added_tokens_decoder": added}, f, ensure_ascii=False)
