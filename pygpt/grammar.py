"""Grammars that constrain generated text: llama.cpp's GBNF, and JSON schemas.

    g = pygpt.Grammar('root ::= "yes" | "no"')
    pygpt.generate(model, "Is it? ", grammar=g)
    pygpt.generate(model, "A person: ", grammar=pygpt.Grammar.from_json_schema(schema))

The dialect is llama.cpp's GBNF (its grammars/README.md): rules ``name ::= ...`` with
alternatives ``|``, literals ``"..."``, character classes ``[a-z]`` and ``[^...]``, ``.`` (any
character), groups ``( ... )`` and the repetitions ``*``, ``+``, ``?``, ``{m}``, ``{m,}``,
``{m,n}``; ``#`` starts a comment; the start rule is ``root``. Escapes: ``\\n \\r \\t \\\\ \\"
\\[ \\] \\xHH \\uHHHH \\UHHHHHHHH``.

This module parses the text and compiles it for the C++ matcher (csrc/grammar.h), which works on
bytes, as tokens are bytes: a character class becomes the alternatives of its UTF-8 encodings, a
literal its bytes, a repetition a rule. Generated text is then always valid UTF-8 wherever the
grammar says characters.
"""

from __future__ import annotations

import json
from typing import Dict, List, Optional, Tuple

from . import _core

__all__ = ["Grammar"]

_MAX_CODE_POINT = 0x10FFFF
_SURROGATES = (0xD800, 0xDFFF)
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"', "[": "[", "]": "]"}
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_MAX_REPEAT = 10000   # {m,n} bounds; each repetition is a rule
_MAX_ELEMENTS = 2_000_000
_MAX_NESTING = 100    # parentheses inside parentheses


# --- code points to UTF-8 byte ranges ----------------------------------------------------------

def _utf8(cp: int) -> bytes:
    return chr(cp).encode("utf-8", "surrogatepass")


def _utf8_sequences(lo: int, hi: int) -> List[List[Tuple[int, int]]]:
    """The code points lo..hi (one UTF-8 length, no surrogates) as byte-range sequences: each a
    product of ranges, one per byte, as regex engines compile character classes."""
    n = len(_utf8(lo))
    for i in range(1, n):
        m = (1 << (6 * i)) - 1   # the bits of the last i continuation bytes
        if lo & ~m != hi & ~m:
            if lo & m:
                return _utf8_sequences(lo, lo | m) + _utf8_sequences((lo | m) + 1, hi)
            if hi & m != m:
                return _utf8_sequences(lo, (hi & ~m) - 1) + _utf8_sequences(hi & ~m, hi)
    a, b = _utf8(lo), _utf8(hi)
    return [[(a[k], b[k]) for k in range(n)]]


def _class_sequences(ranges: List[Tuple[int, int]]) -> List[List[Tuple[int, int]]]:
    """Code point ranges (sorted, disjoint, no surrogates) as byte-range sequences."""
    out = []
    for lo, hi in ranges:
        for a, b in ((0, 0x7F), (0x80, 0x7FF), (0x800, 0xFFFF), (0x10000, _MAX_CODE_POINT)):
            x, y = max(lo, a), min(hi, b)
            if x <= y:
                out.extend(_utf8_sequences(x, y))
    return out


