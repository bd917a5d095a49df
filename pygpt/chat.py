"""Chat templates: a conversation (OpenAI's messages) as the text a model continues.

    model.chat([{"role": "user", "content": "Who art thou?"}], max_new_tokens=40).text
    model.apply_chat_template(messages)                  # the prompt text alone
    ChatTemplate.load("chatml"), ChatTemplate.load("my_template.jinja"), ChatTemplate.from_jinja(text)

GPT-2 is a base model: it has no chat format of its own. A model folder may carry one
(chat_template.jinja, written by the converter from a Hugging Face tokenizer's template);
otherwise "plain" is used, a transcript a base model continues well:

    You are a helpful bard.              <- the system message, as a first paragraph

    User: Who art thou?
    Assistant:                           <- the generation prompt (no trailing space)

Jinja templates render as transformers' apply_chat_template renders them (same sandboxed
environment, globals and variables), so a model's template gives the same prompt here and
there. jinja2 is imported only for them: the built-in templates need nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from datetime import datetime
from typing import Callable, Optional, Sequence

from .tokenizer import ENDOFTEXT

CHAT_TEMPLATE_FILE = "chat_template.jinja"  # in a model folder (docs/FORMAT.md), as transformers saves it
ROLES = ("system", "developer", "user", "assistant")

# A reply of "plain" ends where the model starts a new speaker's line.
PLAIN_STOP = ("\nUser:", "\nAssistant:", "\nSystem:")
CHATML_STOP = ("<|im_end|>",)

_TOOL_FIELDS = ("tool_calls", "function_call", "tool_call_id")
_MEDIA_PARTS = {"image_url": "images are", "input_image": "images are", "image": "images are",
                "input_audio": "audio is", "audio": "audio is", "file": "files are", "input_file": "files are"}


# -- messages ------------------------------------------------------------------------------------


def _text(content, where: str) -> str:
    """A message's content as text: a str, or OpenAI's list of text parts joined by newlines (as
    vLLM joins them for a template that takes text)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, (list, tuple)):
        raise ValueError(f"{where} must be a string or a list of text parts, got {type(content).__name__}")
    texts = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if isinstance(kind, str) and kind in _MEDIA_PARTS:
            raise ValueError(f"{at}: {_MEDIA_PARTS[kind]} not supported: this model reads text only")
        if kind != "text":
            raise ValueError(f"{at} must be a text part {{\"type\": \"text\", \"text\": \"...\"}}, got {part!r:.80}")
        if set(part) != {"type", "text"} or not isinstance(part["text"], str):
            raise ValueError(f"{at} must be {{\"type\": \"text\", \"text\": \"...\"}}, got {part!r:.80}")
        texts.append(part["text"])
    return "\n".join(texts)


