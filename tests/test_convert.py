"""The converter's other sources: nanoGPT (bias=False, padded vocab), llm.c, a plain
state_dict; and sources that are not GPT-2."""

import json
import math
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import pygpt  # noqa: E402
import pygpt.convert  # noqa: E402
from conftest import GPT2_TOKENIZER, write_bin_folder  # noqa: E402


# -- a small nanoGPT-compatible module (same parameter names and math as nanoGPT's model.py)
class LayerNorm(nn.Module):
    def __init__(self, n, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.bias = nn.Parameter(torch.zeros(n)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class Block(nn.Module):
    def __init__(self, C, nh, bias):
        super().__init__()
        self.nh = nh
        self.ln_1, self.ln_2 = LayerNorm(C, bias), LayerNorm(C, bias)
        self.attn = nn.Module()
        self.attn.c_attn = nn.Linear(C, 3 * C, bias=bias)
        self.attn.c_proj = nn.Linear(C, C, bias=bias)
        self.mlp = nn.Module()
        self.mlp.c_fc = nn.Linear(C, 4 * C, bias=bias)
        self.mlp.c_proj = nn.Linear(4 * C, C, bias=bias)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.attn.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.nh, C // self.nh).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.attn.c_proj(y)
        return x + self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x))))  # nn.GELU(): exact erf


class NanoGPT(nn.Module):
    def __init__(self, n_layer, n_head, n_embd, block_size, vocab_size, bias):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab_size, n_embd), wpe=nn.Embedding(block_size, n_embd),
            h=nn.ModuleList([Block(n_embd, n_head, bias) for _ in range(n_layer)]), ln_f=LayerNorm(n_embd, bias)))
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied
        for p in self.parameters():
            nn.init.normal_(p, 0.0, 0.2 if p.dim() > 1 else 0.1)

    def forward(self, idx):
        x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(idx.shape[1]))
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))


def save_nanogpt(path, bias, vocab_size=50304, compiled=False):
    torch.manual_seed(1)
    args = dict(n_layer=2, n_head=3, n_embd=48, block_size=40, vocab_size=vocab_size, bias=bias, dropout=0.0)
    model = NanoGPT(**{k: v for k, v in args.items() if k != "dropout"}).eval()
    sd = model.state_dict()
    if compiled:
        sd = {"_orig_mod." + k: v for k, v in sd.items()}
    torch.save({"model": sd, "model_args": args, "iter_num": 0}, path)
    return model


@pytest.mark.parametrize("bias", [False, True])
def test_nanogpt_checkpoint_matches_its_pytorch_forward(tmp_path, bias):
    ckpt = str(tmp_path / "ckpt.pt")
    model = save_nanogpt(ckpt, bias=bias, compiled=True)
    out = pygpt.convert.convert(ckpt, str(tmp_path / "out"), tokenizer=GPT2_TOKENIZER)
    m = pygpt.load(out)
    assert m.config["bias"] is bias and m.config["activation"] == "gelu_erf"
    assert m.config["vocab_size"] == 50257  # padded 50304 trimmed to the tokenizer's size
    ids = np.random.default_rng(0).integers(0, 50257, 40)
    with torch.no_grad():
        ref = model(torch.tensor(ids)[None])[0, :, :50257].numpy()
    assert np.abs(m.logits(ids) - ref).max() <= 1e-4


def write_llmc(path, model, version):
    """Writes a transformers GPT-2 in llm.c's checkpoint layout (padded vocab, Linear [out, in])."""
    cfg = model.config
    C, L, V, Vp, T = cfg.n_embd, cfg.n_layer, cfg.vocab_size, 50304, cfg.n_positions
    sd = {k.removeprefix("transformer."): v.detach().float() for k, v in model.state_dict().items()}
    header = np.zeros(256, np.int32)
    header[:8] = [20240326, version, T, V, L, cfg.n_head, C, Vp]
    wte = torch.zeros(Vp, C)
    wte[:V] = sd["wte.weight"]

    def stack(name, transpose=False):
        return torch.stack([sd[f"h.{i}.{name}"].T if transpose else sd[f"h.{i}.{name}"] for i in range(L)])

    parts = [wte, sd["wpe.weight"], stack("ln_1.weight"), stack("ln_1.bias"),
             stack("attn.c_attn.weight", True), stack("attn.c_attn.bias"),
             stack("attn.c_proj.weight", True), stack("attn.c_proj.bias"), stack("ln_2.weight"), stack("ln_2.bias"),
             stack("mlp.c_fc.weight", True), stack("mlp.c_fc.bias"), stack("mlp.c_proj.weight", True),
             stack("mlp.c_proj.bias"), sd["ln_f.weight"], sd["ln_f.bias"]]
    flat = torch.cat([p.reshape(-1) for p in parts]).numpy()
    if version == 5:
        flat = torch.from_numpy(flat).to(torch.bfloat16).view(torch.int16).numpy()
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(flat.tobytes())


