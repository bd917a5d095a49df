"""Regular expressions as grammars: ``Grammar.from_regex(pattern)`` allows the texts that
``re.fullmatch(pattern, text, re.ASCII)`` accepts (vLLM's guided_regex, outlines' regex).

The pattern is parsed by Python's own ``re`` parser, and its parse tree written as GBNF for
pygpt's grammar matcher (pygpt/grammar.py). Everything that describes a regular language is
supported: literals and escapes, ``.``, classes (``[a-z]``, ``[^,]``, ``\\d \\w \\s`` and their
negations, inside classes too), groups of any kind that only group (``(...)``, ``(?:...)``,
``(?P<name>...)``), alternatives, the repetitions ``* + ? {m} {m,} {m,n}`` and their lazy forms
(the same texts), the flags ``(?s)`` (DOTALL), ``(?i)`` (IGNORECASE: ASCII letters in both
cases, as with ``re.ASCII``), ``(?x)`` (VERBOSE) and ``(?a)``, scoped ones (``(?i:...)``,
``(?-s:...)``) too, and ``^ \\A`` at the start and ``$ \\Z`` at the end.

``\\d \\w \\s`` are ASCII classes, as with ``re.ASCII`` (without it, Python's ``\\d`` also
matches other scripts' digits, which a grammar would have to list). Refused, with a
``ValueError`` that names them, are what regular grammars cannot say or what would change the
texts allowed: backreferences, lookahead and lookbehind, ``\\b`` and ``\\B``, anchors inside
the pattern, conditionals, atomic groups and possessive repetitions, and the flags LOCALE and
MULTILINE.
"""

from __future__ import annotations

try:  # Python 3.11+
    import re._constants as _c
    import re._parser as _parser
except ImportError:  # Python 3.9 and 3.10
    import sre_constants as _c  # type: ignore[no-redef]
    import sre_parse as _parser  # type: ignore[no-redef]

import re

