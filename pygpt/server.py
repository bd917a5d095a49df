"""`pygpt serve`: OpenAI-compatible completions and chat endpoints over one model, on the standard
library's threading HTTP server. Each request has its own thread; their generations run
together in one pygpt.Batcher (continuous batching: one forward call a step for every running
sequence, a request joining between two steps), at most --max-batch sequences at once, long
prompts run --prefill-chunk tokens a step, and a prompt that starts like a running or recent
sequence reuses its keys and values (--prefix-cache; usage.prompt_tokens_details.cached_tokens).

    POST /v1/completions   {"prompt": "Once upon a time", "max_tokens": 50, "temperature": 0.8,
                            "stream": false, ...}: OpenAI's completions request and response
    POST /v1/chat/completions  {"messages": [{"role": "user", "content": "Hi"}], ...}: OpenAI's
                           chat request and response (below)
    GET  /v1/models        the model served (and /v1/models/NAME, that one)
    GET  /metrics          counters and gauges in Prometheus' text format (requests, tokens, batch)
    GET  /health           {"status": "ok"} (the one endpoint open without the API key, with --api-key)
    OPTIONS (any)          a browser's CORS preflight, with --cors-origin (pages of those origins may
                           call the server; their answers carry Access-Control-Allow-Origin)
    POST /tokenize         {"content": "text", "with_pieces": false} -> {"tokens": [ids]} (or with
                           pieces, [{"id": id, "piece": text}], a piece that is not whole UTF-8 as
                           its list of bytes), the text encoded as a prompt is (llama.cpp server's)
    POST /detokenize       {"tokens": [ids]} -> {"content": "text"}
    POST /v1/embeddings    {"input": "text" (or a list of texts, token ids, or lists of ids),
                           "encoding_format": "float" | "base64", "pooling": "mean" | "last"}:
                           OpenAI's embeddings request and response, a unit vector an input
                           (pygpt.Model.embed: the final hidden states, mean-pooled by default)

Request fields: prompt (a string, a list of token ids, or a list of either), max_tokens (16),
temperature (1), top_p, n, stream (server-sent events, a chunk a text piece of one choice,
ending in "data: [DONE]"; stream_options {"include_usage": true} adds a last chunk with the
usage), stop, seed, presence_penalty, frequency_penalty, logit_bias ({"id": bias}),
echo, logprobs (k: each token's log-probability and the k most likely, in OpenAI's tokens /
token_logprobs / top_logprobs / text_offset lists; with echo and max_tokens 0, the prompt's,
as evaluation harnesses ask; with stream, each chunk has those of the tokens generated since
the choice's previous chunk); and pygpt's own top_k, min_p, typical_p, top_n_sigma,
epsilon_cutoff, eta_cutoff, xtc_probability, xtc_threshold, mirostat, mirostat_tau, mirostat_eta,
dynatemp_range, dynatemp_exponent, exponential_decay_length_penalty ([start, factor]), guidance_scale,
negative_prompt, dry_multiplier, dry_base, dry_allowed_length, dry_penalty_last_n, dry_sequence_breakers, repetition_penalty,
no_repeat_ngram_size, min_tokens, ignore_eos, token_healing, stop_token_ids and include_stop_str_in_output (vLLM's). Constrained output: response_format as OpenAI's
({"type": "json_object"}: a JSON object; {"type": "json_schema", "json_schema": {"schema":
{...}}}: JSON valid under the schema; {"type": "text"}: no constraint), or llama.cpp server's
grammar (GBNF text) and json_schema (a schema), or regex (the text re.fullmatch accepts, as
vLLM's guided_regex), one of them (pygpt.Grammar; a bad grammar, regex or an unsupported
schema keyword is a 400). model and user are accepted and ignored;
best_of (at least n, at most 20) samples best_of choices a prompt and answers the n with the
highest mean log-probability a generated token (OpenAI's "best"; usage counts every sampled
token); suffix, best_of > n with stream, and echo with logprobs and stream are refused (400),
as is anything else unknown. A client that closes its connection before its answer (streamed
or not) stops its generation.

Chat: the messages (system, developer, user, assistant; content a string or text parts) become a
prompt through the server's chat template (--chat-template: the model folder's
chat_template.jinja, else "plain"; pygpt.chat), whose stop strings join the request's, and the
reply is the completion of that prompt (choices[i].message.content). The fields are the
completions ones (not prompt, suffix, best_of, echo), with max_completion_tokens for max_tokens
(default: the rest of the context), logprobs true or false and top_logprobs (0 to 20) in
OpenAI's chat form ({"content": [{"token", "logprob", "bytes", "top_logprobs"}]}), and stream as
chat.completion.chunk events (each choice's {"role": "assistant"} delta first, content deltas,
a chunk with its finish_reason (and stop_reason, vLLM's: the stop string or stop token id that ended
it, else null); stream_options {"include_usage": true}: a last chunk with the
usage); continue_final_message (vLLM's): the prompt ends inside the last message and the reply
goes on with it. tools, tool_choice, functions, audio, tool messages and image or audio content
are refused (400).
"""

from __future__ import annotations

