"""pygpt.load() and the Model class: a converted GPT-2 running in the C++ core."""

from __future__ import annotations

import functools
import json
import os
import re
import time
import warnings

import numpy as np

from . import _core, _format
from ._threads import check_threads, default_threads
from ._core import ModelFormatError

_SMAPS_HEADER = re.compile(r"^[0-9a-f]+-[0-9a-f]+$")

DEFAULT_MODEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default_model")
DEFAULT_PREFIX_CACHE = 1  # finished sequences whose KV caches generate keeps


class Model:
    """A GPT-2 model loaded from a pygpt model folder (see docs/FORMAT.md).

    The weights stay in the memory-mapped model.safetensors; every computation runs in
    C++ with the GIL released. Calls on one model from several Python threads are safe
    and are serialised, so they never oversubscribe the cores.
    """

    def __init__(self, path: str, n_threads: int | None = None, isa: str | None = None,
                 check_finite: bool = False, kv_cache: str = "auto", prefix_cache: int = DEFAULT_PREFIX_CACHE,
                 lora=None):
        t0 = time.perf_counter()
        path = os.fspath(path)
        self.path = path
        adapters = []
        if lora is not None:  # a bad argument fails before anything is read
            from .lora import adapter_list

            adapters = adapter_list(lora)
        self.config = _format.read_config(path)
        st_path = os.path.join(path, "model.safetensors")
        tensors = _format.read_safetensors_header(st_path)
        _format.check_tensors(tensors, self.config)
        if check_finite:  # opt-in: reads every weight once (pygpt/_checks.py)
            from ._checks import check_finite as _check_finite

            _check_finite(st_path, tensors)
        if n_threads is None:
            n_threads = default_threads()
        check_threads(n_threads)
        if kv_cache not in ("auto", "f32", "f16", "int8"):
            raise ValueError(f"kv_cache must be 'auto', 'f32', 'f16' or 'int8', not {kv_cache!r}")
        if kv_cache == "auto":
            kv_cache = auto_kv_cache(self.config["dtype"])
        terms = {}
        if adapters:  # every adapter read and checked before the weights are mapped
            from .lora import low_rank_terms

            terms = low_rank_terms(adapters, self.config, base=(st_path, tensors))
        self._core = _core.Model(st_path, self.config, tensors, n_threads, isa or "", kv_cache)
        for layer, (a, b) in terms.items():
            self._core.set_lora(layer, a, b)
        self._lora = tuple(adapters)
        self._prefix_cache = _core.PrefixCache(0)
        self.prefix_cache = prefix_cache
        self.tokenizer = self._load_tokenizer(path)
        self._generation_config = self._load_generation_config(path)  # checked as it is read
        self.load_seconds = time.perf_counter() - t0

    def _load_tokenizer(self, path):
        from .tokenizer import Tokenizer, find_tokenizer

        if find_tokenizer(path) is None:
            return None

        tok = Tokenizer.from_dir(path)
        if tok.vocab_size > self.config["vocab_size"]:
            raise ModelFormatError(f"{path}: tokenizer has {tok.vocab_size} tokens but the model only "
                                   f"{self.config['vocab_size']}")
        return tok

    def _load_generation_config(self, path) -> dict:
        """The options of the folder's generation_config.json ({} without one); a ModelFormatError
        where the file is malformed, a warning naming the keys pygpt cannot follow."""
        from . import generation_config

        file = os.path.join(path, generation_config.FILE)
        if not os.path.isfile(file):
            return {}
        try:
            with open(file, encoding="utf-8") as f:
                raw = json.load(f)
            eot = self.tokenizer.eot_id if self.tokenizer is not None else None
            options, ignored = generation_config.read(raw, file, eot, self.config["vocab_size"])
            self._check_options(options)
        except (UnicodeDecodeError, ValueError, TypeError) as e:
            raise ModelFormatError(f"{file}: {e}" if not str(e).startswith(file) else str(e)) from None
        if ignored:
            warnings.warn(f"{file}: pygpt ignores {', '.join(ignored)} (docs/GENERATION.md, \"The model's "
                          "defaults\")", UserWarning, stacklevel=4)
        return options

    def _check_options(self, options: dict) -> None:
        from .generation import _Request

        if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
            raise TypeError("generation_config must be a dict of generate options, e.g. {'temperature': 0.7}")
        if options:
            _Request.check(self, options)

    @property
    def generation_config(self) -> dict:
        """The options generate() takes when a call leaves them out: the folder's
        generation_config.json read as pygpt options (docs/GENERATION.md). Assign a dict to
        change them ({} for pygpt's own defaults); it is checked as generate's options are."""
        return self._generation_config

    @generation_config.setter
    def generation_config(self, options: dict) -> None:
        self._check_options(options)
        self._generation_config = dict(options)

    @property
    def prefix_cache(self) -> int:
        """How many finished sequences' KV caches generate keeps (0: none): a later prompt that
        starts with the tokens one of them ran (a few-shot preamble, a conversation's earlier
        turns) runs only the rest. Outputs do not change. Assign to change it."""
        return self._prefix_cache.capacity

    @prefix_cache.setter
    def prefix_cache(self, n: int) -> None:
        self._prefix_cache.capacity = check_prefix_cache(n)

    # -- facts ---------------------------------------------------------------------------
    @property
    def n_threads(self) -> int:
        return self._live().n_threads

    def huge_page_bytes(self) -> int | None:
        """Bytes of the weights file mapped with 2 MiB pages (Linux: FilePmdMapped of the
        mapping in /proc/self/smaps), or None where that cannot be read. Decode reads weights
        15-25% faster through them; a file the page cache already holds in small pieces (a
        copy made with cp, say) gets them once the kernel has dropped it (docs/DESIGN.md)."""
        self._live()
        st_path = os.path.realpath(os.path.join(self.path, "model.safetensors"))
        try:
            with open("/proc/self/smaps") as f:
                text = f.read()
        except OSError:
            return None
        total, found, mine = 0, False, False
        for line in text.split("\n"):
            fields = line.split(None, 5)
            if fields and _SMAPS_HEADER.match(fields[0]):  # a mapping: "start-end perms offset dev inode [path]"
                mine = len(fields) == 6 and fields[5] == st_path
            elif mine and line.startswith("FilePmdMapped:"):
                total += int(fields[1]) * 1024
                found = True
        return total if found else None

    @property
    def lora(self) -> tuple:
        """The LoRA adapters applied at load (pygpt.load's lora=), in order: a tuple of (folder,
        scale); () for none. Fixed for the model's life."""
        return self._lora

    @property
    def kv_cache(self) -> str:
        """How the KV cache stores keys and values: 'f32' or 'f16'."""
        return self._live().kv_cache

    @property
    def isa(self) -> str:
        return self._live().isa

    def _live(self):
        if self._core is None:
            raise ValueError("the model is closed")
        return self._core

    def __repr__(self) -> str:
        if self._core is None:
            return f"pygpt.Model({self.path!r}, closed)"
        c = self.config
        return (f"pygpt.Model({self.path!r}, n_layer={c['n_layer']}, n_embd={c['n_embd']}, "
                f"vocab_size={c['vocab_size']}, dtype={c['dtype']}, isa={self.isa}, n_threads={self.n_threads})")

    # -- computation ---------------------------------------------------------------------
    def _ids(self, ids) -> np.ndarray:
        if isinstance(ids, str):
            raise TypeError("logits() takes token ids; encode text with model.tokenizer.encode() first")
        arr = np.asarray(ids)
        if arr.ndim != 1:
            raise ValueError(f"token ids must be a 1-D sequence, got shape {arr.shape}")
        if arr.size == 0:
            raise ValueError("empty input: at least one token id is needed")
        if not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"token ids must be integers, got dtype {arr.dtype}")
        V = self.config["vocab_size"]
        bad = (arr < 0) | (arr >= V)
        if bad.any():
            raise ValueError(f"token id {int(arr[bad][0])} out of range [0, {V})")
        if arr.size > self.config["n_ctx"]:
            raise ValueError(f"{arr.size} tokens is more than n_ctx = {self.config['n_ctx']}")
        return arr.astype(np.int32)

    def logits(self, ids) -> np.ndarray:
        """Logits float32 [len(ids), vocab_size] for every position of the sequence."""
        return self._live().logits(self._ids(ids))

    def generate(self, prompt, **kwargs):
        """Generates a continuation; see pygpt.generation.generate for every option."""
        from . import generation

        return generation.generate(self, prompt, **kwargs)

    @functools.cached_property
    def chat_template(self):
        """The model's own chat template (chat_template.jinja in its folder), else the built-in
        "plain" one; see pygpt.chat."""
        from .chat import ChatTemplate

        return ChatTemplate.from_model(self.path)

    def apply_chat_template(self, messages, add_generation_prompt=None, template=None,
                            continue_final_message: bool = False) -> str:
        """A conversation (OpenAI's messages) as prompt text, under template: the model's own
        (None), a pygpt.ChatTemplate, or a built-in's name ("plain", "chatml") or a .jinja file.
        add_generation_prompt (default: True unless continue_final_message) ends it with the
        start of an assistant turn; continue_final_message ends it inside the last message, for
        the model to go on with it (ChatTemplate.render)."""
        from .chat import resolve

        return resolve(self, template).render(messages, add_generation_prompt, continue_final_message)

    def chat(self, messages, template=None, **kwargs):
        """The assistant's reply to a conversation: generate() (same options and output) on
        apply_chat_template's prompt, the template's stop strings added to stop, the text the
        reply as the template defines it; see pygpt.chat."""
        from . import chat

        return chat.chat(self, messages, template, **kwargs)

    def chat_stream(self, messages, template=None, **kwargs):
        """chat() with the reply streamed: an iterator of text pieces whose .output, once it is
        exhausted, is chat()'s output; see pygpt.chat."""
        from . import chat

        return chat.chat_stream(self, messages, template, **kwargs)

    async def achat(self, messages, template=None, **kwargs):
        """chat() for asyncio (await it): tokens are computed in a worker thread."""
        from . import chat

        return await chat.achat(self, messages, template, **kwargs)

    def achat_stream(self, messages, template=None, **kwargs):
        """chat_stream() for asyncio: `async for piece in model.achat_stream(...)`."""
        from . import chat

        return chat.achat_stream(self, messages, template, **kwargs)

    def stream(self, prompt, **kwargs):
        """Yields the generated text piece by piece (valid UTF-8 only)."""
        from . import generation

        return generation.stream(self, prompt, **kwargs)

    async def agenerate(self, prompt, **kwargs):
        """generate() for asyncio (await it): tokens are computed in a worker thread."""
        from . import generation

        return await generation.agenerate(self, prompt, **kwargs)

    def astream(self, prompt, **kwargs):
        """stream() for asyncio: `async for piece in model.astream(...)`."""
        from . import generation

        return generation.astream(self, prompt, **kwargs)

    def embed(self, inputs, pooling: str = "mean", normalize: bool = True, truncate: bool = False):
        """Embeddings of a text (or token ids), [n_embd] float32, or of a list of them, [n,
        n_embd]: the final hidden states pooled (mean by default; "last", or "none" for every
        token's), unit length unless normalize=False; see pygpt.embeddings."""
        from . import embeddings

        return embeddings.embed(self, inputs, pooling=pooling, normalize=normalize, truncate=truncate)

    def perplexity(self, text, stride: int | None = None, progress: bool | None = None) -> float:
        """Perplexity of a text (or token ids), scored in strided windows of n_ctx tokens the
        way the Hugging Face perplexity guide does; see pygpt.perplexity."""
        from . import perplexity

        return perplexity.perplexity(self, text, stride=stride, progress=progress)

    def close(self) -> None:
        """Unmaps the weights and frees the kept KV caches. The model cannot be used afterwards."""
        self._core = None
        self._prefix_cache.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def check_prefix_cache(n) -> int:
    """n, checked as a prefix cache's size (a model's or a Batcher's): finished sequences whose
    KV caches are kept, 0 for none."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"prefix_cache must be an integer >= 0 (0: off), got {n!r}")
    return n


def auto_kv_cache(weights_dtype: str) -> str:
    """The KV cache `kv_cache="auto"` picks for weights of this dtype: f32 for f32 weights
    (logits as transformers computes them); f16 for bf16 and f16 weights, as transformers
    keeps a half-precision model's cache in its dtype; int8 for int8 and int4 weights, whose
    own error is hundreds of times what an int8 cache adds (docs/GENERATION.md, "KV cache")."""
    return {"f32": "f32", "bf16": "f16", "f16": "f16"}.get(weights_dtype, "int8")


def load(path: str | os.PathLike | None = None, n_threads: int | None = None, check_finite: bool = False,
         kv_cache: str = "auto", prefix_cache: int = DEFAULT_PREFIX_CACHE, lora=None) -> Model:
    """Loads a pygpt model folder; with no path, the small model shipped in the package.

    check_finite=True also reads every weight and raises ModelFormatError naming the first
    tensor that holds NaN or Inf (costs one full read of the file).
    kv_cache="f16" stores the keys and values of every sequence as half floats: half the
    memory per sequence and half the bytes attention reads per token (batches and long
    sequences decode faster), at a small cost in precision; "int8" as 8-bit integers with a
    scale per position and head (a little over a quarter of the f32 bytes; llama.cpp's q8_0
    cache type, at a larger cost in precision); "f32" keeps them as computed; "auto" (the
    default) is f32 for f32 weights, f16 for bf16 and f16, int8 for int8 and int4 (auto_kv_cache,
    docs/GENERATION.md).
    prefix_cache=n keeps the KV caches of the last n sequences generate finished (1 by default;
    0: none), so that a prompt that starts with the tokens one of them ran (a few-shot preamble,
    a conversation so far) runs only the rest, as llama.cpp reuses its context; outputs are the
    same bits either way. Each kept cache holds the positions it ran (about 74 KB a token for
    gpt2 with the f32 cache).
    lora applies PEFT LoRA adapters unmerged, at any weight dtype (llama.cpp's --lora and
    --lora-scaled): an adapter folder, or a list of folders and (folder, scale) pairs. Each adapted
    linear layer adds (x A^T) B^T in float32 to its product, the weights left as stored;
    model.lora says what was applied. What only a merge can do (a LoRA on the embedding or LM
    head, tensors saved whole, LoRA biases) is a pygpt.lora.AdapterError (a ValueError) that says
    to merge the adapter at conversion instead (docs/GENERATION.md, "LoRA adapters at load time")."""
    if path is None:
        if not os.path.isfile(os.path.join(DEFAULT_MODEL_DIR, "config.json")):
            raise FileNotFoundError("this pygpt install ships no default model; pass a model folder")
        path = DEFAULT_MODEL_DIR
    return Model(path, n_threads=n_threads, check_finite=check_finite, kv_cache=kv_cache, prefix_cache=prefix_cache,
                 lora=lora)