def check_messages(messages) -> list:
    """The conversation as [{"role", "content": str}], checked; a ValueError names what is wrong
    (messages[2].content, say). "developer" (OpenAI's newer name for system) becomes "system",
    which is what templates know. Tool calls, tool messages and media are refused."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages must be a non-empty list of {\"role\": ..., \"content\": ...}")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ValueError(f"{where} must be an object {{\"role\": ..., \"content\": ...}}, got {m!r:.80}")
        for key in m:
            if key in _TOOL_FIELDS:
                raise ValueError(f"{where}.{key}: tool calls are not supported")
            if key == "audio":
                raise ValueError(f"{where}.audio: audio is not supported: this model reads text only")
            if key not in ("role", "content"):
                raise ValueError(f"{where}: unknown field '{key}'")
        role = m.get("role")
        if role in ("tool", "function"):
            raise ValueError(f"{where}.role: '{role}' messages are not supported (no tool calls)")
        if role not in ROLES:
            raise ValueError(f"{where}.role must be one of {', '.join(map(repr, ROLES))}, got {role!r}")
        if "content" not in m:
            raise ValueError(f"{where}.content is missing")
        out.append({"role": "system" if role == "developer" else role,
                    "content": _text(m["content"], f"{where}.content")})
    return out


# -- built-in templates --------------------------------------------------------------------------


def _render_plain(messages: list, add_generation_prompt: bool) -> str:
    """System messages before the first turn as paragraphs, then a "Speaker: text" line a
    message (a later system message too). The generation prompt is "Assistant:" with no
    space: GPT-2's BPE puts a word's space in front of it (" Hello" is one token), so the model
    continues with " Hello"; a prompt ending in a space would make it start a word without its
    space, which it has rarely seen. That space is why the reply is stripped (lstrip_reply)."""
    text, started = "", False
    for m in messages:
        content = m["content"].strip()
        if m["role"] == "system" and not started:
            text += content + "\n\n"
            continue
        started = True
        label = m["role"].capitalize()
        text += f"{label}: {content}\n" if content else f"{label}:\n"
    return text + "Assistant:" if add_generation_prompt else text


def _render_chatml(messages: list, add_generation_prompt: bool) -> str:
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + "<|im_start|>assistant\n" if add_generation_prompt else text


# -- Jinja templates -----------------------------------------------------------------------------


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    """transformers' tojson filter: JSON without Jinja's HTML escaping, with json.dumps's options."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _compile_jinja(source: str, name: str) -> Callable:
    """render(messages, add_generation_prompt) of a Jinja chat template, in the environment
    transformers' apply_chat_template uses. Errors (a syntax error now, raise_exception or any
    other failure when rendering) are ValueErrors."""
    try:
        import jinja2
        import jinja2.sandbox
    except ImportError:
        raise ImportError(f"chat template {name} is a Jinja template, which needs jinja2: pip install jinja2 "
                          "(or choose a built-in template: 'plain', 'chatml')") from None
    if tuple(int(x) for x in re.findall(r"\d+", jinja2.__version__)[:3]) < (3, 1, 6):
        # templates come with models, as untrusted as any download; older sandboxes can be escaped
        raise ImportError(f"chat templates need jinja2 >= 3.1.6 (this is {jinja2.__version__}): pip install -U jinja2")

    import jinja2.ext

    def raise_exception(message):
        raise jinja2.TemplateError(message)

    class Generation(jinja2.ext.Extension):
        """transformers' {% generation %} ... {% endgeneration %}: it marks the assistant's text
        for training masks; rendering, it is its body."""
        tags = {"generation"}

        def parse(self, parser):
            next(parser.stream)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                       extensions=["jinja2.ext.loopcontrols", Generation])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        template = env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise ValueError(f"chat template {name}: syntax error at line {e.lineno}: {e.message}") from e

    def render(messages: list, add_generation_prompt: bool) -> str:
        try:  # tools and documents: None, as transformers passes them when none are given
            return template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                   bos_token=ENDOFTEXT, eos_token=ENDOFTEXT, tools=None, documents=None)
        except Exception as e:  # noqa: BLE001 - the template's code failed: a bad template or messages it refuses
            why = str(e) if isinstance(e, jinja2.TemplateError) else f"{type(e).__name__}: {e}"
            raise ValueError(f"chat template {name}: {why}") from e

    return render


_CONTINUE_MARK = "CONTINUE_FINAL_MESSAGE_TAG "  # transformers' mark, so templates that test for text see the same
_REPLY = "PYGPTREPLY7Q"  # marks in a probe conversation, text no template changes
_NEXT = "PYGPTNEXT7Q"


def _probe_stop(render: Callable) -> tuple:
    """The string that ends an assistant turn under a template: what it writes after an
    assistant's text (stripped: "<|im_end|>", eos), or where it writes nothing, the start of the
    user turn that follows, up to the user's text ("\\nUser:"). () if neither shows (or the
    template refuses the probe)."""
    try:
        text = render([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _REPLY}], False)
        end = text[text.index(_REPLY) + len(_REPLY):].strip()
        if not end:
            text = render([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _REPLY},
                           {"role": "user", "content": _NEXT}], False)
            end = text[text.index(_REPLY) + len(_REPLY):text.index(_NEXT)].rstrip()
    except ValueError:  # the template refused the probe, or changed the marks
        return ()
    return (end,) if end.strip() else ()


# -- the template --------------------------------------------------------------------------------