def _normalise(ranges: List[Tuple[int, int]], negate: bool) -> List[Tuple[int, int]]:
    """Sorted disjoint ranges of scalar values (surrogates removed), complemented if negate."""
    merged: List[List[int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    if negate:
        comp, at = [], 0
        for lo, hi in merged:
            if lo > at:
                comp.append([at, lo - 1])
            at = hi + 1
        if at <= _MAX_CODE_POINT:
            comp.append([at, _MAX_CODE_POINT])
        merged = comp
    out = []
    for lo, hi in merged:   # cut the surrogates out
        if lo < _SURROGATES[0]:
            out.append((lo, min(hi, _SURROGATES[0] - 1)))
        if hi > _SURROGATES[1]:
            out.append((max(lo, _SURROGATES[1] + 1), hi))
    return out


def _byte_range(lo: int, hi: int) -> int:
    """Bytes lo..hi as a 256-bit set (bit b: byte b)."""
    return ((1 << (hi + 1)) - 1) ^ ((1 << lo) - 1)


# --- the compiled form ---------------------------------------------------------------------------

class _Rules:
    """Rules under construction: rules[r] = alternatives, each a list of elements (e >= 0: byte
    set e, e < 0: rule -e-1), byte sets as 256-bit ints."""

    def __init__(self):
        self.names: List[str] = []
        self.rules: List[Optional[list]] = []
        self.by_name: Dict[str, int] = {}
        self.sets: List[int] = []
        self.set_index: Dict[int, int] = {}
        self.classes: Dict[tuple, int] = {}
        self.n_elements = 0

    def rule(self, name: str) -> int:
        if name not in self.by_name:
            self.by_name[name] = len(self.rules)
            self.names.append(name)
            self.rules.append(None)
        return self.by_name[name]

    def new_rule(self, base: str, alternatives: list) -> int:
        r = self.rule(self.fresh_name(base))
        self.define(r, alternatives)
        return -(r + 1)

    def fresh_name(self, base: str) -> str:
        """A name for a rule made by compiling rule base ('#' is never in a rule's name)."""
        k = 1
        while f"{base}#{k}" in self.by_name:
            k += 1
        return f"{base}#{k}"

    def define(self, r: int, alternatives: list) -> None:
        self.rules[r] = alternatives
        self.n_elements += sum(len(a) + 1 for a in alternatives)
        if self.n_elements > _MAX_ELEMENTS:
            raise ValueError(f"the grammar is too large (over {_MAX_ELEMENTS:,} elements once compiled)")

    def byte_set(self, lo: int, hi: int) -> int:
        return self.bits(_byte_range(lo, hi))

    def bits(self, bits: int) -> int:
        if bits not in self.set_index:
            self.set_index[bits] = len(self.sets)
            self.sets.append(bits)
        return self.set_index[bits]

    def char_class(self, base: str, ranges: List[Tuple[int, int]]) -> int:
        """One element matching one character of the ranges (normalised)."""
        key = tuple(ranges)
        if key in self.classes:
            return self.classes[key]
        seqs = _class_sequences(ranges)
        single = 0
        tails: Dict[tuple, int] = {}   # sequences with the same tail share one first-byte set
        for seq in seqs:
            bits = _byte_range(*seq[0])
            if len(seq) == 1:
                single |= bits
            else:
                tails[tuple(seq[1:])] = tails.get(tuple(seq[1:]), 0) | bits
        if not tails:
            if not single:
                raise ValueError("a character class that matches no character")
            element = self.bits(single)
        else:
            alternatives = [[self.bits(single)]] if single else []
            for tail, first in tails.items():
                alternatives.append([self.bits(first)] + [self.byte_set(lo, hi) for lo, hi in tail])
            element = self.new_rule(base, alternatives)
        self.classes[key] = element
        return element


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0
        self.out = _Rules()
        self.refs: Dict[str, int] = {}   # rule name -> position of its first use
        self.defined: Dict[str, int] = {}
        self.depth = 0

    # where we are, for messages
    def where(self, pos: Optional[int] = None) -> str:
        pos = self.pos if pos is None else pos
        line = self.text.count("\n", 0, pos) + 1
        col = pos - (self.text.rfind("\n", 0, pos) + 1) + 1
        return f"line {line}, column {col}"

    def fail(self, what: str, pos: Optional[int] = None):
        raise ValueError(f"grammar: {what} at {self.where(pos)}")

    def skip(self) -> None:
        t, n = self.text, len(self.text)
        while self.pos < n:
            c = t[self.pos]
            if c in " \t\r\n":
                self.pos += 1
            elif c == "#":
                end = t.find("\n", self.pos)
                self.pos = n if end < 0 else end + 1
            else:
                break

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def name(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in _NAME_CHARS:
            self.pos += 1
        return self.text[start:self.pos]

    def at_rule_start(self) -> bool:
        """A name followed by ::= (the next rule) is here."""
        save = self.pos
        ok = bool(self.name())
        if ok:
            self.skip()
            ok = self.text.startswith("::=", self.pos)
        self.pos = save
        return ok

    def parse(self) -> _Rules:
        self.skip()
        if self.pos == len(self.text):
            self.fail("no rules (a grammar needs a root rule)")
        while self.pos < len(self.text):
            start = self.pos
            name = self.name()
            if not name:
                self.fail(f"expected a rule name, found {self.peek()!r}")
            self.skip()
            if not self.text.startswith("::=", self.pos):
                self.fail(f"expected '::=' after the rule name {name!r}")
            self.pos += 3
            if name in self.defined:
                self.fail(f"rule {name!r} is defined twice (first at {self.where(self.defined[name])})", start)
            self.defined[name] = start
            r = self.out.rule(name)
            self.out.define(r, self.alternatives(name, nested=False))
            self.skip()
            if self.peek() == ")":
                self.fail("unexpected ')'")
        for name, pos in self.refs.items():
            if name not in self.defined:
                self.fail(f"rule {name!r} is used but never defined", pos)
        if "root" not in self.defined:
            raise ValueError("grammar: no 'root' rule (the start rule is named root)")
        return self.out

    def alternatives(self, base: str, nested: bool) -> list:
        alts = [self.sequence(base, nested)]
        while self.peek() == "|":
            self.pos += 1
            alts.append(self.sequence(base, nested))
        return alts

    def sequence(self, base: str, nested: bool) -> list:
        items: List[list] = []   # each item: its elements
        while True:
            self.skip()
            c = self.peek()
            if c == "" or c == "|" or c == ")":
                break
            if c in _NAME_CHARS and self.at_rule_start():
                if nested:
                    self.fail("a rule definition inside parentheses (missing ')')")
                break
            start = self.pos
            if c == '"':
                items.append(self.literal(base))
            elif c == "[":
                items.append([self.char_class(base)])
            elif c == ".":
                self.pos += 1
                items.append([self.out.char_class(base, _normalise([(0, _MAX_CODE_POINT)], False))])
            elif c == "(":
                self.pos += 1
                self.depth += 1
                if self.depth > _MAX_NESTING:
                    self.fail(f"parentheses nested over {_MAX_NESTING} deep")
                alts = self.alternatives(base, nested=True)
                self.depth -= 1
                self.skip()
                if self.peek() != ")":
                    self.fail("expected ')'", start if self.pos >= len(self.text) else None)
                self.pos += 1
                items.append(alts[0] if len(alts) == 1 else [self.out.new_rule(base, alts)])
            elif c in "*+?{":
                if not items:
                    self.fail(f"{c!r} repeats nothing (it must follow an item)")
                items[-1] = self.repetition(base, items[-1])
            elif c in _NAME_CHARS:
                name = self.name()
                self.refs.setdefault(name, start)
                items.append([-(self.out.rule(name) + 1)])
            else:
                self.fail(f"unexpected {c!r}")
        return [e for item in items for e in item]

    def one(self, base: str, elements: list) -> int:
        """elements as a single element (a rule when more than one)."""
        return elements[0] if len(elements) == 1 else self.out.new_rule(base, [elements])

    def repetition(self, base: str, elements: list) -> list:
        c = self.text[self.pos]
        self.pos += 1
        x = self.one(base, elements)
        if c == "*":
            return [self.star(base, x)]
        if c == "+":
            return [x, self.star(base, x)]
        if c == "?":
            return [self.out.new_rule(base, [[x], []])]
        lo = self.number()
        self.skip()
        hi: Optional[int] = lo
        if self.peek() == ",":
            self.pos += 1
            self.skip()
            hi = None if self.peek() == "}" else self.number()
            self.skip()
        if self.peek() != "}":
            self.fail("expected '}' to close the repetition")
        self.pos += 1
        if hi is not None and hi < lo:
            self.fail(f"repetition {{{lo},{hi}}}: the upper bound is below the lower")
        if max(lo, hi or 0) > _MAX_REPEAT:
            self.fail(f"repetition bound over {_MAX_REPEAT}")
        out = [x] * lo
        if hi is None:
            out.append(self.star(base, x))
        elif hi > lo:
            # x{0,k} as nested options (x (x (...)?)?)?: one way to match each count
            opt = self.out.new_rule(base, [[x], []])
            for _ in range(hi - lo - 1):
                opt = self.out.new_rule(base, [[x, opt], []])
            out.append(opt)
        return out

    def star(self, base: str, x: int) -> int:
        r = self.out.rule(self.out.fresh_name(base))
        self.out.define(r, [[x, -(r + 1)], []])
        return -(r + 1)

    def number(self) -> int:
        self.skip()
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos].isdigit() and self.text[self.pos].isascii():
            self.pos += 1
        if start == self.pos:
            self.fail("expected a number in the repetition")
        return int(self.text[start:self.pos])

    def char(self, closing: str) -> int:
        """One character of a literal or class (an escape included), as a code point."""
        start = self.pos
        if self.pos >= len(self.text):
            self.fail(f"unterminated {'literal' if closing == chr(34) else 'character class'}", start)
        c = self.text[self.pos]
        self.pos += 1
        if c != "\\":
            cp = ord(c)
        else:
            e = self.peek()
            self.pos += 1
            if e in _HEX_ESCAPES:
                digits = self.text[self.pos:self.pos + _HEX_ESCAPES[e]]
                if len(digits) != _HEX_ESCAPES[e] or any(d not in "0123456789abcdefABCDEF" for d in digits):
                    self.fail(f"\\{e} needs {_HEX_ESCAPES[e]} hex digits", start)
                self.pos += len(digits)
                cp = int(digits, 16)
            elif e in _ESCAPES:
                cp = ord(_ESCAPES[e])
            else:
                self.fail(f"unknown escape \\{e}", start)
        if cp > _MAX_CODE_POINT or _SURROGATES[0] <= cp <= _SURROGATES[1]:
            self.fail(f"U+{cp:04X} is not a Unicode scalar value", start)
        return cp

    def literal(self, base: str) -> list:
        start = self.pos
        self.pos += 1
        out = []
        while True:
            if self.pos >= len(self.text):
                self.fail("unterminated literal", start)
            if self.text[self.pos] == '"':
                self.pos += 1
                return out
            cp = self.char('"')
            out.extend(self.out.byte_set(b, b) for b in _utf8(cp))

    def char_class(self, base: str) -> int:
        start = self.pos
        self.pos += 1
        negate = self.peek() == "^"
        if negate:
            self.pos += 1
        ranges = []
        while True:
            if self.pos >= len(self.text):
                self.fail("unterminated character class", start)
            if self.text[self.pos] == "]":
                self.pos += 1
                break
            lo = self.char("]")
            hi = lo
            if self.peek() == "-" and self.text[self.pos + 1:self.pos + 2] not in ("]", ""):
                self.pos += 1
                hi = self.char("]")
                if hi < lo:
                    self.fail(f"range U+{lo:04X}-U+{hi:04X} ends before it starts", start)
            ranges.append((lo, hi))
        if not ranges and not negate:
            self.fail("empty character class", start)
        norm = _normalise(ranges, negate)
        if not norm:
            self.fail("a character class that matches no character", start)
        return self.out.char_class(base, norm)


def _compile(text: str) -> "_core.Grammar":
    rules = _Parser(text).parse()
    root = rules.by_name["root"]
    # rule 0 starts: swap root and rule 0
    order = list(range(len(rules.rules)))
    order[0], order[root] = root, 0
    new_index = {old: new for new, old in enumerate(order)}

    def renumber(e: int) -> int:
        return e if e >= 0 else -(new_index[-e - 1] + 1)

    names = [rules.names[old] for old in order]
    compiled = [[[renumber(e) for e in alt] for alt in rules.rules[old]] for old in order]
    byte_sets = [bits.to_bytes(32, "little") for bits in rules.sets]
    try:
        return _core.Grammar(names, compiled, byte_sets)
    except ValueError as e:
        if "left-recursive" in str(e) and "#" in str(e):  # a rule the compiler made
            raise ValueError(
                f"grammar: {e}. A rule named like root#2 is a repetition or group of rule root: a * or + "
                "over something that can match nothing (such as (\"a\"?)*) would repeat without reading "
                "text; make what it repeats match at least one character") from None
        raise ValueError(f"grammar: {e}") from None


class Grammar:
    """A GBNF grammar, compiled once and reusable across calls and models (thread-safe).

    ``Grammar(text)`` raises ``ValueError`` on a syntax error (with its line and column), an
    undefined rule, a left-recursive rule (``a ::= a "x"``: write ``"x"+`` or right recursion
    instead), or a start rule that can never finish.
    """

    def __init__(self, text: str):
        if not isinstance(text, str):
            raise TypeError(f"a grammar is GBNF text (str), got {type(text).__name__}")
        self.text = text
        self._core = _compile(text)

    @classmethod
    def from_file(cls, path) -> "Grammar":
        """The GBNF grammar in a UTF-8 text file (llama.cpp's .gbnf files)."""
        with open(path, encoding="utf-8") as f:
            return cls(f.read())

    @classmethod
    def from_json_schema(cls, schema) -> "Grammar":
        """The JSON texts valid under a JSON schema (a dict or a JSON string); see
        pygpt/json_schema.py for the keywords it supports."""
        from .json_schema import json_schema_to_gbnf

        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as e:
                raise ValueError(f"the JSON schema is not valid JSON: {e}") from None
        return cls(json_schema_to_gbnf(schema))

    @classmethod
    def from_regex(cls, pattern: str) -> "Grammar":
        """The texts re.fullmatch(pattern, text, re.ASCII) accepts; see pygpt/regex.py for
        what it supports (what describes a regular language)."""
        from .regex import regex_to_gbnf

        return cls(regex_to_gbnf(pattern))

    @classmethod
    def json(cls, object_only: bool = True) -> "Grammar":
        """Any JSON object (OpenAI's ``response_format={"type": "json_object"}``), or with
        object_only=False any JSON value."""
        from .json_schema import JSON_OBJECT_GBNF, JSON_VALUE_GBNF

        return cls(JSON_OBJECT_GBNF if object_only else JSON_VALUE_GBNF)

    def matches(self, text) -> bool:
        """Whether text (str or bytes) is a whole match."""
        return self._core.matches(_bytes(text))

    def is_prefix(self, text) -> bool:
        """Whether text (str or bytes) is the start of a match (a match included)."""
        return self._core.viable(_bytes(text))

    def __repr__(self) -> str:
        first = self.text.strip().splitlines()[0] if self.text.strip() else ""
        return f"Grammar({first[:60]!r}{'...' if len(self.text) > len(first) else ''})"


def _bytes(text) -> bytes:
    if isinstance(text, str):
        return text.encode("utf-8")
    if isinstance(text, (bytes, bytearray)):
        return bytes(text)
    raise TypeError(f"text must be str or bytes, got {type(text).__name__}")


def as_grammar(grammar) -> Grammar:
    """The grammar option: a Grammar, or GBNF text."""
    if isinstance(grammar, Grammar):
        return grammar
    if isinstance(grammar, str):
        return Grammar(grammar)
    raise TypeError(f"grammar must be a pygpt.Grammar or GBNF text, got {type(grammar).__name__}")
