"""Grammar.from_regex: the texts re.fullmatch accepts (\\d \\w \\s as ASCII classes), checked
against Python's re on random strings and on generated text; refusals; CLI and server."""

import json
import random
import re
import subprocess
import sys

import pytest

import pygpt
from conftest import post, serving

# (pattern, a text it matches)
PATTERNS = [
    (r"\d{3}-\d{4}", "555-1234"),
    (r"(yes|no|maybe)", "maybe"),
    (r"^[A-Z][a-z]+( [A-Z][a-z]+)*$", "Ada Lovelace"),
    (r"\w+@\w+\.(com|org)", "a_1@b.org"),
    (r"a{2,4}b?c*", "aaabcc"),
    (r"[^,\n]*,[^,\n]*", "x,\u03b1"),
    (r"(?s:.)x.", "\nxx"),
    (r"[\Da-c]+\D?", "b-x"),
    (r"\s*\S+\s*", " a\t"),
    (r"[α-ω]+\.?", "\u03b1\u03c9."),
    (r"\\\.\t\"\(\)\[\]\{\}\*\+\?\|\$\^", "\\.\t\"()[]{}*+?|$^"),
    (r"(?x) a  b+  # a comment", "abb"),
    (r"(?P<year>19|20)\d\d(?:-0[1-9])?", "2024-05"),
    (r"(ab|a)(bc|c)*?", "abcc"),
    (r"-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?", "-1.5e3"),
    (r"(a|^b)c", "bc"),
    (r"(a?b?)+c", "bac"),     # repetitions of what can be empty
    (r"(a*){2,3}x", "aax"),
    (r"((a?)?|b)*", "abba"),
    (r"(\s*)*x(){3}", " x"),
    (r"(?i)yes|n[o-q]|[^a]z", "YeS"),  # IGNORECASE: ASCII letters in both cases, as re with re.ASCII
    (r"a(?i:b[c-e]x)[^y](?-i:z)", "aBdXaz"),
    (r"(?i)[^\W_a-c]+\.[A-Z]", "XYZ.q"),
    (r"", ""),
]


def candidates(pattern: str, n: int, seed: int) -> list:
    """Random strings over the pattern's own characters and some others, short and long."""
    rng = random.Random(seed)
    alphabet = sorted(set(pattern) | set("ab019-.,@ \n\txyzABXYZ\u03b1\u03b2_"))
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 10))) for _ in range(n)]


@pytest.mark.parametrize("pattern, example", PATTERNS)
def test_the_grammar_accepts_what_re_accepts(pattern, example):
    g = pygpt.Grammar.from_regex(pattern)
    assert re.fullmatch(pattern, example, re.ASCII) and g.matches(example)
    for text in candidates(pattern, 3000, seed=len(pattern)) + [example + "x", example[:-1]]:
        assert g.matches(text) == bool(re.fullmatch(pattern, text, re.ASCII)), text


@pytest.mark.parametrize("pattern", [r"\d{3}-\d{4}", r"(yes|no|maybe)", r"\w{1,6}@\w{1,6}\.(com|org)",
                                     r"-?(0|[1-9]\d*)(\.\d+)?", r"[α-ω]{2,5}"])
def test_generated_text_matches(pattern):
    m = pygpt.load()
    g = pygpt.Grammar.from_regex(pattern)
    eot = m.tokenizer.eot_id
    ended = 0
    for seed in range(8):
        out = m.generate("The answer is ", grammar=g, temperature=1.0, seed=seed, max_new_tokens=40,
                         logit_bias={eot: 8.0})
        assert g.is_prefix(out.text)
        if out.finish_reason != "length":
            ended += 1
            assert re.fullmatch(pattern, out.text, re.ASCII), out.text
    assert ended >= 4


@pytest.mark.parametrize("pattern, match", [
    (r"(a)\1", "backreferences"),
    (r"a(?=b)", "lookahead and lookbehind"),
    (r"(?<!a)b", "lookahead and lookbehind"),
    (r"\bword", r"\\b and \\B"),
    (r"a^b", "anchors"),
    (r"a(b|^c)", "anchors"),
    (r"(^a)*", "anchors"),
    (r"(?m)a", "MULTILINE"),
    # Python's re reads these from 3.11; before, they are not regular expressions at all
    (r"a*+", "possessive" if sys.version_info >= (3, 11) else "not a valid regular expression"),
    (r"(?>a)", "atomic" if sys.version_info >= (3, 11) else "not a valid regular expression"),
    (r"(a)?(?(1)b|c)", "conditional"),
    (r"(", "not a valid regular expression"),
    (r"[^\s\S]", "matches no character"),
])
def test_what_a_grammar_cannot_say_is_refused(pattern, match):
    with pytest.raises(ValueError, match=match):
        pygpt.Grammar.from_regex(pattern)