class ChatTemplate:
    """How a conversation becomes prompt text, and where the model's reply ends.

    name:          "plain", "chatml", a file's path, ...
    render:        fn(messages, add_generation_prompt) -> str, given checked messages
                   ([{"role", "content": str}]; a template of your own can be any function)
    stop:          the strings that end an assistant turn (added to generate's stop); None: found
                   by rendering a probe conversation (_probe_stop)
    lstrip_reply:  the reply's leading whitespace is the transcript's, not the reply's ("plain")
    """

    def __init__(self, name: str, render: Callable, stop: Optional[Sequence[str]] = None,
                 lstrip_reply: bool = False):
        if not callable(render):
            raise TypeError("render must be a function (messages, add_generation_prompt) -> str")
        if stop is not None and not (isinstance(stop, (list, tuple)) and all(isinstance(s, str) and s for s in stop)):
            raise TypeError("stop must be a list of non-empty str (or None)")
        self.name = name
        self._render = render
        self.stop = tuple(stop) if stop is not None else _probe_stop(render)
        self.lstrip_reply = bool(lstrip_reply)

    @classmethod
    def from_jinja(cls, source: str, stop: Optional[Sequence[str]] = None, lstrip_reply: bool = False,
                   name: str = "jinja") -> "ChatTemplate":
        """A Jinja template (Hugging Face's chat_template), rendered as transformers renders it:
        variables messages, add_generation_prompt, bos_token and eos_token (<|endoftext|>);
        globals raise_exception and strftime_now. Needs jinja2."""
        if not isinstance(source, str):
            raise TypeError(f"a Jinja chat template is text, got {type(source).__name__}")
        return cls(name, _compile_jinja(source, name), stop, lstrip_reply)

    @classmethod
    def load(cls, spec) -> "ChatTemplate":
        """A built-in template by name ("plain", "chatml") or a Jinja template's file (a
        ChatTemplate is returned as it is)."""
        if isinstance(spec, ChatTemplate):
            return spec
        if isinstance(spec, os.PathLike):
            spec = os.fspath(spec)
        if not isinstance(spec, str):
            raise TypeError(f"a chat template is a ChatTemplate, a built-in's name or a file, "
                            f"got {type(spec).__name__}")
        if spec == "plain":
            return cls("plain", _render_plain, PLAIN_STOP, lstrip_reply=True)
        if spec == "chatml":
            return cls("chatml", _render_chatml, CHATML_STOP)
        if os.path.isfile(spec):
            with open(spec, encoding="utf-8") as f:
                return cls.from_jinja(f.read(), name=spec)
        raise ValueError(f"no chat template {spec!r}: give 'plain', 'chatml' or a .jinja file")

    @classmethod
    def from_model(cls, path) -> "ChatTemplate":
        """A model folder's own template (its chat_template.jinja), else "plain"."""
        own = os.path.join(os.fspath(path), CHAT_TEMPLATE_FILE)
        return cls.load(own if os.path.isfile(own) else "plain")

    def render(self, messages, add_generation_prompt: Optional[bool] = None,
               continue_final_message: bool = False) -> str:
        """The conversation as prompt text. add_generation_prompt (default: unless continuing):
        end with the start of the assistant's turn, for the model to write it.
        continue_final_message: end inside the last message instead, right after its text, for
        the model to go on with it ("Sure, here is" -> the rest), as transformers'
        apply_chat_template does: its text is marked, rendered and cut at the mark (where the
        template dropped the whitespace after it, the text is cut before that whitespace too).
        Bad messages are a ValueError."""
        if not isinstance(continue_final_message, bool):
            raise TypeError(f"continue_final_message must be True or False, got {continue_final_message!r}")
        if add_generation_prompt is None:
            add_generation_prompt = not continue_final_message
        if not isinstance(add_generation_prompt, bool):
            raise TypeError(f"add_generation_prompt must be True or False, got {add_generation_prompt!r}")
        if add_generation_prompt and continue_final_message:
            raise ValueError("continue_final_message and add_generation_prompt do not go together: one continues the "
                             "last message, the other starts a new assistant message")
        checked = check_messages(messages)
        if continue_final_message:
            checked[-1] = {**checked[-1], "content": checked[-1]["content"] + _CONTINUE_MARK}
        text = self._render(checked, add_generation_prompt)
        if not isinstance(text, str):
            raise TypeError(f"chat template {self.name} rendered a {type(text).__name__}, not text")
        if continue_final_message:
            at = text.rfind(_CONTINUE_MARK.strip())
            if at < 0:
                raise ValueError(f"continue_final_message: chat template {self.name} does not write the final "
                                 "message's text as it is, so there is no place to continue it")
            text = text[:at] if text.startswith(_CONTINUE_MARK, at) else text[:at].rstrip()
        return text

    def continuing(self) -> "ChatTemplate":
        """This template for a reply that continues the last message: its text is kept whole
        (no whitespace stripped: the space may be the reply's)."""
        copy = ChatTemplate.__new__(ChatTemplate)
        copy.__dict__.update(self.__dict__, lstrip_reply=False)
        return copy

    def with_stop(self, stop=None) -> list:
        """The caller's stop strings (None, a str or a list) and the template's."""
        if stop is None:
            stop = []
        elif isinstance(stop, str):
            stop = [stop]
        elif not isinstance(stop, (list, tuple)):
            raise TypeError("stop must be a str or a list of str")
        return [*stop, *self.stop]

    def reply(self, text: str) -> str:
        """The reply in a generated text (its leading whitespace dropped with lstrip_reply)."""
        return text.lstrip() if self.lstrip_reply and text is not None else text

    def __repr__(self) -> str:
        return f"ChatTemplate({self.name!r}, stop={self.stop!r})"


