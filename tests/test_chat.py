"""Chat templates (pygpt.chat), Model.chat and `pygpt serve`'s POST /v1/chat/completions:
prompts rendered exactly (Jinja templates as transformers' apply_chat_template renders them),
replies that are generate's on the rendered prompt, the converter keeping a Hugging Face
folder's template, and every bad input refused with a message that names it."""

import dataclasses
import datetime
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

import pygpt
import pygpt.convert
from conftest import GPT2_TOKENIZER, post, serving, sse_events
from pygpt.chat import CHATML_STOP, PLAIN_STOP, ChatTemplate

CHAT = "/v1/chat/completions"
CONV = [{"role": "system", "content": "You are a bard."},
        {"role": "user", "content": "Who art thou?"},
        {"role": "assistant", "content": "A humble player."},
        {"role": "user", "content": "Speak, then: what news?"}]
ONE = [{"role": "user", "content": "Good morrow!"}]

CHATML_JINJA = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                "{% endif %}")
# Llama 2's layout: the system message inside the first user turn, turns ending in eos, roles
# that must alternate
LLAMA2_JINJA = """{% if messages[0]['role'] == 'system' %}
{% set system = messages[0]['content'] %}
{% set loop_messages = messages[1:] %}
{% else %}
{% set system = none %}
{% set loop_messages = messages %}
{% endif %}
{% for message in loop_messages %}
{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
{% endif %}
{% if message['role'] == 'user' %}
{{ bos_token + '[INST] ' }}{% if loop.first and system is not none %}{{ '<<SYS>>\n' + system + '\n<</SYS>>\n\n' }}{% endif %}{{ message['content'] | trim + ' [/INST]' }}
{% else %}
{{ ' ' + message['content'] | trim + ' ' + eos_token }}
{% endif %}
{% endfor %}
"""
# Zephyr's layout, with tojson (no HTML escaping, non-ASCII kept), a namespace and loop controls
ZEPHYR_JINJA = """{% set ns = namespace(turns=0) %}
{% for message in messages %}
{% if message['role'] == 'system' %}{% continue %}{% endif %}
{% set ns.turns = ns.turns + 1 %}
<|{{ message['role'] }}|> {{ ns.turns }}
{{ message['content'] | tojson }}{{ eos_token }}
{% endfor %}
{% if add_generation_prompt %}
<|assistant|>
{% endif %}"""


@pytest.fixture(scope="module")
def model():
    return pygpt.load()


@pytest.fixture(scope="module")
def url(model):
    with serving(model, name="bard") as base:
        yield base


def hf_render(template, messages, add_generation_prompt, **kw):
    """transformers' apply_chat_template with template, on a GPT-2 tokenizer."""
    transformers = pytest.importorskip("transformers")
    tok = transformers.GPT2TokenizerFast(vocab_file=os.path.join(GPT2_TOKENIZER, "vocab.json"),
                                         merges_file=os.path.join(GPT2_TOKENIZER, "merges.txt"))
    tok.chat_template = template
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kw)


# -- templates ------------------------------------------------------------------------------------