_MAX_CP = 0x10FFFF
_SURROGATES = (0xD800, 0xDFFF)
_ASCII = {  # \d \w \s as with re.ASCII
    "DIGIT": [(0x30, 0x39)],
    "WORD": [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
    "SPACE": [(0x09, 0x0D), (0x20, 0x20)],
}
_UNSUPPORTED_FLAGS = {re.LOCALE: "LOCALE", re.MULTILINE: "MULTILINE"}
_REFUSED = {
    "GROUPREF": "backreferences", "GROUPREF_EXISTS": "conditional groups (?(1)...)",
    "ASSERT": "lookahead and lookbehind", "ASSERT_NOT": "lookahead and lookbehind",
    "ATOMIC_GROUP": "atomic groups (?>...)", "POSSESSIVE_REPEAT": "possessive repetitions (*+, ++, ?+)",
}


def _complement(ranges: list) -> list:
    """The code points (surrogates left out) outside sorted, disjoint ranges."""
    out, lo = [], 0
    for a, b in ranges:
        if a > lo:
            out.append((lo, a - 1))
        lo = max(lo, b + 1)
    if lo <= _MAX_CP:
        out.append((lo, _MAX_CP))
    return _without_surrogates(out)


def _without_surrogates(ranges: list) -> list:
    s0, s1 = _SURROGATES
    out = []
    for a, b in ranges:
        if b < s0 or a > s1:
            out.append((a, b))
            continue
        if a < s0:
            out.append((a, s0 - 1))
        if b > s1:
            out.append((s1 + 1, b))
    return out


def _union(ranges: list) -> list:
    out: list = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _class(ranges: list) -> str:
    """A GBNF character class of code point ranges."""
    def ch(cp: int) -> str:
        return f"\\U{cp:08X}"

    ranges = _without_surrogates(_union(ranges))
    if not ranges:
        raise ValueError("the pattern has a character class that matches no character")
    return "[" + "".join(ch(a) if a == b else f"{ch(a)}-{ch(b)}" for a, b in ranges) + "]"


def _literal(text: str) -> str:
    return '"' + "".join(c if c.isalnum() and c.isascii() or c == " " else f"\\U{ord(c):08X}" for c in text) + '"'


class _Writer:
    """Writes a parse tree as one GBNF expression."""

    def sequence(self, items: list, first: bool, last: bool, flags: int) -> str:
        """items: a parse tree's elements, as GBNF; first / last: whether they start / end the
        text, where ^ and $ are allowed; flags: the re flags in force (DOTALL, IGNORECASE)."""
        parts, text = [], ""
        for i, (op, arg) in enumerate(items):
            name = str(op)
            if name == "LITERAL" and not (flags & re.IGNORECASE and chr(arg).isascii() and chr(arg).isalpha()):
                text += chr(arg)
                continue
            if text:
                parts.append(_literal(text))
                text = ""
            if name == "AT":
                at = str(arg)
                if at in ("AT_BEGINNING", "AT_BEGINNING_STRING") and first and i == 0:
                    continue
                if at in ("AT_END", "AT_END_STRING") and last and i == len(items) - 1:
                    continue
                what = "\\b and \\B" if "BOUNDARY" in at else "anchors (^, $, \\A, \\Z) inside the pattern"
                raise ValueError(f"the pattern uses {what}, which a grammar of the whole text cannot say")
            parts.append(self.element(name, arg, first and i == 0, last and i == len(items) - 1, flags))
        if text:
            parts.append(_literal(text))
        return " ".join(parts) if parts else '""'

    def element(self, name: str, arg, first: bool, last: bool, flags: int) -> str:
        if name in _REFUSED:
            raise ValueError(f"the pattern uses {_REFUSED[name]}, which a grammar cannot say")
        if name == "LITERAL":  # a letter under IGNORECASE: both cases
            return _class(_fold([(arg, arg)]))
        if name == "NOT_LITERAL":
            return _class(_complement(_fold([(arg, arg)]) if flags & re.IGNORECASE else [(arg, arg)]))
        if name == "ANY":
            return _class(_complement([] if flags & re.DOTALL else [(0x0A, 0x0A)]))
        if name == "IN":
            return _class(self.class_ranges(arg, bool(flags & re.IGNORECASE)))
        if name == "BRANCH":
            return "(" + " | ".join(self.sequence(list(alt), first, last, flags) for alt in arg[1]) + ")"
        if name == "SUBPATTERN":
            _group, add, remove, items = arg
            _check_flags(add)
            return "(" + self.sequence(list(items), first, last, (flags | add) & ~remove) + ")"
        if name in ("MAX_REPEAT", "MIN_REPEAT"):  # a lazy repetition allows the same texts
            lo, hi, items = arg
            if _nullable_sequence(items):  # Y{lo,hi} = (Y without the empty text){0,hi}: the matcher
                body = self.non_empty(list(items), flags)  # refuses to repeat what reads nothing
                if body is None:
                    return '""'
                body, lo = "(" + body + ")", 0
            else:
                body = "(" + self.sequence(list(items), False, False, flags) + ")"
            if hi == _c.MAXREPEAT:
                return body + ("*" if lo == 0 else "+" if lo == 1 else f"{{{lo},}}")
            return body + ("?" if (lo, hi) == (0, 1) else f"{{{lo}}}" if lo == hi else f"{{{lo},{hi}}}")
        raise ValueError(f"the pattern uses {name.lower()}, which pygpt's grammars do not support")

    def non_empty(self, items: list, flags: int):
        """GBNF of the non-empty texts a sequence matches, or None where it matches only the
        empty one: for a sequence of elements that can all be empty, the alternatives "element
        i non-empty, the ones before it empty, the ones after it anything"."""
        if not _nullable_sequence(items):
            return self.sequence(items, False, False, flags)
        alternatives = []
        for i, (op, arg) in enumerate(items):
            head = self.non_empty_element(str(op), arg, flags)
            if head is not None:
                rest = self.sequence(items[i + 1:], False, False, flags) if items[i + 1:] else ""
                alternatives.append(head + (" " + rest if rest else ""))
        return "(" + " | ".join(alternatives) + ")" if alternatives else None

    def non_empty_element(self, name: str, arg, flags: int):
        """non_empty() of one element that can be empty."""
        if name == "BRANCH":
            alternatives = [a for a in (self.non_empty(list(alt), flags) for alt in arg[1]) if a is not None]
            return "(" + " | ".join(alternatives) + ")" if alternatives else None
        if name == "SUBPATTERN":
            _group, add, remove, items = arg
            _check_flags(add)
            return self.non_empty(list(items), (flags | add) & ~remove)
        if name in ("MAX_REPEAT", "MIN_REPEAT"):  # Y{0,hi} less the empty text: Y' Y'{0,hi-1}
            lo, hi, items = arg
            body = self.non_empty(list(items), flags)
            if body is None:
                return None
            more = "*" if hi == _c.MAXREPEAT else "?" if hi == 2 else f"{{0,{hi - 1}}}" if hi > 1 else ""
            return f"({body})" + (f" ({body}){more}" if more else "")
        if name == "AT":
            return None
        raise ValueError(f"the pattern uses {name.lower()}, which pygpt's grammars do not support")

    @staticmethod
    def class_ranges(items: list, ignore_case: bool = False) -> list:
        """The code points of a [...] (or \\d, \\w, \\s) as ranges; with ignore_case, its
        letters' other cases too (ASCII ones, as re.IGNORECASE with re.ASCII)."""
        negate, ranges = False, []
        for op, arg in items:
            name = str(op)
            if name == "NEGATE":
                negate = True
            elif name == "LITERAL":
                ranges.append((arg, arg))
            elif name == "RANGE":
                ranges.append(tuple(arg))
            elif name == "CATEGORY":
                cat = str(arg)[len("CATEGORY_"):]
                if cat.startswith("NOT_"):
                    ranges.extend(_complement(_ASCII[cat[4:]]))
                elif cat in _ASCII:
                    ranges.extend(_ASCII[cat])
                else:
                    raise ValueError(f"the pattern uses the class {cat.lower()}, which pygpt does not support")
            else:
                raise ValueError(f"the pattern uses {name.lower()} in a character class, which pygpt does not support")
        ranges = _fold(ranges) if ignore_case else _union(ranges)
        return _complement(ranges) if negate else ranges


def _fold(ranges: list) -> list:
    """Code point ranges with the other case of their ASCII letters."""
    out = list(ranges)
    for a, b in ranges:
        for lo, hi, shift in ((0x41, 0x5A, 0x20), (0x61, 0x7A, -0x20)):
            if a <= hi and b >= lo:
                out.append((max(a, lo) + shift, min(b, hi) + shift))
    return _union(out)


def _nullable(name: str, arg) -> bool:
    """Whether an element of a parse tree can match the empty text."""
    if name in ("LITERAL", "NOT_LITERAL", "ANY", "IN"):
        return False
    if name == "BRANCH":
        return any(_nullable_sequence(alt) for alt in arg[1])
    if name == "SUBPATTERN":
        return _nullable_sequence(arg[3])
    if name in ("MAX_REPEAT", "MIN_REPEAT"):
        return arg[0] == 0 or _nullable_sequence(arg[2])
    return True  # anchors; what the writer refuses never gets here


def _nullable_sequence(items) -> bool:
    return all(_nullable(str(op), arg) for op, arg in items)


def _check_flags(flags: int) -> None:
    for flag, name in _UNSUPPORTED_FLAGS.items():
        if flags & flag:
            raise ValueError(f"the pattern's flag {name} is not supported")


def regex_to_gbnf(pattern: str) -> str:
    """GBNF whose texts are those re.fullmatch(pattern, text, re.ASCII) accepts."""
    if not isinstance(pattern, str):
        raise TypeError(f"a regular expression is a str, got {type(pattern).__name__}")
    try:
        tree = _parser.parse(pattern)
    except re.error as e:
        raise ValueError(f"not a valid regular expression: {e}") from None
    state = getattr(tree, "state", None) or getattr(tree, "pattern", None)  # 3.11+ / 3.9-3.10
    _check_flags(state.flags)
    return "root ::= " + _Writer().sequence(list(tree), True, True, state.flags) + "\n"