import base64
import functools
import json
import secrets
import select
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .batching import DEFAULT_MAX_BATCH, DEFAULT_PREFILL_CHUNK, DEFAULT_PREFIX_CACHE, Batcher
from .chat import resolve as resolve_chat_template
from .grammar import Grammar

MAX_BODY_BYTES = 1 << 20
CLIENT_CHECK_SECONDS = 0.05  # how often a request that waits looks whether its client is still there

# OpenAI field -> pygpt generate option
_SAME = ("temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty", "echo", "top_k", "min_p",
         "typical_p", "repetition_penalty", "no_repeat_ngram_size", "ignore_eos", "top_n_sigma", "epsilon_cutoff",
         "eta_cutoff", "xtc_probability", "xtc_threshold", "mirostat", "mirostat_tau", "mirostat_eta",
         "dry_multiplier", "dry_base", "dry_allowed_length", "dry_penalty_last_n", "dry_sequence_breakers",
         "token_healing", "dynatemp_range", "dynatemp_exponent", "exponential_decay_length_penalty",
         "guidance_scale", "negative_prompt", "stop_token_ids", "include_stop_str_in_output")
_RENAMED = {"max_tokens": "max_new_tokens", "n": "num_return_sequences", "min_tokens": "min_new_tokens"}
_IGNORED = ("model", "user", "stream")


class RequestError(ValueError):
    """A request the server refuses (400)."""


@functools.lru_cache(maxsize=64)
def _grammar(kind: str, text: str) -> Grammar:
    """A compiled grammar, kept for the next request that asks for the same one."""
    if kind == "gbnf":
        return Grammar(text)
    if kind == "schema":
        return Grammar.from_json_schema(json.loads(text))
    if kind == "regex":
        return Grammar.from_regex(text)
    return Grammar.json()


def _constraint(body: dict):
    """The grammar a request asks for (response_format, grammar, json_schema, regex), or None."""
    asked = []
    fmt = body.get("response_format")
    if fmt is not None:
        if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
            raise RequestError("'response_format' must be {\"type\": \"text\"}, {\"type\": \"json_object\"} or "
                               "{\"type\": \"json_schema\", \"json_schema\": {\"schema\": {...}}}")
        if fmt["type"] == "json_schema":
            spec = fmt.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema"), (dict, bool)):
                raise RequestError("'response_format' json_schema needs \"json_schema\": {\"schema\": {...}}")
            asked.append(("schema", spec["schema"]))
        elif fmt["type"] == "json_object":
            schema = fmt.get("schema")  # llama.cpp's server takes a schema here too
            asked.append(("schema", schema) if schema is not None else ("json", None))
    if body.get("grammar") is not None:
        if not isinstance(body["grammar"], str):
            raise RequestError("'grammar' must be GBNF text")
        asked.append(("gbnf", body["grammar"]))
    if body.get("json_schema") is not None:
        asked.append(("schema", body["json_schema"]))
    if body.get("regex") is not None:
        if not isinstance(body["regex"], str):
            raise RequestError("'regex' must be a regular expression (a string)")
        asked.append(("regex", body["regex"]))
    if len(asked) > 1:
        raise RequestError("give one of 'response_format', 'grammar', 'json_schema' and 'regex'")
    if not asked:
        return None
    kind, value = asked[0]
    if kind == "schema":
        if not isinstance(value, (dict, bool)):
            raise RequestError("a JSON schema must be an object")
        value = json.dumps(value, sort_keys=True)
    return _grammar(kind, value or "")


def _top_count(name: str, value) -> int:
    """How many most likely tokens to report a token: an integer from 0 to 20, as OpenAI takes."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 20:
        raise RequestError(f"'{name}' must be an integer from 0 to 20")
    return value


# OpenAI's defaults, where the model's generation_config.json sets none (as vLLM's server)
OPENAI_DEFAULTS = {"max_new_tokens": 16, "temperature": 1.0}


def completion_options(body: dict, defaults: dict | None = None) -> dict:
    """pygpt generate options for an OpenAI completions request body (checked by generate);
    defaults: the model's generation_config, which OpenAI's own defaults give way to."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    if body.get("suffix") is not None:
        raise RequestError("'suffix' is not supported by this server")
    options = {k: v for k, v in OPENAI_DEFAULTS.items() if k not in (defaults or {})}
    options["num_return_sequences"] = 1  # n's default, whatever the model's num_return_sequences
    grammar = _constraint(body)
    if grammar is not None:
        options["grammar"] = grammar
    for key, value in body.items():
        if key in ("prompt", "best_of", "response_format", "grammar", "json_schema", "regex", *_IGNORED) or \
                value is None:
            continue
        if key in _SAME:
            options[key] = value
        elif key in _RENAMED:
            options[_RENAMED[key]] = value
        elif key == "logprobs":
            options["logprobs"] = True
            options["top_logprobs"] = _top_count("logprobs", value)
        elif key == "logit_bias":
            if not isinstance(value, dict):
                raise RequestError("'logit_bias' must be an object {\"token id\": bias}")
            try:
                options["logit_bias"] = {int(k): v for k, v in value.items()}
            except ValueError:
                raise RequestError("'logit_bias' keys must be token ids") from None
        else:
            raise RequestError(f"unknown field '{key}'")
    return options