@pytest.mark.parametrize("version", [3, 5])
def test_llmc_checkpoint(tmp_path, hf_model_factory, version):
    model, hf_dir, ref_out = hf_model_factory("tiny")
    path = str(tmp_path / "gpt2_tiny.bin")
    write_llmc(path, model, version)
    out = pygpt.convert.convert(path, str(tmp_path / "out"), tokenizer=GPT2_TOKENIZER)
    m = pygpt.load(out)
    assert m.config["vocab_size"] == 50257 and m.config["activation"] == "gelu_tanh"
    ids = np.arange(0, 50000, 997)[:40]
    tol = 1e-4 if version == 3 else 0.5  # bf16 weights are a lossy copy
    assert np.abs(m.logits(ids) - pygpt.load(ref_out).logits(ids)).max() <= tol


def test_plain_state_dict_with_config(tmp_path, hf_model_factory):
    model, hf_dir, ref_out = hf_model_factory("tiny")
    sd_path = str(tmp_path / "weights.pt")
    torch.save(model.state_dict(), sd_path)
    out = pygpt.convert.convert(sd_path, str(tmp_path / "out"), config=os.path.join(hf_dir, "config.json"))
    ids = [1, 2, 3, 4]
    assert np.array_equal(pygpt.load(out).logits(ids), pygpt.load(ref_out).logits(ids))


def test_pytorch_model_bin_folder(tmp_path, hf_model_factory):
    model, hf_dir, ref_out = hf_model_factory("tiny")
    folder = write_bin_folder(model, hf_dir, tmp_path / "binfolder")
    out = pygpt.convert.convert(folder, str(tmp_path / "out"))
    assert np.array_equal(pygpt.load(out).logits([5, 6]), pygpt.load(ref_out).logits([5, 6]))


@pytest.mark.parametrize("dtype,tol", [("f16", 0.05), ("bf16", 0.3)])
def test_half_precision_conversions_stay_close(tmp_path, hf_model_factory, dtype, tol):
    _, hf_dir, ref_out = hf_model_factory("tiny")
    out = pygpt.convert.convert(hf_dir, str(tmp_path / dtype), dtype=dtype)
    m = pygpt.load(out)
    assert m.config["dtype"] == dtype
    ids = list(range(100, 140))
    assert np.abs(m.logits(ids) - pygpt.load(ref_out).logits(ids)).max() <= tol


def test_converted_file_leaves_the_page_cache(tmp_path, hf_model_factory, monkeypatch):
    """convert.py drops the weights it wrote from the page cache, so the first load reads them
    back into 2 MiB folios; the loaded model says how much of its file is in 2 MiB pages."""
    _, hf_dir, _ = hf_model_factory("tiny")
    calls = []
    real = os.posix_fadvise
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, off, n, advice: (calls.append(advice), real(fd, off, n, advice)))
    out = str(tmp_path / "m")
    pygpt.convert.convert(hf_dir, out)
    assert os.POSIX_FADV_DONTNEED in calls
    m = pygpt.load(out)
    n = m.huge_page_bytes()
    assert n is None or 0 <= n <= os.path.getsize(os.path.join(out, "model.safetensors"))


def test_not_a_gpt2_source_is_a_clear_error(tmp_path):
    p = tmp_path / "notgpt.pt"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, p)
    with pytest.raises(ValueError, match="config"):
        pygpt.convert.convert(str(p), str(tmp_path / "o"))
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model_type": "bert", "n_layer": 1}))
    with pytest.raises(ValueError, match="not GPT-2"):
        pygpt.convert.convert(str(p), str(tmp_path / "o"), config=str(cfg))
    cfg.write_text(json.dumps({"n_layer": 1, "n_head": 1, "n_embd": 3, "n_positions": 4, "vocab_size": 3}))
    with pytest.raises(ValueError, match="wte"):
        pygpt.convert.convert(str(p), str(tmp_path / "o"), config=str(cfg))
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError):
        pygpt.convert.convert(str(junk), str(tmp_path / "o"))
    with pytest.raises(FileNotFoundError):
        pygpt.convert.convert(str(tmp_path / "missing.pt"), str(tmp_path / "o"))


