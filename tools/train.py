#!/usr/bin/env python3
"""Train a GPT-2 from scratch, or fine-tune one, on text files (PyTorch, CPU-friendly).

A compact nanoGPT-style trainer. Checkpoints are nanoGPT checkpoints (`OUT/ckpt.pt`:
`model` state_dict with nanoGPT names + `model_args`), so `tools/convert.py` and
`--export DIR` turn them into a pygpt model folder.

From scratch (train a tokenizer first with tools/train_tokenizer.py):

    python tools/train.py corpus.txt --tokenizer my-tokenizer --out runs/mine \\
        --n-layer 4 --n-head 4 --n-embd 256 --block-size 256 --max-iters 2000 --export my-model

Fine-tune anything tools/convert.py accepts (a Hugging Face name such as gpt2 when online,
a local Hugging Face folder, a nanoGPT ckpt.pt, a pygpt model folder):

    python tools/train.py notes.txt --init-from gpt2 --out runs/ft --lr 3e-5 --max-iters 200

Resume an interrupted run with the same command plus --resume. Every --eval-interval
steps the validation loss is measured, OUT/ckpt.pt is written and OUT/loss.png redrawn.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import checkout  # noqa: E402
from train_tokenizer import EOT, load_hf_tokenizer  # noqa: E402

checkout.use_if_built()

# ----------------------------------------------------------------------------
# the model: GPT-2 with nanoGPT's module names, so state_dicts map across by name


@dataclass
class GPTConfig:
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    block_size: int = 256   # n_ctx: the longest sequence the model sees
    vocab_size: int = 4096
    bias: bool = True       # biases in linears and layer norms, like GPT-2
    dropout: float = 0.0
    activation: str = "gelu_erf"  # nanoGPT's nn.GELU(); "gelu_tanh" for OpenAI/HF GPT-2 weights


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0, "n_embd must be a multiple of n_head"
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # x -> q, k, v
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):  # [B, T, C] -> [B, T, C]
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)                      # 3 x [B, T, C]
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # [B, nh, T, hs]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)             # heads side by side again
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        if cfg.activation not in ("gelu_erf", "gelu_tanh"):
            raise ValueError(f"unknown activation {cfg.activation!r}")
        self.gelu = nn.GELU(approximate="tanh" if cfg.activation == "gelu_tanh" else "none")
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):  # [B, T, C] -> [B, T, C]
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x):  # pre-norm residual block
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
            wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
            ln_f=nn.LayerNorm(cfg.n_embd, bias=cfg.bias),
        ))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied, as in GPT-2
        self.apply(self._init_weights)
        # GPT-2 scales the init of the projections into the residual stream by 1/sqrt(2 n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def n_params(self):
        return sum(p.numel() for p in self.parameters())  # wte counted once (tied)

    def forward(self, idx, targets=None):  # idx [B, T] -> logits [B, T, V], mean loss
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence of {T} tokens is longer than block_size {self.config.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # [B, T, C]
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))               # [B, T, V]
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-100)
        return logits, loss


def model_args(cfg: GPTConfig) -> dict:
    return asdict(cfg)


# ----------------------------------------------------------------------------
# initialising from an existing model (fine-tuning)


def gpt_from_checkpoint(ckpt: dict) -> GPT:
    """A GPT from a nanoGPT checkpoint dict (`model` + `model_args`)."""
    a = ckpt["model_args"]
    cfg = GPTConfig(n_layer=a["n_layer"], n_head=a["n_head"], n_embd=a["n_embd"], block_size=a["block_size"],
                    vocab_size=a["vocab_size"], bias=bool(a.get("bias", True)), dropout=0.0,
                    activation=a.get("activation", "gelu_erf"))
    model = GPT(cfg)
    sd = {k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()}  # torch.compile's prefix
    sd.setdefault("lm_head.weight", sd["transformer.wte.weight"])
    model.load_state_dict(sd)
    return model


def gpt_from_pygpt_folder(folder) -> GPT:
    """A GPT holding the weights of a pygpt model folder (f32, f16 or bf16; docs/FORMAT.md).

    pygpt stores nanoGPT's tensors without the `transformer.` prefix, linears as [out, in]
    like nn.Linear, and the tied LM head once (as wte).
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg_json = json.loads((folder / "config.json").read_text())
    if cfg_json.get("format") != "pygpt":
        raise ValueError(f"{folder}: not a pygpt model folder")
    if cfg_json["dtype"] not in ("f32", "f16", "bf16"):
        raise ValueError(f"{folder}: cannot fine-tune a {cfg_json['dtype']} model; convert the source as f32")
    cfg = GPTConfig(n_layer=cfg_json["n_layer"], n_head=cfg_json["n_head"], n_embd=cfg_json["n_embd"],
                    block_size=cfg_json["n_ctx"], vocab_size=cfg_json["vocab_size"], bias=cfg_json["bias"],
                    activation=cfg_json["activation"])
    model = GPT(cfg)
    sd = {("transformer." + k): v.float() for k, v in load_file(str(folder / "model.safetensors")).items()}
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    model.load_state_dict(sd)
    return model