def tokenize(tokenizer, body) -> dict:
    """The /tokenize answer (llama.cpp server's): special tokens are read as prompts' are."""
    if not isinstance(body, dict) or not isinstance(body.get("content"), str):
        raise RequestError("'content' must be a string")
    with_pieces = body.get("with_pieces", False)
    if not isinstance(with_pieces, bool):
        raise RequestError("'with_pieces' must be true or false")
    ids = tokenizer.encode(body["content"], allowed_special="all")
    if not with_pieces:
        return {"tokens": ids}
    pieces = []
    for i in ids:
        raw = tokenizer.token_bytes(i)
        try:
            piece = raw.decode("utf-8")
        except UnicodeDecodeError:
            piece = list(raw)
        pieces.append({"id": i, "piece": piece})
    return {"tokens": pieces}


def detokenize(tokenizer, body) -> dict:
    ids = body.get("tokens") if isinstance(body, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise RequestError("'tokens' must be a list of token ids")
    if any(not 0 <= i < tokenizer.vocab_size for i in ids):
        raise RequestError(f"'tokens' has an id outside the vocabulary [0, {tokenizer.vocab_size})")
    return {"content": tokenizer.decode(ids)}


def embeddings(batcher, body, name: str) -> dict:
    """The /v1/embeddings answer (OpenAI's): a unit vector an input, pooled as asked, computed by
    the batcher between its generation steps."""
    from .embeddings import split_inputs

    model = batcher.model
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    for key in body:
        if key not in ("input", "encoding_format", "dimensions", "pooling", "model", "user"):
            raise RequestError(f"unknown field '{key}'")
    if "input" not in body:
        raise RequestError("'input' is required: a text, a list of texts, token ids, or a list of lists of ids")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise RequestError("'encoding_format' must be \"float\" or \"base64\"")
    pooling = body.get("pooling") or "mean"
    if pooling not in ("mean", "last"):
        raise RequestError("'pooling' must be \"mean\" or \"last\"")
    n_embd = model.config["n_embd"]
    if body.get("dimensions") is not None and body["dimensions"] != n_embd:
        raise RequestError(f"this model's embeddings have {n_embd} dimensions; 'dimensions' cannot change that")
    items = split_inputs(body["input"])[0]
    if len(items) > MAX_EMBEDDING_INPUTS:
        raise RequestError(f"'input' has {len(items)} items, more than {MAX_EMBEDDING_INPUTS} (OpenAI's limit)")
    job = batcher.submit_embed(items, pooling)  # (a list: a batch, even of one)
    vectors = job.result()
    data = [{"object": "embedding", "index": i,
             "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") if fmt == "base64"
             else v.tolist()} for i, v in enumerate(vectors)]
    n = job.run.tokens
    return {"object": "list", "data": data, "model": name, "usage": {"prompt_tokens": n, "total_tokens": n}}


def _flag(body: dict, name: str) -> bool:
    """A true-or-false field (absent or null: false)."""
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise RequestError(f"'{name}' must be true or false")
    return bool(value)


@dataclass
class _Call:
    """A generation request read from its body: generate's prompt and options, and how to answer."""
    prompt: object
    options: dict
    stream: bool
    include_usage: bool = False  # streamed: a last chunk with the usage (chat's stream_options)
    keep: int = 0                # best_of: the choices a prompt answered (of num_return_sequences); 0: all
    logprobs: bool = False       # the client asked for logprobs (best_of asks for them itself)
    template: object = None      # chat: the template its reply is read with


MAX_BEST_OF = 20  # OpenAI's limits
MAX_EMBEDDING_INPUTS = 2048


def _completion_call(body, defaults: dict) -> _Call:
    options = completion_options({k: v for k, v in body.items() if k != "stream_options"}
                                 if isinstance(body, dict) else body, defaults)
    stream = _flag(body, "stream")
    if stream and options.get("logprobs") and options.get("echo"):
        raise RequestError("'echo' with 'logprobs' is not supported with 'stream'")
    call = _Call(body.get("prompt", "<|endoftext|>"),  # OpenAI's default prompt
                 options, stream, _include_usage(body, stream), logprobs=bool(options.get("logprobs")))
    best_of = body.get("best_of")
    if best_of is not None:
        n = options.get("num_return_sequences", 1)
        if isinstance(best_of, bool) or not isinstance(best_of, int) or not n <= best_of <= MAX_BEST_OF:
            raise RequestError(f"'best_of' must be an integer from n ({n}) to {MAX_BEST_OF}")
        if best_of > n:
            if stream:
                raise RequestError("'best_of' greater than n cannot be streamed: the best are known at the end")
            call.keep = n
            options["num_return_sequences"] = best_of
            options["logprobs"] = True
    return call