def test_cli_converts(tmp_path, hf_model_factory):
    import subprocess
    import sys

    _, hf_dir, _ = hf_model_factory("tiny")
    tool = os.path.join(os.path.dirname(__file__), "..", "tools", "convert.py")
    r = subprocess.run([sys.executable, tool, hf_dir, str(tmp_path / "o"), "--dtype", "f16"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.load(open(tmp_path / "o" / "config.json"))["dtype"] == "f16"
    r = subprocess.run([sys.executable, tool, str(tmp_path / "nope"), str(tmp_path / "o2")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.startswith("error:") and "Traceback" not in r.stderr


@pytest.mark.parametrize("dtype", ["int8", "int4"])
@pytest.mark.parametrize("name", ["tiny", "odd"])
def test_quantized_conversion_default_group(tmp_path, hf_model_factory, dtype, name):
    """The default group fits any width: one scale per row where 64 does not divide n_embd."""
    _, hf_dir, ref_out = hf_model_factory(name)
    m = pygpt.load(pygpt.convert.convert(hf_dir, str(tmp_path / dtype), dtype=dtype))
    assert m.config["dtype"] == dtype and m.config["quant_group_size"] == 0
    ids = list(range(30))
    ref = pygpt.load(ref_out).logits(ids)
    assert np.abs(m.logits(ids) - ref).max() <= 0.25 * np.abs(ref).max()


def test_quantized_group_that_does_not_fit_is_a_clear_error(tmp_path, hf_model_factory):
    _, hf_dir, _ = hf_model_factory("tiny")
    with pytest.raises(ValueError, match="group size 48"):
        pygpt.convert.convert(hf_dir, str(tmp_path / "q"), dtype="int8", group_size=48)
    _, odd_dir, _ = hf_model_factory("odd")  # 36 and 144 inputs: groups of 32 need whole blocks of 64
    with pytest.raises(ValueError, match="group size 32 does not fit 36 inputs"):
        pygpt.convert.convert(odd_dir, str(tmp_path / "q32"), dtype="int4", group_size=32)


def test_nanogpt_activation_recorded_in_model_args(tmp_path):
    ckpt = str(tmp_path / "ckpt.pt")
    save_nanogpt(ckpt, bias=True)
    obj = torch.load(ckpt, weights_only=True)
    obj["model_args"]["activation"] = "gelu_tanh"
    torch.save(obj, ckpt)
    out = pygpt.convert.convert(ckpt, str(tmp_path / "out"), tokenizer=GPT2_TOKENIZER)
    assert pygpt.load(out).config["activation"] == "gelu_tanh"


# -- without torch ------------------------------------------------------------------------------


def test_bf16_rounding_is_torchs():
    rng = np.random.default_rng(0)
    x = np.concatenate([
        rng.standard_normal(100_000).astype(np.float32) * 10.0 ** rng.integers(-40, 38, 100_000),
        np.array([0.0, -0.0, np.inf, -np.inf, np.finfo(np.float32).max, -np.finfo(np.float32).max,
                  np.finfo(np.float32).tiny, 1e-45, -1e-45], dtype=np.float32),
        # exact ties between two bfloat16 values, both parities, and the values around them
        (np.arange(0x3F800000, 0x3F800000 + 64, dtype=np.uint32) * 0 + np.uint32(0x3F808000)).view(np.float32),
        np.array([0x3F818000, 0x3F817FFF, 0x3F818001, 0xBF808000, 0x7F7F8000], dtype=np.uint32).view(np.float32),
    ]).astype(np.float32)
    want = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(pygpt.convert.to_bf16_bits(x), want)
    nan = pygpt.convert.to_bf16_bits(np.array([np.nan, -np.nan], dtype=np.float32))
    assert np.isnan((nan.astype(np.uint32) << 16).view(np.float32)).all()


BLOCK_TORCH = "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"


def convert_without_torch(source, out, **kw):
    """pygpt.convert.convert in a Python where importing torch or transformers fails."""
    import subprocess
    import sys

    code = BLOCK_TORCH + f"import pygpt.convert; pygpt.convert.convert({source!r}, {out!r}, **{kw!r})"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16", "int8", "int4"])
def test_safetensors_folders_convert_without_torch(tmp_path, hf_model_factory, dtype):
    hf_model, hf_dir, _ = hf_model_factory("tiny")
    ref = pygpt.convert.convert(hf_dir, str(tmp_path / "with"), dtype=dtype)
    r = convert_without_torch(hf_dir, str(tmp_path / "without"), dtype=dtype)
    assert r.returncode == 0, r.stderr
    ids = [464, 2068, 7586, 21831, 18045]
    a, b = pygpt.load(ref).logits(ids), pygpt.load(str(tmp_path / "without")).logits(ids)
    np.testing.assert_array_equal(a, b)
    if dtype == "f32":  # and the same model as transformers'
        with torch.no_grad():
            want = hf_model(torch.tensor([ids])).logits[0].numpy()
        np.testing.assert_allclose(b, want, atol=1e-4)


def test_a_bf16_checkpoint_converts_without_torch(tmp_path, hf_model_factory):
    """Hugging Face checkpoints saved in bfloat16 (which numpy lacks) are widened exactly."""
    from transformers import GPT2LMHeadModel

    _, hf_dir, _ = hf_model_factory("tiny")
    bf16_dir = str(tmp_path / "hf-bf16")
    GPT2LMHeadModel.from_pretrained(hf_dir).to(torch.bfloat16).save_pretrained(bf16_dir)
    r = convert_without_torch(bf16_dir, str(tmp_path / "out"), dtype="bf16")
    assert r.returncode == 0, r.stderr
    m = pygpt.load(str(tmp_path / "out"))
    got = m.logits([1, 2, 3])
    ref = pygpt.load(pygpt.convert.convert(bf16_dir, str(tmp_path / "ref"), dtype="bf16")).logits([1, 2, 3])
    np.testing.assert_array_equal(got, ref)
    sd = pygpt.convert._read_safetensors(os.path.join(bf16_dir, "model.safetensors"))
    from safetensors.torch import load_file

    for name, t in load_file(os.path.join(bf16_dir, "model.safetensors")).items():
        np.testing.assert_array_equal(sd[name], t.float().numpy())


def test_a_pickle_without_torch_says_what_to_install(tmp_path, hf_model_factory):
    model, hf_dir, _ = hf_model_factory("tiny")
    r = convert_without_torch(write_bin_folder(model, hf_dir, tmp_path / "bin"), str(tmp_path / "out"))
    assert r.returncode != 0 and "pip install 'pygpt[convert]'" in r.stderr


def test_a_broken_safetensors_file_is_a_conversion_error(tmp_path):
    p = tmp_path / "w.safetensors"
    header = json.dumps({"wte.weight": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}).encode()
    p.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 10)  # 10 of 64 bytes
    with pytest.raises(pygpt.convert.ConversionError, match="cannot read safetensors"):
        pygpt.convert._read_safetensors(str(p))
    p.write_bytes(b"\xff" * 16)
    with pytest.raises(pygpt.convert.ConversionError, match="cannot read safetensors"):
        pygpt.convert._read_safetensors(str(p))


# -- Hugging Face GPT2Config options that change the math ------------------------------------------


@pytest.mark.parametrize("options", [
    dict(scale_attn_by_inverse_layer_idx=True),  # Stanford CRFM's GPT-2s (Mistral): scores / layer number
    dict(scale_attn_weights=False),
    dict(scale_attn_weights=False, scale_attn_by_inverse_layer_idx=True, reorder_and_upcast_attn=True),
])
def test_attention_scaling_options_are_followed(tmp_path, options):
    """GPT2Config's attention scaling: scores q.k times 1/sqrt(head_dim) unless
    scale_attn_weights is false, then divided by the layer's number where
    scale_attn_by_inverse_layer_idx; reorder_and_upcast_attn changes nothing in float32.
    Sharp attention (large query and key weights) makes the scale matter."""
    from conftest import make_hf_model

    hf = make_hf_model(tmp_path / "hf", seed=5, n_layer=4, n_head=2, n_embd=64, n_positions=64, **options)
    with torch.no_grad():
        for block in hf.transformer.h:
            block.attn.c_attn.weight.mul_(6)
    hf.save_pretrained(tmp_path / "hf")
    pygpt.convert.convert(str(tmp_path / "hf"), str(tmp_path / "out"))
    with open(tmp_path / "out" / "config.json") as f:
        written = json.load(f)
    assert {k: v for k, v in written.items() if k.startswith("scale_attn")} == {
        k: v for k, v in options.items() if k.startswith("scale_attn")}  # GPT-2's values are not written
    model = pygpt.load(tmp_path / "out")
    ids = [(i * 7919 + 11) % 50256 for i in range(48)]
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(model.logits(ids) - ref).max() <= 2e-5 * np.abs(ref).max()
    # one step at a time (the KV cache's attention path) as the prompt's
    out = model.generate(ids[:8], max_new_tokens=12, temperature=0, ignore_eos=True)
    want = hf.generate(torch.tensor([ids[:8]]), attention_mask=torch.ones(1, 8, dtype=torch.long), max_new_tokens=12,
                       min_new_tokens=12, do_sample=False, pad_token_id=50256)[0, 8:].tolist()
    assert out.tokens == want


@pytest.mark.parametrize("options,match", [
    (dict(n_inner=100), "n_inner 100"),
    (dict(add_cross_attention=True), "cross-attention"),
])
def test_config_options_pygpt_cannot_follow_are_refused(tmp_path, options, match):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"n_layer": 1, "n_head": 1, "n_embd": 8, "n_positions": 4, "vocab_size": 300,
                               **options}))
    torch.save({}, tmp_path / "w.pt")
    with pytest.raises(pygpt.convert.ConversionError, match=match):
        pygpt.convert.convert(str(tmp_path / "w.pt"), str(tmp_path / "o"), config=str(cfg))