def load_init(source: str, dropout: float, tok_dest=None):
    """(model, tokenizer folder or None) for --init-from SOURCE.

    A pygpt folder is read directly; anything else goes through pygpt's converter first
    (a Hugging Face name or folder, a nanoGPT ckpt.pt, an llm.c .bin), so --init-from
    accepts exactly what tools/convert.py accepts. The converted source's tokenizer files
    are kept in tok_dest (default: a new temporary folder).
    """
    import tempfile

    from pygpt.convert import convert

    path = Path(source)
    if (path / "config.json").is_file() and json.loads((path / "config.json").read_text()).get("format") == "pygpt":
        model, tok = gpt_from_pygpt_folder(path), path
    else:
        with tempfile.TemporaryDirectory() as tmp:
            tok_hint = path.parent if path.is_file() and (path.parent / "vocab.json").is_file() else None
            convert(source, tmp, dtype="f32", tokenizer=tok_hint)
            model = gpt_from_pygpt_folder(tmp)
            tok = None
            if (Path(tmp) / "vocab.json").is_file():  # keep the tokenizer beyond the temporary folder
                tok = Path(tok_dest) if tok_dest else Path(tempfile.mkdtemp(prefix="pygpt-tok-"))
                tok.mkdir(parents=True, exist_ok=True)
                for name in ("vocab.json", "merges.txt"):
                    shutil.copyfile(Path(tmp) / name, tok / name)
    model.config.dropout = dropout
    for m in model.modules():  # dropout is not part of the weights: apply the one asked for
        if isinstance(m, nn.Dropout):
            m.p = dropout
        if isinstance(m, CausalSelfAttention):
            m.dropout = dropout
    return model, tok


# ----------------------------------------------------------------------------
# data


def encode_files(files, tok_dir, val_fraction):
    """Token ids of the files (each followed by <|endoftext|>), split into train and val.

    The last `val_fraction` of every file (cut at a line break) is validation text.
    """
    tok = load_hf_tokenizer(tok_dir)
    vocab = json.loads((Path(tok_dir) / "vocab.json").read_text(encoding="utf-8"))
    eot = vocab.get(EOT)
    train, val = [], []
    for f in files:
        text = Path(f).read_text(encoding="utf-8")
        cut = len(text)
        if val_fraction > 0:
            cut = int(len(text) * (1 - val_fraction))
            nl = text.rfind("\n", 0, cut)
            cut = nl + 1 if nl > 0 else cut
        for part, out in ((text[:cut], train), (text[cut:], val)):
            if part:
                out.extend(tok.encode(part).ids)
                if eot is not None:
                    out.append(eot)
    return torch.tensor(train, dtype=torch.long), torch.tensor(val, dtype=torch.long), len(vocab)


def get_batch(data, batch_size, block_size, gen):
    """batch_size random windows of block_size + 1 tokens: inputs and next-token targets."""
    if len(data) < 2:
        raise ValueError("not enough tokens to train on")
    T = min(block_size, len(data) - 1)
    ix = torch.randint(len(data) - T, (batch_size,), generator=gen)
    x = torch.stack([data[i:i + T] for i in ix])
    y = torch.stack([data[i + 1:i + 1 + T] for i in ix])
    return x, y


