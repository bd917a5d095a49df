"""A pure-NumPy GPT-2: the independent oracle for the C++ forward pass.

Reads a pygpt model folder (f32) with safetensors' numpy loader and recomputes the
logits with no cache, float64 throughout. Shapes: T tokens, C channels, V vocabulary.
"""

import json
import math
import os

import numpy as np
from safetensors.numpy import load_file


def layer_norm(x, w, b, eps):  # [T, C] -> [T, C]
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    y = (x - mean) / np.sqrt(var + eps) * w
    return y + b if b is not None else y


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def gelu_erf(x):
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


def linear(x, w, b):  # [T, in], [out, in], [out] -> [T, out]
    y = x @ w.T
    return y + b if b is not None else y


def attention(q, k, v):  # [T, hs] x3 -> [T, hs]
    T = q.shape[0]
    scores = q @ k.T / math.sqrt(q.shape[-1])  # [T, T]
    scores = scores + np.triu(np.full((T, T), -np.inf), 1)  # causal mask: no looking ahead
    p = np.exp(scores - scores.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


def quantize_kv_rows(x):
    """NumPy model of Kernels::quantize_kv, row by row: (int8 q, float32 scales), q =
    round(x * 127 / max|x|) in float32 arithmetic (ties to even), scale max|x| / 127."""
    x = np.asarray(x, np.float32)
    m = np.abs(x).max(-1)
    inv = np.where(m > 0, np.float32(127) / np.where(m > 0, m, 1), 0).astype(np.float32)
    q = np.rint(x * inv[:, None]).astype(np.int8)
    return q, (m / np.float32(127)).astype(np.float32)


def int8_rows(a, nh):
    """Keys or values [T, C] as an int8 KV cache holds them: each head's row quantized
    (quantize_kv_rows) and scaled back."""
    t, c = a.shape
    q, scale = quantize_kv_rows(a.reshape(t * nh, c // nh))
    return (q.astype(np.float64) * scale[:, None]).reshape(t, c)


def gpt2_logits(model_dir, ids, kv_cache="f32"):  # [T] -> [T, V]
    """kv_cache="f16": keys and values rounded to half floats, as pygpt's f16 KV cache stores
    them; "int8": quantized as its int8 cache stores them (int8_rows)."""
    x, w = _hidden_and_weights(model_dir, ids, kv_cache)
    return x @ w.get("lm_head.weight", w["wte.weight"]).T  # the LM head: wte where tied


def gpt2_hidden(model_dir, ids):  # [T] -> [T, C]
    """The final hidden states: ln_f of the residual stream (GPT2Model's last_hidden_state)."""
    return _hidden_and_weights(model_dir, ids, "f32")[0]


def _hidden_and_weights(model_dir, ids, kv_cache):
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["dtype"] == "f32", "the reference reads f32 folders"
    w = {k: v.astype(np.float64) for k, v in load_file(os.path.join(model_dir, "model.safetensors")).items()}
    g = w.get  # biases are absent when the model has none
    eps, nh = cfg["layer_norm_epsilon"], cfg["n_head"]
    act = gelu_tanh if cfg["activation"] == "gelu_tanh" else gelu_erf
    ids = np.asarray(ids)
    x = w["wte.weight"][ids] + w["wpe.weight"][: len(ids)]  # [T, C]
    for i in range(cfg["n_layer"]):
        p = f"h.{i}."
        h = layer_norm(x, w[p + "ln_1.weight"], g(p + "ln_1.bias"), eps)
        q, k, v = np.split(linear(h, w[p + "attn.c_attn.weight"], g(p + "attn.c_attn.bias")), 3, axis=-1)
        if kv_cache == "f16":
            k, v = (a.astype(np.float16).astype(np.float64) for a in (k, v))
        if kv_cache == "int8":
            k, v = int8_rows(k, nh), int8_rows(v, nh)
        heads = [attention(qh, kh, vh) for qh, kh, vh in
                 zip(np.split(q, nh, -1), np.split(k, nh, -1), np.split(v, nh, -1))]
        x = x + linear(np.concatenate(heads, -1), w[p + "attn.c_proj.weight"], g(p + "attn.c_proj.bias"))
        h = layer_norm(x, w[p + "ln_2.weight"], g(p + "ln_2.bias"), eps)
        h = act(linear(h, w[p + "mlp.c_fc.weight"], g(p + "mlp.c_fc.bias")))
        x = x + linear(h, w[p + "mlp.c_proj.weight"], g(p + "mlp.c_proj.bias"))
    return layer_norm(x, w["ln_f.weight"], g("ln_f.bias"), eps), w