def test_attention_scaling_in_config_is_checked(tmp_path, hf_model_factory):
    _, _, out_dir = hf_model_factory("tiny")
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(out_dir, folder)
    with open(folder / "config.json") as f:
        cfg = json.load(f)
    for bad in ("yes", 1, None):
        with open(folder / "config.json", "w") as f:
            json.dump({**cfg, "scale_attn_by_inverse_layer_idx": bad}, f)
        with pytest.raises(pygpt.ModelFormatError, match="scale_attn_by_inverse_layer_idx"):
            pygpt.load(folder)


# -- checkpoints save_pretrained split in shards ------------------------------------------------


def same_weights(a_dir, b_dir):
    from safetensors.numpy import load_file

    a, b = (load_file(os.path.join(d, "model.safetensors")) for d in (a_dir, b_dir))
    return sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_sharded_checkpoints_convert(tmp_path, hf_model_factory):
    """save_pretrained splits a checkpoint larger than max_shard_size (5 GB in transformers 4:
    gpt2-xl) into files an index.json names; as pickles too (pytorch_model.bin.index.json)."""
    model, hf_dir, out_dir = hf_model_factory("tiny")
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="600KB")
    shards = [f for f in os.listdir(sharded) if f.endswith(".safetensors")]
    assert len(shards) >= 2 and "model.safetensors.index.json" in os.listdir(sharded)
    pygpt.convert.convert(str(sharded), str(tmp_path / "out"), tokenizer=GPT2_TOKENIZER)
    assert same_weights(tmp_path / "out", out_dir)

    pickled = tmp_path / "pickled"
    write_bin_folder(model, hf_dir, pickled)
    sd = torch.load(pickled / "pytorch_model.bin")
    os.remove(pickled / "pytorch_model.bin")
    names = sorted(sd)
    weight_map = {}
    for k, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
        torch.save({n: sd[n] for n in part}, pickled / f"pytorch_model-0000{k + 1}-of-00002.bin")
        weight_map.update({n: f"pytorch_model-0000{k + 1}-of-00002.bin" for n in part})
    index = pickled / "pytorch_model.bin.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    pygpt.convert.convert(str(pickled), str(tmp_path / "out2"), tokenizer=GPT2_TOKENIZER)
    assert same_weights(tmp_path / "out2", out_dir)

    # a broken index or a missing shard: a ConversionError that names it
    for text, match in [("{", "not a shard index"), (json.dumps({"weight_map": {"a": "../x.bin"}}), "beside"),
                        (json.dumps({"weight_map": {"a": "gone.bin"}}), "gone.bin is missing"),
                        (json.dumps({"weight_map": {**weight_map, "extra": weight_map[names[0]]}}), "in no shard")]:
        index.write_text(text)
        with pytest.raises(pygpt.convert.ConversionError, match=match):
            pygpt.convert.convert(str(pickled), str(tmp_path / "bad"))