@torch.no_grad()
def estimate_loss(model, data, batch_size, block_size, iters, seed):
    """Mean loss over `iters` batches drawn with a fixed seed (the same batches every time)."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    losses = [model(*get_batch(data, batch_size, block_size, gen))[1].item() for _ in range(iters)]
    model.train()
    return sum(losses) / len(losses)


def lr_at(it, args):
    """Linear warmup, then cosine decay to min_lr."""
    if it < args.warmup_iters:
        return args.lr * (it + 1) / (args.warmup_iters + 1)
    decay_iters = args.lr_decay_iters or args.max_iters
    if decay_iters <= args.warmup_iters:
        return args.lr
    progress = min(1.0, (it - args.warmup_iters) / (decay_iters - args.warmup_iters))
    return args.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (args.lr - args.min_lr)


def make_optimizer(model, args):
    decay = [p for p in model.parameters() if p.dim() >= 2]      # matmul weights and embeddings
    no_decay = [p for p in model.parameters() if p.dim() < 2]    # biases and layer norm gains
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(args.beta1, args.beta2))


def plot_losses(history, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if history["train"]:
        ax.plot(*zip(*history["train"]), label="train (batch)", alpha=0.6)
    if history["val"]:
        ax.plot(*zip(*history["val"]), "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def export(ckpt_path, out_dir, dtype="f32"):
    """Writes a pygpt model folder from a checkpoint of ours, through pygpt's converter."""
    from pygpt.convert import convert

    ckpt_path = Path(ckpt_path)
    convert(str(ckpt_path), str(out_dir), dtype=dtype, tokenizer=str(ckpt_path.parent))
    # nanoGPT checkpoints carry no activation and the converter assumes nanoGPT's exact GELU;
    # a model fine-tuned from OpenAI/HF weights keeps their tanh GELU
    act = torch.load(ckpt_path, map_location="cpu", weights_only=True)["model_args"].get("activation", "gelu_erf")
    cfg_path = Path(out_dir) / "config.json"
    cfg = json.loads(cfg_path.read_text())
    if cfg["activation"] != act:
        cfg["activation"] = act
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")