def resolve(model, template) -> ChatTemplate:
    """The template a model's chat calls take: its own for None, else ChatTemplate.load's."""
    return model.chat_template if template is None else ChatTemplate.load(template)


def _prompt(model, messages, template, stop, options) -> tuple:
    """(template, prompt text, stop strings) of a chat call (options' continue_final_message
    taken out)."""
    chosen = resolve(model, template)
    if options.get("echo"):
        raise ValueError("chat() returns the reply alone, so no echo: render the prompt with "
                         "apply_chat_template() and call generate()")
    cont = options.pop("continue_final_message", False)
    prompt = chosen.render(messages, continue_final_message=cont)
    return (chosen.continuing() if cont else chosen), prompt, chosen.with_stop(stop)


def _replies(out, template: ChatTemplate):
    """generate()'s output (one, or a list) with each text the reply as the template defines it."""
    def reply(o):
        return dataclasses.replace(o, text=template.reply(o.text))

    return [reply(o) for o in out] if isinstance(out, list) else reply(out)


def chat(model, messages, template=None, *, stop=None, runner=None, **options):
    """model.chat: generate() on the conversation's prompt under template (None: the model's
    own), the template's stop strings added to stop; the output's text is the reply. runner:
    what generates (the model, or a pygpt.Batcher over it: Batcher.chat)."""
    chosen, prompt, stop = _prompt(model, messages, template, stop, options)
    return _replies((runner or model).generate(prompt, stop=stop, **options), chosen)


async def achat(model, messages, template=None, *, stop=None, **options):
    """model.achat: chat() for asyncio (model.agenerate underneath)."""
    chosen, prompt, stop = _prompt(model, messages, template, stop, options)
    return _replies(await model.agenerate(prompt, stop=stop, **options), chosen)


class ReplyStream:
    """model.chat_stream's iterator: the reply's text as it is generated (model.stream's pieces,
    the whitespace before the reply's first other character left out under lstrip_reply, as
    chat() leaves it out); once exhausted, .output is chat()'s output. Breaking out of the
    loop stops generation."""

    def __init__(self, stream, template: ChatTemplate):
        self._stream = stream
        self._template = template
        self._begun = not template.lstrip_reply
        self.output = None

    def __iter__(self) -> "ReplyStream":
        return self

    def _piece(self, piece: str) -> str:
        """What of a stream's piece is the reply's ("" for the space before it)."""
        if not self._begun:
            piece = piece.lstrip()
            self._begun = bool(piece)
        return piece

    def _end(self) -> None:
        self.output = _replies(self._stream.output, self._template)

    def __next__(self) -> str:
        while True:
            try:
                piece = self._piece(next(self._stream))
            except StopIteration:
                self._end()
                raise
            if piece:
                return piece


class AsyncReplyStream(ReplyStream):
    """model.achat_stream's async iterator: ReplyStream over model.astream."""

    def __aiter__(self) -> "AsyncReplyStream":
        return self

    async def __anext__(self) -> str:
        while True:
            try:
                piece = self._piece(await self._stream.__anext__())
            except StopAsyncIteration:
                self._end()
                raise
            if piece:
                return piece


def chat_stream(model, messages, template=None, *, stop=None, runner=None, **options) -> ReplyStream:
    """model.chat_stream: chat() with the reply streamed (model.stream's options)."""
    chosen, prompt, stop = _prompt(model, messages, template, stop, options)
    return ReplyStream((runner or model).stream(prompt, stop=stop, **options), chosen)


def achat_stream(model, messages, template=None, *, stop=None, **options) -> AsyncReplyStream:
    """model.achat_stream: chat_stream() for asyncio (model.astream underneath)."""
    chosen, prompt, stop = _prompt(model, messages, template, stop, options)
    return AsyncReplyStream(model.astream(prompt, stop=stop, **options), chosen)