def test_anchors_at_the_ends_and_bad_types():
    for pattern in (r"^ab$", r"\Aab\Z", r"(^ab$)", r"^(ab|cd)$", r"^a|b$"):
        g = pygpt.Grammar.from_regex(pattern)
        for text in ("ab", "cd", "a", "b", "ab\n", ""):
            assert g.matches(text) == bool(re.fullmatch(pattern, text, re.ASCII)), (pattern, text)
    with pytest.raises(TypeError, match="a regular expression is a str"):
        pygpt.Grammar.from_regex(b"a")


def test_command_line_and_server(pygpt_cmd):
    pattern = r"\d{2}:\d{2}"
    r = subprocess.run(pygpt_cmd + ["generate", "It is ", "--regex", pattern, "-n", "10", "--seed", "2"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and re.fullmatch(pattern, r.stdout), r.stdout + r.stderr
    r = subprocess.run(pygpt_cmd + ["generate", "x", "--regex", "(a)\\1"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.strip() == "pygpt: error: --regex: the pattern uses backreferences, " \
                                                     "which a grammar cannot say"
    with serving(pygpt.load()) as url:
        status, body = post(url, {"prompt": "It is ", "regex": pattern, "max_tokens": 10, "seed": 3})
        assert status == 200 and re.fullmatch(pattern, json.loads(body)["choices"][0]["text"])
        status, body = post(url, {"messages": [{"role": "user", "content": "Time?"}], "regex": pattern,
                                  "max_tokens": 10, "seed": 3}, path="/v1/chat/completions")
        assert status == 200 and re.fullmatch(pattern, json.loads(body)["choices"][0]["message"]["content"])
        for bad, message in (({"regex": "(a)\\1"}, "backreferences"), ({"regex": 3}, "'regex' must be"),
                             ({"regex": "a", "grammar": 'root ::= "a"'}, "give one of")):
            status, body = post(url, {"prompt": "x", **bad})
            assert status == 400 and message in json.loads(body)["error"]["message"]


def random_regex(rng: random.Random, depth: int = 0) -> str:
    """A random pattern of the supported constructs, groups nested up to 3 deep. No unbounded
    repetition of a group that holds one: Python's re can take minutes to fail such a match."""
    atoms = ["a", "b", "\\.", "\\d", "\\w", "\\s", "\\D", ".", "[a-c]", "[^a]", "[\\d_]", "[^\\s,]", "\\n", "x", "B",
             "[^B-X]"]
    bounded = ["", "", "?", "{2}", "{1,3}", "{0,2}?"]
    parts = []
    for _ in range(rng.randint(1, 3)):
        if rng.random() < 0.25 and depth < 3:  # a group, perhaps with its own flags
            inner = random_regex(rng, depth + 1)
            if rng.random() < 0.5:
                inner += "|" + random_regex(rng, depth + 1)
            atom = rng.choice(["(", "(?:", "(?s:", "(?i:", "(?-i:"]) + inner + ")"
            unbounded = not any(q in inner for q in ("*", "+", ",}"))
        else:
            atom, unbounded = rng.choice(atoms), True
        parts.append(atom + rng.choice(bounded + (["*", "+", "*?", "{2,}"] if unbounded else [])))
    return "".join(parts)


def test_random_patterns_agree_with_re():
    """200 random patterns: each compiles, and agrees with re.fullmatch on 300 random strings."""
    rng = random.Random(7)
    for _ in range(200):
        pattern = ("(?i)" if rng.random() < 0.25 else "") + random_regex(rng)
        g = pygpt.Grammar.from_regex(pattern)
        for text in candidates(pattern, 300, seed=rng.randrange(10 ** 6)):
            assert g.matches(text) == bool(re.fullmatch(pattern, text, re.ASCII)), (pattern, text)