def test_plain_is_a_transcript():
    plain = ChatTemplate.load("plain")
    assert plain.render(CONV) == ("You are a bard.\n\nUser: Who art thou?\nAssistant: A humble player.\n"
                                  "User: Speak, then: what news?\nAssistant:")
    assert plain.render(CONV, add_generation_prompt=False) == (
        "You are a bard.\n\nUser: Who art thou?\nAssistant: A humble player.\nUser: Speak, then: what news?\n")
    # developer is system; a system message after the first turn is a line; text parts join
    # with newlines; contents are stripped, an empty one leaves the label alone
    messages = [{"role": "developer", "content": " Be brief. "}, {"role": "user", "content": "Hi"},
                {"role": "system", "content": "Rhyme."},
                {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
                {"role": "assistant", "content": ""}]
    assert plain.render(messages) == "Be brief.\n\nUser: Hi\nSystem: Rhyme.\nUser: one\ntwo\nAssistant:\nAssistant:"
    assert plain.stop == PLAIN_STOP and plain.lstrip_reply
    assert plain.reply(" Hark.\n") == "Hark.\n"


def test_chatml_is_the_chatml_jinja_template():
    chatml = ChatTemplate.load("chatml")
    assert chatml.render(ONE) == "<|im_start|>user\nGood morrow!<|im_end|>\n<|im_start|>assistant\n"
    assert chatml.stop == CHATML_STOP and not chatml.lstrip_reply and chatml.reply(" x") == " x"
    for messages in (CONV, ONE):
        for gen in (True, False):
            assert chatml.render(messages, gen) == hf_render(CHATML_JINJA, messages, gen)


@pytest.mark.parametrize("template", [CHATML_JINJA, LLAMA2_JINJA, ZEPHYR_JINJA], ids=["chatml", "llama2", "zephyr"])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_jinja_templates_render_as_transformers_does(template, add_generation_prompt):
    tricky = [{"role": "system", "content": "Answer <b>in verse</b> & \"quotes\"."},
              {"role": "user", "content": "Café ☕? \n"}, {"role": "assistant", "content": "Aye."},
              {"role": "user", "content": "Again"}]
    mine = ChatTemplate.from_jinja(template)
    for messages in (CONV, ONE, tricky):
        want = hf_render(template, messages, add_generation_prompt)
        assert mine.render(messages, add_generation_prompt) == want


@pytest.mark.parametrize("template, stop", [
    (CHATML_JINJA, ("<|im_end|>",)),                          # what follows an assistant's text
    (LLAMA2_JINJA, ("<|endoftext|>",)),                        # eos
    ("{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n{% endfor %}"
     "{% if add_generation_prompt %}Assistant:{% endif %}", ("\nUser:",)),  # the next user turn's start
    ("{% for m in messages %}{{ m['content'] }}{% endfor %}", ()),          # nothing marks a turn
    ("{% for m in messages %}{% if m['role'] == 'assistant' %}{{ raise_exception('no') }}{% endif %}"
     "{{ m['content'] }}{% endfor %}", ()),                                 # the probe is refused
])
def test_a_jinja_templates_stop_strings(template, stop):
    assert ChatTemplate.from_jinja(template).stop == stop
    assert ChatTemplate.from_jinja(template, stop=["END"]).stop == ("END",)


def test_jinja_globals_and_variables():
    t = ChatTemplate.from_jinja("{{ bos_token }}|{{ eos_token }}|{{ strftime_now('%Y') }}|{{ tools }}|"
                                "{{ messages | length }}|{{ add_generation_prompt }}", stop=())
    year = datetime.datetime.now().year
    assert t.render(ONE) in (f"<|endoftext|>|<|endoftext|>|{y}|None|1|True" for y in (year, year + 1))


@pytest.mark.parametrize("source, match", [
    ("{% for m in messages %}{{ raise_exception('Only user messages, please') }}{% endfor %}",
     "chat template jinja: Only user messages, please"),
    ("{% for m in messages %}\n{{ m['content'] }", "syntax error at line 2"),
    ("{{ 1 + messages }}", "TypeError"),
    ("{{ messages.__class__ }}{{ ''.__class__.__mro__ }}", "unsafe|__class__|undefined"),
])
def test_template_errors_are_value_errors(source, match):
    with pytest.raises(ValueError, match=match):
        ChatTemplate.from_jinja(source, stop=()).render(ONE)


def test_a_template_of_your_own():
    t = ChatTemplate("mine", lambda messages, gen: "".join(f"[{m['role']}] {m['content']}\n" for m in messages)
                     + ("[assistant]" if gen else ""))
    assert t.render(ONE) == "[user] Good morrow!\n[assistant]" and t.stop == ("\n[user]",)
    with pytest.raises(TypeError, match="rendered a int"):
        ChatTemplate("bad", lambda messages, gen: 3, stop=()).render(ONE)
    with pytest.raises(TypeError, match="render must be a function"):
        ChatTemplate("bad", "text")
    for stop in ("x", [""], [1]):
        with pytest.raises(TypeError, match="stop must be"):
            ChatTemplate("bad", lambda m, g: "", stop=stop)
    with pytest.raises(TypeError, match="add_generation_prompt"):
        t.render(ONE, add_generation_prompt="yes")
    assert t.with_stop(None) == ["\n[user]"] and t.with_stop("x") == ["x", "\n[user]"]
    with pytest.raises(TypeError, match="stop must be"):
        t.with_stop(3)


@pytest.mark.parametrize("messages, match", [
    (None, "messages must be a non-empty list"),
    ([], "messages must be a non-empty list"),
    ("Hello", "messages must be a non-empty list"),
    ([["user", "hi"]], r"messages\[0\] must be an object"),
    ([{"role": "robot", "content": "x"}], r"messages\[0\]\.role must be one of 'system', 'developer', 'user', "
                                          r"'assistant', got 'robot'"),
    ([{"content": "x"}], r"messages\[0\]\.role must be one of .*got None"),
    ([{"role": "user"}], r"messages\[0\]\.content is missing"),
    ([{"role": "user", "content": None}], r"messages\[0\]\.content must be a string or a list of text parts"),
    ([{"role": "user", "content": 5}], r"messages\[0\]\.content must be a string"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.png"}}]}],
     r"messages\[0\]\.content\[0\]: images are not supported"),
    ([{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}],
     r"messages\[0\]\.content\[0\]: audio is not supported"),
    ([{"role": "user", "content": [{"type": "text"}]}], r"messages\[0\]\.content\[0\] must be \{"),
    ([{"role": "user", "content": [{"type": "text", "text": 3}]}], r"messages\[0\]\.content\[0\] must be \{"),
    ([{"role": "user", "content": ["hi"]}], r"messages\[0\]\.content\[0\] must be a text part"),
    (ONE + [{"role": "assistant", "content": "a"},
            {"role": "user", "content": [{"type": "text", "text": "c"}, {"type": ["x"]}]}],
     r"messages\[2\]\.content\[1\] must be a text part"),
    ([{"role": "tool", "content": "42", "tool_call_id": "1"}], r"messages\[0\]\.tool_call_id: tool calls"),
    ([{"role": "tool", "content": "42"}], r"messages\[0\]\.role: 'tool' messages are not supported"),
    (ONE + [{"role": "assistant", "content": None, "tool_calls": []}], r"messages\[1\]\.tool_calls: tool calls"),
    ([{"role": "user", "content": "x", "audio": {}}], r"messages\[0\]\.audio: audio is not supported"),
    ([{"role": "user", "content": "x", "name": "bob"}], r"messages\[0\]: unknown field 'name'"),
])
def test_bad_messages_are_value_errors_that_name_the_place(messages, match):
    for name in ("plain", "chatml"):
        with pytest.raises(ValueError, match=match):
            ChatTemplate.load(name).render(messages)


def test_where_a_template_comes_from(tmp_path, model):
    assert model.chat_template.name == "plain" and model.chat_template is model.chat_template
    assert ChatTemplate.from_model(model.path).name == "plain"
    f = tmp_path / "t.jinja"
    f.write_text(CHATML_JINJA, encoding="utf-8")
    for spec in (str(f), f):
        t = ChatTemplate.load(spec)
        assert t.name == str(f) and t.render(CONV) == ChatTemplate.load("chatml").render(CONV)
    assert ChatTemplate.load(t) is t
    with pytest.raises(ValueError, match="no chat template 'chatml2': give 'plain', 'chatml' or a .jinja file"):
        ChatTemplate.load("chatml2")
    with pytest.raises(TypeError, match="a chat template is"):
        ChatTemplate.load(3)
    with pytest.raises(TypeError, match="Jinja chat template is text"):
        ChatTemplate.from_jinja(b"{{ x }}")
    # a model folder with its own template
    folder = tmp_path / "model"
    shutil.copytree(model.path, folder)
    (folder / "chat_template.jinja").write_text(CHATML_JINJA, encoding="utf-8")
    own = pygpt.load(folder)
    assert own.chat_template.name == str(folder / "chat_template.jinja") and own.chat_template.stop == CHATML_STOP
    assert own.apply_chat_template(CONV) == ChatTemplate.load("chatml").render(CONV)


def test_jinja2_is_needed_only_for_jinja_templates(monkeypatch):
    monkeypatch.setitem(sys.modules, "jinja2", None)  # as if not installed
    with pytest.raises(ImportError, match="pip install jinja2"):
        ChatTemplate.from_jinja(CHATML_JINJA)
    assert ChatTemplate.load("plain").render(ONE) == "User: Good morrow!\nAssistant:"


# -- Model.apply_chat_template and Model.chat ------------------------------------------------------


def test_apply_chat_template(model):
    plain = ChatTemplate.load("plain")
    assert model.apply_chat_template(CONV) == plain.render(CONV)
    assert model.apply_chat_template(CONV, add_generation_prompt=False) == plain.render(CONV, False)
    assert model.apply_chat_template(ONE, template="chatml") == ChatTemplate.load("chatml").render(ONE)
    with pytest.raises(ValueError, match=r"messages\[0\]\.role"):
        model.apply_chat_template([{"role": "bot", "content": "x"}])


@pytest.mark.parametrize("template", [None, "chatml"])
def test_chat_is_generate_on_the_rendered_prompt(model, template):
    t = model.chat_template if template is None else ChatTemplate.load(template)
    prompt = t.render(CONV)
    out = model.chat(CONV, template=template, max_new_tokens=30)
    want = model.generate(prompt, max_new_tokens=30, stop=list(t.stop))
    assert out.tokens == want.tokens and out.finish_reason == want.finish_reason
    assert out.text == t.reply(want.text) and out.prompt_tokens == want.prompt_tokens
    if template is None:
        assert want.text != out.text == want.text.lstrip()  # the transcript's space is not the reply's
    # the caller's stop strings join the template's; other options are generate's
    cut = want.text.lstrip()[4:7]
    out = model.chat(CONV, template=template, max_new_tokens=30, stop=cut, logprobs=True)
    want = model.generate(prompt, max_new_tokens=30, stop=[cut, *t.stop], logprobs=True)
    assert out.finish_reason == "stop" and out.text == t.reply(want.text) and out.logprobs == want.logprobs


def test_a_template_stop_string_ends_the_reply(model):
    plain = ChatTemplate.load("plain")
    whole = model.chat(CONV, max_new_tokens=30).text
    end = whole[6:10]
    cut = ChatTemplate("cut", lambda messages, gen: plain.render(messages, gen), stop=[end], lstrip_reply=True)
    out = model.chat(CONV, template=cut, max_new_tokens=30)
    assert out.finish_reason == "stop" and out.text == whole[:whole.index(end)]


def test_chat_samples_and_refuses_echo(model):
    outs = model.chat(ONE, max_new_tokens=12, temperature=1.0, seed=4, num_return_sequences=2)
    want = model.generate(model.apply_chat_template(ONE), max_new_tokens=12, temperature=1.0, seed=4,
                          num_return_sequences=2, stop=list(PLAIN_STOP))
    assert [o.text for o in outs] == [w.text.lstrip() for w in want]
    with pytest.raises(ValueError, match="echo"):
        model.chat(ONE, echo=True)
    with pytest.raises(TypeError, match="stop must be"):
        model.chat(ONE, stop=5)


@pytest.mark.parametrize("template", [None, "chatml"])
def test_chat_stream_is_chat(model, template):
    want = model.chat(CONV, template=template, max_new_tokens=30, temperature=0.9, seed=7)
    stream = model.chat_stream(CONV, template=template, max_new_tokens=30, temperature=0.9, seed=7)
    pieces = list(stream)
    assert "".join(pieces) == want.text and all(pieces)
    assert dataclasses.replace(stream.output, timings=want.timings) == want
    if template is None:  # plain: the reply's leading space is not streamed either
        assert not pieces[0][0].isspace()
    with pytest.raises(ValueError, match="echo"):
        model.chat_stream(ONE, echo=True)
    with pytest.raises(ValueError, match="one sequence"):
        model.chat_stream(ONE, num_return_sequences=2)


GENERATION_TAG_JINJA = ("{% for m in messages %}{% if m['role'] == 'assistant' %}{{ 'Bot: ' }}{% generation %}"
                        "{{ m['content'] }}{% endgeneration %}{{ '\n' }}{% else %}{{ m['role'] + ': ' + m['content'] + '\n' }}"
                        "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'Bot:' }}{% endif %}")


def test_the_generation_tag_renders_its_body():
    """transformers' {% generation %} blocks (for training masks) render as their contents."""
    convo = CONV + [{"role": "assistant", "content": "I am."}, {"role": "user", "content": "Truly?"}]
    for gen in (True, False):
        assert ChatTemplate.from_jinja(GENERATION_TAG_JINJA).render(convo, gen) == \
            hf_render(GENERATION_TAG_JINJA, convo, gen)


PREFILLED = CONV + [{"role": "assistant", "content": "Sure, here "}]


@pytest.mark.parametrize("jinja", ["CHATML_JINJA", "LLAMA2_JINJA", "ZEPHYR_JINJA"])
def test_continue_final_message_is_transformers(jinja):
    source = globals()[jinja]
    got = ChatTemplate.from_jinja(source).render(PREFILLED, continue_final_message=True)
    assert got == hf_render(source, PREFILLED, False, continue_final_message=True)
    assert got.rstrip().endswith("Sure, here")


def test_continue_final_message(model):
    plain = ChatTemplate.load("plain")
    prompt = plain.render(PREFILLED, continue_final_message=True)
    assert prompt == plain.render(CONV) + " Sure, here"  # the plain template strips the message's last space
    assert model.apply_chat_template(PREFILLED, continue_final_message=True) == prompt
    with pytest.raises(ValueError, match="do not go together"):
        plain.render(PREFILLED, add_generation_prompt=True, continue_final_message=True)
    with pytest.raises(TypeError, match="continue_final_message"):
        plain.render(PREFILLED, continue_final_message=1)
    dropping = ChatTemplate("drop", lambda messages, gen: "no text here")
    with pytest.raises(ValueError, match="no place to continue"):
        dropping.render(PREFILLED, continue_final_message=True)
    # chat() goes on with the message: the reply keeps its leading space (it may be the reply's)
    out = model.chat(PREFILLED, continue_final_message=True, max_new_tokens=12)
    want = model.generate(prompt, max_new_tokens=12, stop=list(PLAIN_STOP))
    assert out.tokens == want.tokens and out.text == want.text
    assert "".join(model.chat_stream(PREFILLED, continue_final_message=True, max_new_tokens=12)) == want.text
    # and so does the server
    with serving(model) as url:
        r = json.loads(post(url, {"messages": PREFILLED, "continue_final_message": True, "max_tokens": 12,
                                  "temperature": 0}, path=CHAT)[1])
        assert r["choices"][0]["message"]["content"] == want.text
        status, text = post(url, {"messages": PREFILLED, "continue_final_message": "yes"}, path=CHAT)
        assert status == 400 and "continue_final_message" in text


def test_batcher_chat_reuses_the_conversation_so_far(model):
    """Batcher.chat / chat_stream: the same replies as model.chat; with a prefix cache, the next
    turn's prompt (the conversation so far and the new message) runs only its new tokens."""
    messages = list(CONV)
    with pygpt.Batcher(model, prefix_cache=2) as b:
        first = b.chat(messages, max_new_tokens=10)
        assert first.tokens == model.chat(messages, max_new_tokens=10).tokens
        messages += [{"role": "assistant", "content": first.text}, {"role": "user", "content": "And then?"}]
        stream = b.chat_stream(messages, max_new_tokens=10)
        text = "".join(stream)
    want = model.chat(messages, max_new_tokens=10)
    assert text == want.text and stream.output.tokens == want.tokens
    assert stream.output.timings.cached_tokens > len(model.tokenizer.encode(model.apply_chat_template(CONV))) // 2


def test_async_chat(model):
    import asyncio

    want = model.chat(CONV, max_new_tokens=20, temperature=0.8, seed=2)

    async def main():
        out = await model.achat(CONV, max_new_tokens=20, temperature=0.8, seed=2)
        stream = model.achat_stream(CONV, max_new_tokens=20, temperature=0.8, seed=2)
        pieces = [p async for p in stream]
        return out, pieces, stream.output

    out, pieces, streamed = asyncio.run(main())
    assert out.tokens == want.tokens and out.text == want.text
    assert "".join(pieces) == want.text and not pieces[0][0].isspace()
    assert streamed.tokens == want.tokens and streamed.text == want.text


# -- the converter ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_folder(hf_model_factory):
    pytest.importorskip("torch")
    return hf_model_factory("tiny")[1]


def converted(hf_folder, tmp_path, **files):
    """The pygpt folder converted from a copy of hf_folder with files {name: text} added."""
    src = tmp_path / "hf"
    shutil.copytree(hf_folder, src)
    for name, text in files.items():
        (src / name).write_text(text, encoding="utf-8")
    return pygpt.convert.convert(str(src), str(tmp_path / "out"), tokenizer=GPT2_TOKENIZER)


@pytest.mark.parametrize("files", [
    {"tokenizer_config.json": json.dumps({"chat_template": CHATML_JINJA, "model_max_length": 64})},
    {"tokenizer_config.json": json.dumps({"chat_template": [{"name": "tool_use", "template": LLAMA2_JINJA},
                                                            {"name": "default", "template": CHATML_JINJA}]})},
    {"chat_template.jinja": CHATML_JINJA,  # transformers' newer layout, preferred over the config's
     "tokenizer_config.json": json.dumps({"chat_template": LLAMA2_JINJA})},
], ids=["config-string", "config-list", "jinja-file"])
def test_the_converter_keeps_a_chat_template(hf_folder, tmp_path, files, pygpt_cmd):
    out = converted(hf_folder, tmp_path, **files)
    with open(os.path.join(out, "chat_template.jinja"), encoding="utf-8") as f:
        assert f.read() == CHATML_JINJA
    info = subprocess.run(pygpt_cmd + ["info", out], capture_output=True, text=True, timeout=120).stdout
    assert re.search(r"^chat template +chat_template\.jinja$", info, re.M), info
    model = pygpt.load(out)
    assert model.chat_template.stop == CHATML_STOP
    assert model.apply_chat_template(CONV) == hf_render(CHATML_JINJA, CONV, True)


def test_the_converter_without_a_chat_template(hf_folder, tmp_path, capsys):
    os.makedirs(tmp_path / "out")
    (tmp_path / "out" / "chat_template.jinja").write_text(CHATML_JINJA)  # an earlier conversion's
    out = converted(hf_folder, tmp_path, **{"tokenizer_config.json": json.dumps({"model_max_length": 64})})
    assert not os.path.exists(os.path.join(out, "chat_template.jinja"))
    assert pygpt.load(out).chat_template.name == "plain"
    # named templates without a default: none is kept (the converter says so when verbose)
    src = tmp_path / "hf"
    (src / "tokenizer_config.json").write_text(json.dumps({"chat_template": [{"name": "rag", "template": "x"}]}))
    pygpt.convert.convert(str(src), str(tmp_path / "out2"), tokenizer=GPT2_TOKENIZER, verbose=True)
    assert not os.path.exists(tmp_path / "out2" / "chat_template.jinja")
    assert "no \"default\" one" in capsys.readouterr().out
    for bad in ("{not json", json.dumps({"chat_template": 3}), json.dumps({"chat_template": [{"name": "x"}]}),
                json.dumps([1])):
        (src / "tokenizer_config.json").write_text(bad)
        with pytest.raises(pygpt.convert.ConversionError, match="tokenizer_config.json"):
            pygpt.convert.convert(str(src), str(tmp_path / "out3"), tokenizer=GPT2_TOKENIZER)
    assert not os.path.exists(tmp_path / "out3")  # refused before anything is written


# -- POST /v1/chat/completions ---------------------------------------------------------------------


def chat(url, body):
    status, text = post(url, body, path=CHAT)
    assert status == 200, text
    return json.loads(text)


def test_a_chat_completion_is_model_chat(url, model):
    r = chat(url, {"messages": CONV, "max_tokens": 20, "temperature": 0, "model": "x", "user": "u"})
    want = model.chat(CONV, max_new_tokens=20)
    assert r["object"] == "chat.completion" and r["id"].startswith("chatcmpl-") and r["model"] == "bard"
    assert isinstance(r["created"], int)
    assert r["choices"] == [{"index": 0, "message": {"role": "assistant", "content": want.text}, "logprobs": None,
                             "finish_reason": "length" if want.finish_reason == "length" else "stop",
                             "stop_reason": want.stop_reason}]
    cached = r["usage"].pop("prompt_tokens_details")["cached_tokens"]
    n_prompt = len(want.prompt_tokens)
    assert r["usage"] == {"prompt_tokens": n_prompt, "completion_tokens": len(want.tokens),
                          "total_tokens": n_prompt + len(want.tokens)}
    assert 0 <= cached < n_prompt
    # max_completion_tokens is max_tokens; without either, the reply may fill the context
    r = chat(url, {"messages": ONE, "max_completion_tokens": 5, "temperature": 0})
    assert r["usage"]["completion_tokens"] == 5 and r["choices"][0]["finish_reason"] == "length"
    r = chat(url, {"messages": ONE, "temperature": 0, "ignore_eos": True})
    assert r["usage"]["total_tokens"] == model.config["n_ctx"] and r["choices"][0]["finish_reason"] == "length"


def test_a_streamed_chat_completion_is_the_same_reply(url, model):
    body = {"messages": CONV, "max_tokens": 25, "temperature": 0}
    whole = chat(url, body)
    status, text = post(url, {**body, "stream": True, "stream_options": {"include_usage": True}}, path=CHAT)
    assert status == 200
    events = sse_events(text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    first, *deltas, last, usage = chunks
    assert first["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                 "finish_reason": None}]
    assert all(c["choices"][0]["finish_reason"] is None and set(c["choices"][0]["delta"]) == {"content"}
               for c in deltas)
    assert "".join(c["choices"][0]["delta"]["content"] for c in deltas) == whole["choices"][0]["message"]["content"]
    assert not deltas[0]["choices"][0]["delta"]["content"][0].isspace()  # the transcript's space is not sent
    assert last["choices"] == [{"index": 0, "delta": {}, "logprobs": None,
                                "finish_reason": whole["choices"][0]["finish_reason"],
                                "stop_reason": whole["choices"][0]["stop_reason"]}]
    assert usage["choices"] == [] and all(c["usage"] is None for c in chunks[:-1])
    for u in (usage["usage"], whole["usage"]):
        u.pop("prompt_tokens_details")
    assert usage["usage"] == whole["usage"]


def test_several_chat_choices(url, model):
    body = {"messages": ONE, "max_tokens": 10, "temperature": 1.0, "seed": 11, "n": 2, "top_k": 40}
    r = chat(url, body)
    want = model.chat(ONE, max_new_tokens=10, temperature=1.0, seed=11, num_return_sequences=2, top_k=40)
    assert [c["message"]["content"] for c in r["choices"]] == [o.text for o in want]
    assert [c["index"] for c in r["choices"]] == [0, 1]
    assert r["usage"]["completion_tokens"] == sum(len(o.tokens) for o in want)
    status, text = post(url, {**body, "stream": True}, path=CHAT)
    chunks = sse_events(text)[:-1]
    for i, o in enumerate(want):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == i]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert "".join(c["delta"].get("content", "") for c in mine) == o.text
        assert mine[-1]["finish_reason"] is not None


def test_chat_logprobs_in_openais_form(url, model):
    body = {"messages": CONV, "max_tokens": 8, "temperature": 0, "logprobs": True, "top_logprobs": 3}
    r = chat(url, body)
    want = model.chat(CONV, max_new_tokens=8, logprobs=True, top_logprobs=3)
    content = r["choices"][0]["logprobs"]["content"]
    tok = model.tokenizer
    assert [e["token"] for e in content] == [tok.decode([t]) for t in want.tokens]
    assert [e["bytes"] for e in content] == [list(tok.token_bytes(t)) for t in want.tokens]
    assert [e["logprob"] for e in content] == pytest.approx(want.logprobs, abs=1e-6)
    for e, row in zip(content, want.top_logprobs):
        assert [(a["token"], a["bytes"]) for a in e["top_logprobs"]] == [(tok.decode([t]), list(tok.token_bytes(t)))
                                                                         for t, _ in row]
        assert [a["logprob"] for a in e["top_logprobs"]] == pytest.approx([lp for _, lp in row], abs=1e-6)
    # streamed: each chunk carries its tokens' entries, which join to the same list
    chunks = sse_events(post(url, {**body, "stream": True}, path=CHAT)[1])[:-1]
    joined = [e for c in chunks if c["choices"][0]["logprobs"] for e in c["choices"][0]["logprobs"]["content"]]
    assert joined == content
    # logprobs alone: no alternatives
    r = chat(url, {"messages": ONE, "max_tokens": 3, "temperature": 0, "logprobs": True})
    assert [e["top_logprobs"] for e in r["choices"][0]["logprobs"]["content"]] == [[], [], []]


def test_a_stop_string_ends_the_turn(url, model):
    whole = model.chat(CONV, max_new_tokens=30).text
    stop = whole[6:10]
    r = chat(url, {"messages": CONV, "max_tokens": 30, "temperature": 0, "stop": [stop]})
    assert r["choices"][0]["message"]["content"] == whole[:whole.index(stop)]
    assert r["choices"][0]["finish_reason"] == "stop"
    # the template's own stop strings, through a server with that template
    plain = ChatTemplate.load("plain")
    cut = ChatTemplate("cut", lambda messages, gen: plain.render(messages, gen), stop=[stop], lstrip_reply=True)
    with serving(model, chat_template=cut) as other:
        r = chat(other, {"messages": CONV, "max_tokens": 30, "temperature": 0})
        assert r["choices"][0]["message"]["content"] == whole[:whole.index(stop)]
        chunks = sse_events(post(other, {"messages": CONV, "max_tokens": 30, "temperature": 0, "stream": True},
                                 path=CHAT)[1])[:-1]
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == whole[:whole.index(stop)]
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_constrained_chat_replies(url, model):
    grammar = 'root ::= "yes" | "no"'
    r = chat(url, {"messages": ONE, "max_tokens": 5, "temperature": 0, "grammar": grammar})
    assert r["choices"][0]["message"]["content"] == model.chat(ONE, max_new_tokens=5, grammar=grammar).text
    assert r["choices"][0]["message"]["content"] in ("yes", "no")
    r = chat(url, {"messages": ONE, "max_tokens": 10, "seed": 1, "response_format": {"type": "json_object"}})
    assert pygpt.Grammar.json().is_prefix(r["choices"][0]["message"]["content"])


def test_a_jinja_template_that_refuses_messages_is_a_400(model):
    refuses = ChatTemplate.from_jinja("{% for m in messages %}{% if m['role'] == 'system' %}"
                                      "{{ raise_exception('no system messages') }}{% endif %}"
                                      "{{ m['content'] }}\n{% endfor %}")
    with serving(model, chat_template=refuses) as other:
        status, text = post(other, {"messages": CONV}, path=CHAT)
        assert status == 400 and "no system messages" in json.loads(text)["error"]["message"]
        assert chat(other, {"messages": ONE, "max_tokens": 3})["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize("body, match", [
    ({"messages": ONE, "tools": [{"type": "function", "function": {"name": "f"}}]}, "'tools': tool and function"),
    ({"messages": ONE, "tool_choice": "auto"}, "'tool_choice': tool"),
    ({"messages": ONE, "functions": [{"name": "f"}]}, "'functions': tool"),
    ({"messages": ONE, "function_call": "auto"}, "'function_call': tool"),
    ({"messages": ONE, "audio": {"voice": "alloy"}}, "'audio': audio output is not supported"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     r"messages\[0\]\.content\[0\]: images are not supported"),
    ({"messages": [{"role": "tool", "content": "1"}]}, "'tool' messages are not supported"),
    ({}, "messages must be a non-empty list"),
    ({"messages": []}, "messages must be a non-empty list"),
    ({"messages": [{"role": "bot", "content": "x"}]}, r"messages\[0\]\.role must be one of"),
    ({"messages": ONE, "prompt": "x"}, "unknown field 'prompt'"),
    ({"messages": ONE, "echo": True}, "unknown field 'echo'"),
    ({"messages": ONE, "frobnicate": 1}, "unknown field 'frobnicate'"),
    ({"messages": ONE, "logprobs": 2}, "'logprobs' must be true or false"),
    ({"messages": ONE, "top_logprobs": 2}, "'top_logprobs' needs 'logprobs': true"),
    ({"messages": ONE, "logprobs": True, "top_logprobs": 21}, "'top_logprobs' must be an integer from 0 to 20"),
    ({"messages": ONE, "max_tokens": 4, "max_completion_tokens": 5}, "give one of 'max_tokens'"),
    ({"messages": ONE, "max_completion_tokens": "many"}, "max_new_tokens"),
    ({"messages": ONE, "stream": "yes"}, "'stream' must be true or false"),
    ({"messages": ONE, "stream_options": {"include_usage": True}}, "'stream_options' goes with 'stream': true"),
    ({"messages": ONE, "stream": True, "stream_options": {"x": 1}}, "'stream_options' must be"),
    ({"messages": ONE, "stream": True, "stream_options": {"include_usage": 1}}, "'include_usage' must be true"),
    ({"messages": ONE, "temperature": -1}, "temperature"),
    ({"messages": ONE, "stop": 5}, "stop must be"),
    ({"messages": ONE, "n": 10 ** 7}, "memory"),
    ({"messages": ONE, "grammar": "root ::= ("}, "line 1"),
    ([1, 2], "JSON object"),
])
def test_bad_chat_requests_are_400_with_a_message(url, body, match):
    status, text = post(url, body, path=CHAT)
    assert status == 400, text
    err = json.loads(text)["error"]
    assert err["type"] == "invalid_request_error"
    assert re.search(match, err["message"]), err["message"]


def test_serve_chat_template_option(pygpt_cmd, model):
    p = subprocess.Popen(pygpt_cmd + ["serve", "--port", "0", "--chat-template", "chatml"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert "/v1/chat/completions" in line and "(chat template: chatml)" in line, line + p.stderr.read()
        base = "http://" + line.split("http://", 1)[1].split("/v1/", 1)[0]
        r = chat(base, {"messages": ONE, "max_tokens": 6, "temperature": 0})
        assert r["choices"][0]["message"]["content"] == model.chat(ONE, template="chatml", max_new_tokens=6).text
    finally:
        p.terminate()
        p.wait(timeout=30)
    bad = subprocess.run(pygpt_cmd + ["serve", "--port", "0", "--chat-template", "nope"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 1 and "no chat template 'nope'" in bad.stderr