# ----------------------------------------------------------------------------
# main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", nargs="+", help="UTF-8 text files to train on")
    p.add_argument("--out", default="runs/gpt", help="run folder: ckpt.pt, loss.png, tokenizer (default runs/gpt)")
    p.add_argument("--tokenizer", help="folder with vocab.json + merges.txt (default: the --init-from model's)")
    p.add_argument("--init-from", help="fine-tune this model: a HF name or folder, a ckpt.pt, a pygpt folder")
    p.add_argument("--resume", action="store_true", help="continue from OUT/ckpt.pt")
    p.add_argument("--val-fraction", type=float, default=0.05, help="tail of each file held out (default 0.05)")
    g = p.add_argument_group("model (from scratch)")
    g.add_argument("--n-layer", type=int, default=4)
    g.add_argument("--n-head", type=int, default=4)
    g.add_argument("--n-embd", type=int, default=256)
    g.add_argument("--block-size", type=int, default=256, help="context length n_ctx")
    g.add_argument("--no-bias", action="store_true", help="no biases in linears and layer norms")
    g = p.add_argument_group("training")
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--max-iters", type=int, default=1000)
    g.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (fine-tuning: try 3e-5)")
    g.add_argument("--min-lr", type=float, default=None, help="final learning rate (default lr/10)")
    g.add_argument("--warmup-iters", type=int, default=50)
    g.add_argument("--lr-decay-iters", type=int, default=None,
                   help="step at which the cosine decay reaches min-lr (default max-iters)")
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--beta1", type=float, default=0.9)
    g.add_argument("--beta2", type=float, default=0.99)
    g.add_argument("--grad-clip", type=float, default=1.0)
    g.add_argument("--dropout", type=float, default=0.0)
    g.add_argument("--eval-interval", type=int, default=100, help="steps between validation + checkpoint")
    g.add_argument("--eval-iters", type=int, default=20, help="batches per validation estimate")
    g.add_argument("--seed", type=int, default=1337)
    g.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    g = p.add_argument_group("export")
    g.add_argument("--export", metavar="DIR", help="after training, write a pygpt model folder here")
    g.add_argument("--export-dtype", default="f32", help="f32, f16, bf16, int8, int4 (default f32)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.min_lr is None:
        args.min_lr = args.lr / 10
    return args


def main(argv=None):
    args = parse_args(argv)
    from tqdm import tqdm

    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "ckpt.pt"

    # --- model, tokenizer and where we start
    history = {"train": [], "val": []}
    start_iter, best_val = 0, float("inf")
    resume_ckpt = None
    if args.resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
        resume_ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model = gpt_from_checkpoint(resume_ckpt)
        tok_dir = out
        start_iter, best_val = resume_ckpt["iter_num"], resume_ckpt["best_val_loss"]
        history = resume_ckpt.get("history", history)
    elif args.init_from:
        model, tok_dir = load_init(args.init_from, args.dropout, tok_dest=out)
        tok_dir = Path(args.tokenizer) if args.tokenizer else tok_dir
        if tok_dir is None:
            raise ValueError(f"--init-from {args.init_from}: no vocab.json/merges.txt found; pass --tokenizer DIR")
    else:
        if not args.tokenizer:
            raise ValueError("training from scratch needs --tokenizer DIR (see tools/train_tokenizer.py)")
        tok_dir = Path(args.tokenizer)
        model = None
    for name in ("vocab.json", "merges.txt"):
        if not (Path(tok_dir) / name).is_file():
            raise FileNotFoundError(f"tokenizer file missing: {Path(tok_dir) / name}")
    if Path(tok_dir).resolve() != out.resolve():  # the run folder is self-contained
        for name in ("vocab.json", "merges.txt"):
            shutil.copyfile(Path(tok_dir) / name, out / name)

    train_data, val_data, vocab_size = encode_files(args.data, out, args.val_fraction)
    if len(val_data) < 2:
        val_data = train_data
    if model is None:
        cfg = GPTConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                        block_size=args.block_size, vocab_size=vocab_size, bias=not args.no_bias,
                        dropout=args.dropout)
        model = GPT(cfg)
    if model.config.vocab_size < vocab_size:
        raise ValueError(f"tokenizer has {vocab_size} tokens but the model only {model.config.vocab_size}")
    cfg = model.config
    block_size = min(args.block_size, cfg.block_size)
    optimizer = make_optimizer(model, args)
    if resume_ckpt is not None:
        optimizer.load_state_dict(resume_ckpt["optimizer"])
    print(f"model: {cfg.n_layer} layers, {cfg.n_head} heads, {cfg.n_embd} wide, context {cfg.block_size}, "
          f"vocab {cfg.vocab_size}: {model.n_params() / 1e6:.2f}M parameters")
    print(f"data: {len(train_data):,} train tokens, {len(val_data):,} validation tokens")

    def save(it):
        ckpt = {"model": model.state_dict(), "model_args": model_args(cfg), "optimizer": optimizer.state_dict(),
                "iter_num": it, "best_val_loss": best_val, "history": history, "config": vars(args)}
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save(ckpt, tmp)
        os.replace(tmp, ckpt_path)  # never leave a half-written checkpoint
        plot_losses(history, out / "loss.png")

    def evaluate(it):
        nonlocal best_val
        val = estimate_loss(model, val_data, args.batch_size, block_size, args.eval_iters, args.seed + 1)
        history["val"].append((it, val))
        best_val = min(best_val, val)
        return val

    # --- the training loop
    model.train()
    tokens_per_step = args.batch_size * block_size
    bar = tqdm(range(start_iter, args.max_iters), initial=start_iter, total=args.max_iters,
               disable=args.quiet, dynamic_ncols=True)
    val = None
    t0 = time.perf_counter()
    for it in bar:
        if it % args.eval_interval == 0 and it > start_iter:
            val = evaluate(it)
            save(it)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(it, args)
        # batch `it` depends only on (seed, it): a resumed run sees the same batches
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + it)
        x, y = get_batch(train_data, args.batch_size, block_size, gen)
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        history["train"].append((it, loss.item()))
        t1 = time.perf_counter()
        tok_s = tokens_per_step / max(t1 - t0, 1e-9)
        t0 = t1
        post = {"loss": f"{loss.item():.3f}", "tok/s": f"{tok_s:.0f}"}
        if val is not None:
            post["val"] = f"{val:.3f}"
        bar.set_postfix(post)
    bar.close()

    end = max(args.max_iters, start_iter)
    if not history["val"] or history["val"][-1][0] != end:
        val = evaluate(end)
    train_loss = estimate_loss(model, train_data, args.batch_size, block_size, args.eval_iters, args.seed + 2)
    save(end)
    print(f"step {end}: train loss {train_loss:.4f}, val loss {val:.4f} "
          f"(best {best_val:.4f}); checkpoint {ckpt_path}, curve {out / 'loss.png'}")

    if args.export:
        export(ckpt_path, args.export, args.export_dtype)
        print(f"exported pygpt model folder {args.export} ({args.export_dtype})")
    return {"train_loss": train_loss, "val_loss": val, "ckpt": str(ckpt_path)}


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