def _best(outs: list, call: _Call) -> list:
    """best_of: each prompt's call.keep outputs of highest mean log-probability a generated
    token, best first (outs prompt-major, num_return_sequences a prompt)."""
    per = call.options["num_return_sequences"]
    echo = call.options.get("echo")

    def mean(o):
        k = len(o.tokens) - (len(o.prompt_tokens) if echo else 0)
        return sum(o.logprobs[len(o.logprobs) - k:]) / k if k else 0.0

    return [o for p in range(0, len(outs), per)
            for o in sorted(outs[p:p + per], key=mean, reverse=True)[:call.keep]]


_TOOL_FIELDS = ("tools", "tool_choice", "parallel_tool_calls", "functions", "function_call")


def chat_options(body: dict, template, n_ctx: int, defaults: dict | None = None) -> tuple:
    """(prompt, pygpt generate options, the template its reply is read with) for an OpenAI chat
    completions request body (continue_final_message, vLLM's: the prompt ends inside the last
    message, and the reply goes on with it, leading space kept): the
    messages rendered by template (a pygpt.ChatTemplate), whose stop strings join the request's;
    the other fields as completion_options takes them, but logprobs (true or false) with
    top_logprobs (k), and max_completion_tokens (or max_tokens; default: the rest of the
    context, as OpenAI's chat has no limit but the model's, unless the model's defaults set
    max_new_tokens)."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    fields = dict(body)
    fields.pop("stream_options", None)  # how to stream: the handler's (_chat_call)
    for key in _TOOL_FIELDS:
        if fields.get(key) is not None:
            raise RequestError(f"'{key}': tool and function calls are not supported by this server")
    if fields.get("audio") is not None:
        raise RequestError("'audio': audio output is not supported by this server")
    for key in ("prompt", "suffix", "best_of", "echo"):  # completions' own
        if key in fields:
            raise RequestError(f"unknown field '{key}'")
    cont = _flag(fields, "continue_final_message")  # vLLM's: go on with the last (assistant) message
    fields.pop("continue_final_message", None)
    try:
        prompt = template.render(fields.pop("messages", None), continue_final_message=cont)
    except ValueError as e:
        raise RequestError(str(e)) from None
    limit = fields.pop("max_completion_tokens", None)
    if limit is not None:
        if fields.get("max_tokens") is not None:
            raise RequestError("give one of 'max_tokens' and 'max_completion_tokens'")
        fields["max_tokens"] = limit
    elif fields.get("max_tokens") is None and "max_new_tokens" not in (defaults or {}):
        fields["max_tokens"] = n_ctx  # generation stops where the context is full
    logprobs, top = _flag(fields, "logprobs"), fields.pop("top_logprobs", None)
    if top is not None and not logprobs:
        raise RequestError("'top_logprobs' needs 'logprobs': true")
    fields["logprobs"] = (0 if top is None else _top_count("top_logprobs", top)) if logprobs else None
    options = completion_options(fields, defaults)
    options["stop"] = template.with_stop(options.get("stop", (defaults or {}).get("stop")))
    return prompt, options, (template.continuing() if cont else template)


def _include_usage(body, stream: bool) -> bool:
    """stream_options' include_usage (OpenAI's, for streams of both endpoints)."""
    stream_options = body.get("stream_options")
    if stream_options is not None:
        if not stream:
            raise RequestError("'stream_options' goes with 'stream': true")
        if not isinstance(stream_options, dict) or set(stream_options) - {"include_usage"}:
            raise RequestError("'stream_options' must be {\"include_usage\": true or false}")
    return _flag(stream_options or {}, "include_usage")


def _chat_call(body, template, model) -> _Call:
    prompt, options, template = chat_options(body, template, model.config["n_ctx"], model.generation_config)
    stream = _flag(body, "stream")
    return _Call(prompt, options, stream, _include_usage(body, stream), template=template)


class Handler(BaseHTTPRequestHandler):
    server_version = "pygpt"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet; the server's caller decides what to print
        if self.server.verbose:
            super().log_message(fmt, *args)

    # -- plumbing -----------------------------------------------------------------------------

    def _send_json(self, status: int, obj) -> None:
        data = json.dumps(obj).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        self._send_json(status, {"error": {"message": message, "type": kind}})

    def _body(self):
        try:
            n = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            raise RequestError("bad Content-Length") from None
        if n < 0 or n > MAX_BODY_BYTES:
            raise RequestError(f"the request body must be at most {MAX_BODY_BYTES} bytes")
        try:
            return json.loads(self.rfile.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RequestError(f"the request body is not JSON: {e}") from None

    # -- endpoints ----------------------------------------------------------------------------

    def _authorized(self) -> bool:
        """With an API key (--api-key): whether the request carries it, as OpenAI's clients send
        it ("Authorization: Bearer <key>"); a request without it gets a 401."""
        key = self.server.api_key
        if key is None:
            return True
        sent = self.headers.get("Authorization", "")
        if sent.startswith("Bearer ") and secrets.compare_digest(sent[len("Bearer "):].strip().encode(), key.encode()):
            return True
        if self.command == "POST":
            self._skip_body()
        self._error(401, "a valid API key is needed: send \"Authorization: Bearer <key>\"", "authentication_error")
        return False

    def _skip_body(self) -> None:
        """Reads a refused request's body (within the size limit), so the connection stays in step."""
        try:
            n = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            n = 0
        if 0 < n <= MAX_BODY_BYTES:
            self.rfile.read(n)
        elif n:
            self.close_connection = True

    def send_response(self, code, message=None):
        # (a request line too malformed to parse has no command or path yet)
        self.server.count(getattr(self, "command", None), getattr(self, "path", ""), code)
        super().send_response(code, message)

    def end_headers(self):
        allowed = self._allowed_origin()
        if allowed is not None:  # CORS (--cors-origin): a page of that origin may read the answer
            self.send_header("Access-Control-Allow-Origin", allowed)
            if allowed != "*":
                self.send_header("Vary", "Origin")
        super().end_headers()

    def _allowed_origin(self):
        """The Access-Control-Allow-Origin of this answer: "*", the request's Origin, or None."""
        origins = self.server.cors_origins
        headers = getattr(self, "headers", None)
        origin = headers.get("Origin") if headers is not None else None
        if not origins or origin is None:
            return None
        return "*" if "*" in origins else origin if origin in origins else None

    def do_OPTIONS(self):
        """A browser's CORS preflight, answered without the API key (a preflight never carries it)."""
        if not self.server.cors_origins:
            self._error(405, "OPTIONS: CORS is off (pygpt serve --cors-origin)", "invalid_request_error")
            return
        self.send_response(204)
        if self._allowed_origin() is not None:
            self.send_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
            self.send_header("Access-Control-Allow-Headers", "Authorization, Content-Type")
            self.send_header("Access-Control-Max-Age", "86400")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        if self.path != "/health" and not self._authorized():
            return
        if self.path == "/metrics":
            self._send_metrics()
            return
        served = {"id": self.server.model_name, "object": "model", "created": self.server.created, "owned_by": "pygpt"}
        if self.path == "/health":
            self._send_json(200, {"status": "ok"})
        elif self.path == "/v1/models":
            self._send_json(200, {"object": "list", "data": [served]})
        elif self.path.startswith("/v1/models/"):  # OpenAI's "retrieve model"
            if urllib.parse.unquote(self.path[len("/v1/models/"):]) == served["id"]:
                self._send_json(200, served)
            else:
                self._error(404, f"no model '{self.path[len('/v1/models/'):]}': this server serves "
                                 f"'{served['id']}'", "not_found_error")
        else:
            self._error(404, f"no such endpoint: GET {self.path}", "not_found_error")

    def _answer(self, body) -> dict:
        """The answer of an endpoint that answers in one piece: /tokenize, /detokenize, /v1/embeddings."""
        model = self.server.model
        if self.path == "/v1/embeddings":
            return embeddings(self.server.batcher, body, self.server.model_name)
        if model.tokenizer is None:
            raise RequestError("the model has no tokenizer")
        return (tokenize if self.path == "/tokenize" else detokenize)(model.tokenizer, body)

    def do_POST(self):
        if not self._authorized():
            return
        if self.path in ("/tokenize", "/detokenize", "/v1/embeddings"):
            try:
                answer = self._answer(self._body())
            except (RequestError, ValueError, TypeError) as e:
                self._error(400, str(e) or type(e).__name__)
                return
            self._send_json(200, answer)
            return
        if self.path == "/v1/chat/completions":
            self._chat()
            return
        if self.path != "/v1/completions":
            self._error(404, f"no such endpoint: POST {self.path}", "not_found_error")
            return
        started = self._run(lambda body: _completion_call(body, self.server.model.generation_config))
        if started is None:
            return
        call, result = started
        logprobs = call.logprobs
        head = self._head("cmpl-", "text_completion")
        tokenizer = self.server.model.tokenizer
        if call.stream:
            with result:  # a client that goes away stops its generation
                self._stream(_completion_chunks(result, head, call, tokenizer))
            return
        usage = _usage(result, call.options)  # every sampled token, best_of's others too
        if call.keep:
            result = _best(result, call)
        choices = [{"text": o.text, "index": i, "finish_reason": _finish(o), "stop_reason": o.stop_reason,
                    "logprobs": _logprobs(o.tokens, o.logprobs, o.top_logprobs, tokenizer)[0] if logprobs else None}
                   for i, o in enumerate(result)]
        self._send_json(200, {**head, "choices": choices, "usage": usage})

    def _chat(self) -> None:
        """POST /v1/chat/completions: the messages rendered by the server's chat template, then
        as a completion; the reply as the template defines it."""
        template = self.server.chat_template
        started = self._run(lambda body: _chat_call(body, template, self.server.model))
        if started is None:
            return
        call, result = started
        template = call.template
        logprobs = bool(call.options.get("logprobs"))
        head = self._head("chatcmpl-", "chat.completion.chunk" if call.stream else "chat.completion")
        tokenizer = self.server.model.tokenizer
        if call.stream:
            with result:  # a client that goes away stops its generation
                self._stream(_chat_chunks(result, head, call, template, tokenizer))
            return
        choices = [{"index": i, "message": {"role": "assistant", "content": template.reply(o.text)},
                    "logprobs": {"content": _chat_logprobs(o.tokens, o.logprobs, o.top_logprobs, tokenizer)}
                    if logprobs else None, "finish_reason": _finish(o), "stop_reason": o.stop_reason}
                   for i, o in enumerate(result)]
        self._send_json(200, {**head, "choices": choices, "usage": _usage(result, call.options)})

    def _run(self, read):
        """Starts the request read(body) describes (a _Call) in the server's batcher: (the call,
        its ChoiceStream when streamed, else its outputs as one list, prompt-major: OpenAI's
        order of choices), or None once a bad request (400) or a failure (500) is answered, or
        once the client has gone away while it waited (its generation is then cancelled, as a
        stream's is)."""
        try:
            call = read(self._body())
            if self.server.assistant is not None:
                call.options["assistant_model"] = self.server.assistant
            if call.stream:
                tokens = bool(call.options.get("logprobs"))
                return call, self.server.batcher.stream_choices(call.prompt, tokens=tokens, **call.options)
            job = self.server.batcher.submit(call.prompt, **call.options)
            while True:
                try:
                    out = job.result(timeout=CLIENT_CHECK_SECONDS)
                    break
                except TimeoutError:
                    if self._client_gone():
                        job.cancel()
                        self.close_connection = True
                        return None
        except (RequestError, ValueError, TypeError, MemoryError) as e:
            self._error(400, str(e) or type(e).__name__)
            return None
        except Exception as e:  # noqa: BLE001 - a server answers, whatever went wrong
            self._error(500, f"{type(e).__name__}: {e}", "server_error")
            return None
        return call, [o for g in (out if isinstance(out, list) else [out])
                      for o in (g if isinstance(g, list) else [g])]

    def _send_metrics(self) -> None:
        """GET /metrics: counters and gauges in Prometheus' text format (llama.cpp server's
        --metrics, under pygpt_ names)."""
        srv, b = self.server, self.server.batcher
        lines = []

        def metric(name, kind, text, samples):
            lines.extend([f"# HELP pygpt_{name} {text}", f"# TYPE pygpt_{name} {kind}"])
            lines.extend(f"pygpt_{name}{labels} {value}" for labels, value in samples)

        with srv.lock:
            answered = sorted(srv.answered.items())
        metric("requests_total", "counter", "Requests answered, by method, endpoint and status.",
               [(f'{{method="{m}",endpoint="{e}",status="{c}"}}', n) for (m, e, c), n in answered])
        metric("prompt_tokens_total", "counter", "Prompt tokens run (a prefix cache's not counted).",
               [("", b.prompt_tokens)])
        metric("cached_prompt_tokens_total", "counter", "Prompt tokens a prefix cache gave.", [("", b.cached_tokens)])
        metric("generated_tokens_total", "counter", "Tokens generated.", [("", b.generated_tokens)])
        metric("embedded_tokens_total", "counter", "Tokens of the embedding requests answered.",
               [("", b.embedded_tokens)])
        metric("steps_total", "counter", "Forward calls of the batch.", [("", b.steps)])
        metric("sequences_running", "gauge", "Sequences in the batch now.", [("", b.running)])
        metric("requests_waiting", "gauge", "Requests waiting for a place in the batch.", [("", b.waiting())])
        metric("batch_sequences_max", "gauge", "The most sequences one step has run.", [("", b.most_sequences)])
        data = ("\n".join(lines) + "\n").encode("utf-8")
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _client_gone(self) -> bool:
        """Whether the client closed its end (the socket reads as ended; a client that sends
        more, a pipelined request, is still there)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _head(self, prefix: str, kind: str) -> dict:
        """The fields every response (and chunk) of a request starts with."""
        return {"id": prefix + secrets.token_hex(12), "object": kind, "created": int(time.time()),
                "model": self.server.model_name}

    def _stream(self, chunks) -> None:
        """Server-sent events: each chunk (a JSON object), then [DONE]. A client that goes away
        stops the generation (the caller closes the stream); a failure once the headers are
        sent is an error event."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

        def event(obj) -> None:
            self.wfile.write(b"data: " + json.dumps(obj).encode("utf-8") + b"\n\n")
            self.wfile.flush()

        try:
            for chunk in chunks:
                event(chunk)
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as e:  # noqa: BLE001 - headers are sent: report it in the stream
            event({"error": {"message": str(e), "type": "server_error"}})


def _usage(outs: list, options: dict) -> dict:
    """OpenAI's usage of a request's outputs (one list, prompt-major)."""
    n = options.get("num_return_sequences", 1)
    prompt_tokens = sum(len(o.prompt_tokens) for o in outs[::n])
    completion_tokens = sum(len(o.tokens) - (len(o.prompt_tokens) if options.get("echo") else 0) for o in outs)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": outs[0].timings.cached_tokens}}


def _choice_chunks(it, head: dict, delta, end):
    """The chunks of a streamed request: delta(*item) for each item of it, (index, piece) or
    with tokens (index, piece, tokens), unless it gives None; then end(index, output) for each
    choice (its index: prompt-major, as without stream)."""
    for item in it:
        choice = delta(*item)
        if choice is not None:
            yield {**head, "choices": [choice]}
    for index, out in enumerate(it.outputs):
        yield {**head, "choices": [end(index, out)]}


def _completion_chunks(it, head: dict, call: _Call, tokenizer):
    """A chunk a text piece of a choice, then one with each choice's finish reason. With logprobs,
    a chunk also whenever a choice has new tokens, with their logprobs (text_offset counts on
    from the choice's previous tokens, as without stream); with include_usage, a last one with
    the usage and no choices (the others with usage null)."""
    logprobs = call.logprobs
    offsets: dict = {}  # choice index -> text_offset of its next token
    if call.include_usage:
        head = {**head, "usage": None}

    def delta(index, piece, new=None):
        lps = None
        if logprobs:
            lps, offsets[index] = _logprobs(new["tokens"], new["logprobs"], new["top_logprobs"], tokenizer,
                                            offsets.get(index, 0))
        return {"text": piece, "index": index, "logprobs": lps, "finish_reason": None}

    def end(index, out):
        return {"text": "", "index": index, "logprobs": None, "finish_reason": _finish(out),
                "stop_reason": out.stop_reason}

    yield from _choice_chunks(it, head, delta, end)
    if call.include_usage:
        yield {**head, "choices": [], "usage": _usage(it.outputs, call.options)}


def _chat_chunks(it, head: dict, call: _Call, template, tokenizer):
    """chat.completion.chunk objects: each choice's {"role": "assistant", "content": ""} delta,
    then content deltas (with logprobs, one whenever a choice has new tokens), then a chunk with
    each choice's finish reason; with include_usage, a last one with the usage and no choices
    (the others with usage null), as OpenAI streams. With the template's lstrip_reply, the
    whitespace before a reply's first other character is not sent, as without stream."""
    logprobs = bool(call.options.get("logprobs"))
    begun: set = set()  # choices whose reply has begun
    if call.include_usage:
        head = {**head, "usage": None}

    def delta(index, piece, new=None):
        if template.lstrip_reply and index not in begun:
            piece = piece.lstrip()
        if piece:
            begun.add(index)
        if not piece and not logprobs:
            return None
        lps = {"content": _chat_logprobs(new["tokens"], new["logprobs"], new["top_logprobs"], tokenizer)} \
            if logprobs else None
        return {"index": index, "delta": {"content": piece}, "logprobs": lps, "finish_reason": None}

    def end(index, out):
        return {"index": index, "delta": {}, "logprobs": None, "finish_reason": _finish(out),
                "stop_reason": out.stop_reason}

    for index in range(call.options.get("num_return_sequences", 1)):
        yield {**head, "choices": [{"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                    "finish_reason": None}]}
    yield from _choice_chunks(it, head, delta, end)
    if call.include_usage:
        yield {**head, "choices": [], "usage": _usage(it.outputs, call.options)}


def _chat_logprobs(tokens, logprobs, top_logprobs, tokenizer) -> list:
    """OpenAI chat's logprobs "content": a {token, logprob, bytes, top_logprobs} entry a token,
    its most likely alternatives as {token, logprob, bytes} (none when not asked for)."""
    def entry(t, lp) -> dict:
        return {"token": tokenizer.decode([t]), "logprob": lp, "bytes": list(tokenizer.token_bytes(t))}

    tops = top_logprobs or [()] * len(tokens)
    return [{**entry(t, lp), "top_logprobs": [entry(a, alp) for a, alp in row]}
            for t, lp, row in zip(tokens, logprobs, tops)]


def _logprobs(tokens, logprobs, top_logprobs, tokenizer, start: int = 0) -> tuple:
    """(OpenAI's logprobs object of tokens, where the text after them starts): the tokens as
    text, their log-probabilities (None for the first prompt token with echo), the most likely
    alternatives (None, or empty: not asked for) and where each token starts in the text, from
    start."""
    def piece(t):
        return tokenizer.decode([t]) if tokenizer is not None else str(t)

    pieces = [piece(t) for t in tokens]
    offsets, at = [], start
    for p in pieces:
        offsets.append(at)
        at += len(p)
    tops = top_logprobs or [None] * len(pieces)
    return {"tokens": pieces, "token_logprobs": list(logprobs),
            "top_logprobs": [None if row is None else {piece(t): lp for t, lp in row} for row in tops],
            "text_offset": offsets}, at


def _finish(out) -> str:
    return "length" if out.finish_reason == "length" else "stop"  # OpenAI has no "eos"


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, model, host: str = "127.0.0.1", port: int = 8000, name: str | None = None,
                 verbose: bool = False, max_batch: int = DEFAULT_MAX_BATCH,
                 prefill_chunk: int = DEFAULT_PREFILL_CHUNK, prefix_cache: int = DEFAULT_PREFIX_CACHE,
                 assistant=None, chat_template=None, api_key: str | None = None, cors_origins=None):
        import os

        if api_key is not None and (not isinstance(api_key, str) or not api_key or not api_key.isprintable()):
            raise ValueError("api_key must be a non-empty printable string")
        self.api_key = api_key  # every request but GET /health must carry "Authorization: Bearer <key>"
        cors_origins = list(cors_origins or [])
        if not all(isinstance(o, str) and (o == "*" or "://" in o) and o.isprintable() for o in cors_origins):
            raise ValueError(f"cors_origins must be '*' or origins such as 'http://localhost:3000', got {cors_origins!r}")
        # pages of these origins (browsers' Origin header; "*": any) may read the answers (CORS)
        self.cors_origins = [o.rstrip("/") for o in cors_origins]

        self.model = model
        self.assistant = assistant  # a pygpt.Model drafting for every request (assisted decoding), or None
        # how chat requests become prompts: a pygpt.ChatTemplate, a built-in's name or a .jinja
        # file; None: the model's own, else "plain"
        self.chat_template = resolve_chat_template(model, chat_template)
        self.batcher = Batcher(model, max_batch=max_batch, prefill_chunk=prefill_chunk, prefix_cache=prefix_cache)
        self.model_name = name or os.path.basename(os.path.normpath(model.path))
        self.created = int(time.time())
        self.verbose = verbose
        self.lock = threading.Lock()
        self.answered: dict = {}  # (method, endpoint, status) -> requests (GET /metrics)
        super().__init__((host, port), Handler)

    ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/models", "/tokenize",
                 "/detokenize", "/health", "/metrics")

    def count(self, method: str, path: str, status: int) -> None:
        """One more answer (endpoints outside ENDPOINTS counted as "other": no label per path)."""
        endpoint = path if path in self.ENDPOINTS else "/v1/models/*" if path.startswith("/v1/models/") else "other"
        key = (method if method in ("GET", "POST") else "other", endpoint, int(status))  # bounded labels
        with self.lock:
            self.answered[key] = self.answered.get(key, 0) + 1

    def server_close(self) -> None:
        super().server_close()
        self.batcher.close()


def add_arguments(p) -> None:
    """The arguments of the serve command, on an argparse parser."""
    from . import lora

    p.add_argument("-m", "--model", metavar="DIR", default=None,
                   help="model folder (default: the model shipped with pygpt)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="threads (default: physical cores)")
    p.add_argument("--kv-cache", choices=("auto", "f32", "f16", "int8"), default="auto",
                   help="KV cache type (default: auto)")
    lora.add_arguments(p)
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, metavar="N",
                   help="most sequences generated at once; more requests wait (default: %(default)s)")
    p.add_argument("--prefill-chunk", type=int, default=DEFAULT_PREFILL_CHUNK, metavar="N",
                   help="most prompt tokens a step runs, so that long prompts do not stall the others; "
                        "0: whole prompts (default: %(default)s)")
    p.add_argument("--prefix-cache", type=int, default=DEFAULT_PREFIX_CACHE, metavar="N",
                   help="keep the KV caches of the last N finished requests, for prompts that start the same "
                        "way (a client continuing its text); 0: off (default: %(default)s)")
    p.add_argument("--assistant", metavar="DIR", default=None,
                   help="a model with the same vocabulary (a smaller one, or this one at int8) that drafts "
                        "tokens for every request: faster, the same outputs (greedy) or distribution "
                        "(sampling) (default: off)")
    p.add_argument("--chat-template", metavar="NAME|FILE", default=None,
                   help="how /v1/chat/completions turns messages into a prompt: 'plain' (a User:/Assistant: "
                        "transcript), 'chatml', or a Jinja template file as Hugging Face's (needs jinja2) "
                        "(default: the model folder's chat_template.jinja, else plain)")
    p.add_argument("--api-key", metavar="KEY", default=None,
                   help="answer only requests that send \"Authorization: Bearer KEY\" (as OpenAI's clients do), "
                        "all but GET /health; a 401 otherwise (default: $PYGPT_API_KEY, else none)")
    p.add_argument("--cors-origin", metavar="ORIGIN", action="append", default=None,
                   help="let web pages of ORIGIN (e.g. http://localhost:3000; '*': any site) call the server "
                        "from a browser (CORS); may be repeated (default: none: browsers keep pages of other "
                        "sites from reading the answers)")
    p.add_argument("--verbose", action="store_true", help="log every request to stderr")


def run(args) -> int:
    """Serves until interrupted (Ctrl-C)."""
    import os

    from .model import load

    model = load(args.model, n_threads=args.threads, kv_cache=args.kv_cache, lora=args.lora)
    assistant = load(args.assistant, n_threads=args.threads) if args.assistant else None
    server = Server(model, args.host, args.port, verbose=args.verbose, max_batch=args.max_batch,
                    prefill_chunk=args.prefill_chunk, prefix_cache=args.prefix_cache, assistant=assistant,
                    chat_template=args.chat_template, api_key=args.api_key or os.environ.get("PYGPT_API_KEY"),
                    cors_origins=args.cors_origin)
    host, port = server.server_address[:2]
    print(f"pygpt: serving {server.model_name} on http://{host}:{port}/v1/completions and /v1/chat/completions "
          f"(chat template: {server.chat_template.name}{'; API key required' if server.api_key else ''})", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
