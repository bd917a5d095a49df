"""An independent GBNF recognizer: the test oracle for grammars (pure Python, stdlib only).

Reads llama.cpp's GBNF dialect with a parser of its own and recognizes text, as a Python
str (a sequence of code points), with an Earley parser. Groups and repetitions become
fresh rules (``x*`` is ``R ::= | R x``: left recursion, which Earley parses in linear time),
and empty rules are handled as Aycock & Horspool do: predicting a nullable rule also moves
past it.

The dialect:

* rules ``NAME ::= alternatives``, NAME of ``[a-zA-Z0-9_-]``; the start rule is ``root``; a
  body ends where the next ``NAME ::=`` begins (newlines are plain whitespace);
* whitespace and ``#`` comments between any two tokens;
* alternatives ``a | b``, an empty one matching the empty string;
* items: ``"literal"``, ``[class]``, ``[^negated]``, ``.``, a rule name, ``( group )``;
  escapes ``\\n \\r \\t \\\\ \\" \\[ \\] \\xHH \\uHHHH \\UHHHHHHHH`` in literals and classes;
* postfix ``* + ? {m} {m,} {m,n}``, which chain (``"a"+?``);
* code points are the Unicode scalar values: ``.`` and negated classes never match a
  surrogate, and naming one (or anything past U+10FFFF) is an error.

Every syntax error raises ValueError naming what is wrong and where (line:column).
"""

import bisect
import random

MAX_CODE_POINT = 0x10FFFF
SURROGATE_LO, SURROGATE_HI = 0xD800, 0xDFFF
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
SIMPLE_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"', "[": "[", "]": "]"}
HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}
WHITESPACE = " \t\r\n"


def is_scalar(cp):
    return 0 <= cp <= MAX_CODE_POINT and not SURROGATE_LO <= cp <= SURROGATE_HI


class CharSet:
    """A terminal: a set of code points, as sorted disjoint inclusive ranges that never hold
    a surrogate."""

    __slots__ = ("starts", "ends", "_cumulative", "_printable")

    def __init__(self, ranges, negated=False):
        merged = []
        for lo, hi in sorted(ranges):
            if merged and lo <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        if negated:
            complement, nxt = [], 0
            for lo, hi in merged:
                if lo > nxt:
                    complement.append([nxt, lo - 1])
                nxt = hi + 1
            if nxt <= MAX_CODE_POINT:
                complement.append([nxt, MAX_CODE_POINT])
            merged = complement
        scalar = []  # cut the surrogates out
        for lo, hi in merged:
            if lo < SURROGATE_LO:
                scalar.append((lo, min(hi, SURROGATE_LO - 1)))
            if hi > SURROGATE_HI:
                scalar.append((max(lo, SURROGATE_HI + 1), hi))
        self.starts = [lo for lo, _ in scalar]
        self.ends = [hi for _, hi in scalar]
        self._cumulative = None
        self._printable = None

    def __contains__(self, cp):
        i = bisect.bisect_right(self.starts, cp) - 1
        return i >= 0 and cp <= self.ends[i]

    def __bool__(self):
        return bool(self.starts)

    def sample(self, rng):
        """A random member: often printable ASCII when the set has some, else any member
        (uniform over the whole set)."""
        if self._cumulative is None:
            self._printable = [cp for cp in range(0x20, 0x7F) if cp in self]
            self._cumulative, total = [], 0
            for lo, hi in zip(self.starts, self.ends):
                total += hi - lo + 1
                self._cumulative.append(total)
        if self._printable and rng.random() < 0.6:
            return rng.choice(self._printable)
        r = rng.randrange(self._cumulative[-1])
        i = bisect.bisect_right(self._cumulative, r)
        return self.ends[i] - (self._cumulative[i] - 1 - r)


class _Ref:
    """A rule name in a body, resolved once every rule is read."""

    __slots__ = ("name", "pos")

    def __init__(self, name, pos):
        self.name, self.pos = name, pos


class _Parser:
    """Recursive descent over the grammar text. Rules are numbered; a body is a list of
    alternatives, each a list of symbols: a CharSet, a rule number, or a _Ref."""

    def __init__(self, text):
        self.text = text
        self.pos = 0
        self.names = []  # rule number -> name ("root", or "root#3" for a group/repetition)
        self.bodies = []  # rule number -> alternatives
        self.defined = {}  # name -> rule number
        self.refs = []
        self.current = None  # the rule being read (names its groups and repetitions)

    # --- errors and positions

    def where(self, pos):
        line = self.text.count("\n", 0, pos) + 1
        col = pos - (self.text.rfind("\n", 0, pos) + 1) + 1
        return f"{line}:{col}"

    def error(self, message, pos=None):
        return ValueError(f"grammar: {message} at {self.where(self.pos if pos is None else pos)}")

    def peek(self, k=0):
        i = self.pos + k
        return self.text[i] if i < len(self.text) else ""

    def skip(self):
        """Skips whitespace and comments."""
        text = self.text
        while self.pos < len(text):
            c = text[self.pos]
            if c in WHITESPACE:
                self.pos += 1
            elif c == "#":
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end + 1
            else:
                break

    # --- rules

    def new_rule(self, name, alternatives):
        self.names.append(name)
        self.bodies.append(alternatives)
        return len(self.names) - 1

    def parse(self):
        while True:
            self.skip()
            if self.pos >= len(self.text):
                break
            start = self.pos
            name = self.parse_name()
            if not name:
                raise self.error(f"expected a rule name, found {self.peek()!r}")
            self.skip()
            if not self.text.startswith("::=", self.pos):
                raise self.error(f"expected '::=' after rule name {name!r}")
            self.pos += 3
            if name in self.defined:
                raise self.error(f"rule {name!r} is defined twice", start)
            number = self.new_rule(name, None)
            self.defined[name] = number
            self.current = name
            self.bodies[number] = self.parse_alternatives()
            if self.pos < len(self.text) and self.peek() in "|)":
                raise self.error(f"unexpected {self.peek()!r}")
        if "root" not in self.defined:
            raise self.error("the grammar has no 'root' rule")
        for ref in self.refs:
            if ref.name not in self.defined:
                raise self.error(f"undefined rule {ref.name!r}", ref.pos)
        resolve = self.defined.__getitem__
        for alternatives in self.bodies:
            for seq in alternatives:
                seq[:] = [resolve(s.name) if isinstance(s, _Ref) else s for s in seq]
        return self

    def parse_name(self):
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in NAME_CHARS:
            self.pos += 1
        return self.text[start:self.pos]

    def at_rule_start(self):
        """Whether NAME ::= begins here (the end of the current body)."""
        saved = self.pos
        name = self.parse_name()
        self.skip()
        found = bool(name) and self.text.startswith("::=", self.pos)
        self.pos = saved
        return found

    def parse_alternatives(self):
        alternatives = [self.parse_sequence()]
        while self.peek() == "|":
            self.pos += 1
            alternatives.append(self.parse_sequence())
        return alternatives

    def parse_sequence(self):
        """Items up to '|', ')', the next rule or the end; leaves pos there (after skip)."""
        items = []  # each item a list of symbols, so that a postfix operator takes it whole
        while True:
            self.skip()
            c = self.peek()
            if c == "" or c in "|)":
                break
            start = self.pos
            if c == '"':
                self.pos += 1
                items.append(self.parse_literal(start))
            elif c == "[":
                self.pos += 1
                items.append([self.parse_class(start)])
            elif c == ".":
                self.pos += 1
                items.append([CharSet([], negated=True)])
            elif c == "(":
                self.pos += 1
                alternatives = self.parse_alternatives()
                if self.peek() != ")":
                    raise self.error("expected ')' to close the group opened", start)
                self.pos += 1
                items.append([self.new_rule(f"{self.current}#{len(self.names)}", alternatives)])
            elif c in NAME_CHARS:
                if self.at_rule_start():
                    break
                ref = _Ref(self.parse_name(), start)
                self.refs.append(ref)
                items.append([ref])
            elif c in "*+?{":
                if not items:
                    raise self.error(f"postfix operator {c!r} with nothing before it")
                items[-1] = [self.parse_postfix(items[-1])]
            else:
                raise self.error(f"unexpected character {c!r}")
        return [symbol for item in items for symbol in item]

    # --- literals and classes

    def parse_char(self, what):
        """One code point of a literal or class (pos after it), escapes decoded."""
        start = self.pos
        c = self.peek()
        if c == "":
            raise self.error(f"unterminated {what}")
        self.pos += 1
        if c != "\\":
            if not is_scalar(ord(c)):
                raise self.error(f"U+{ord(c):04X} is no Unicode scalar value", start)
            return ord(c)
        e = self.peek()
        self.pos += 1
        if e in SIMPLE_ESCAPES:
            return ord(SIMPLE_ESCAPES[e])
        if e in HEX_ESCAPES:
            n = HEX_ESCAPES[e]
            digits = self.text[self.pos:self.pos + n]
            if len(digits) != n or not all(d in HEX_DIGITS for d in digits):
                raise self.error(f"escape \\{e} needs {n} hex digits", start)
            self.pos += n
            cp = int(digits, 16)
            if not is_scalar(cp):
                raise self.error(f"escape \\{e}{digits} is no Unicode scalar value", start)
            return cp
        if e == "":
            raise self.error(f"unterminated {what}")
        raise self.error(f"unknown escape '\\{e}'", start)

    def parse_literal(self, start):
        symbols = []
        while True:
            if self.peek() == "":
                raise self.error("unterminated literal", start)
            if self.peek() == '"':
                self.pos += 1
                return symbols
            cp = self.parse_char("literal")
            symbols.append(CharSet([(cp, cp)]))

    def parse_class(self, start):
        negated = self.peek() == "^"
        self.pos += negated
        ranges = []
        while True:
            if self.peek() == "":
                raise self.error("unterminated character class", start)
            if self.peek() == "]":
                self.pos += 1
                return CharSet(ranges, negated)
            at = self.pos
            lo = self.parse_char("character class")
            hi = lo
            if self.peek() == "-" and self.peek(1) not in ("]", ""):
                self.pos += 1
                hi = self.parse_char("character class")
                if hi < lo:
                    raise self.error(f"range end U+{hi:04X} is below its start U+{lo:04X}", at)
            ranges.append((lo, hi))

    # --- postfix operators

    def parse_int(self):
        self.skip()
        start = self.pos
        while self.peek().isdigit() and self.peek().isascii():
            self.pos += 1
        if start == self.pos:
            raise self.error("expected a number in '{...}'")
        return int(self.text[start:self.pos])

    def parse_postfix(self, item):
        start = self.pos
        op = self.peek()
        self.pos += 1
        if op == "*":
            lo, hi = 0, None
        elif op == "+":
            lo, hi = 1, None
        elif op == "?":
            lo, hi = 0, 1
        else:
            lo = hi = self.parse_int()
            self.skip()
            if self.peek() == ",":
                self.pos += 1
                self.skip()
                hi = None if self.peek() == "}" else self.parse_int()
                self.skip()
            if self.peek() != "}":
                raise self.error("expected '}' to close the repetition", start)
            self.pos += 1
            if hi is not None and hi < lo:
                raise self.error(f"repetition {{{lo},{hi}}} has max below min", start)
        return self.repeat(item, lo, hi)

    def repeat(self, item, lo, hi):
        """A rule for item repeated lo..hi times (hi None: unbounded)."""
        base = f"{self.current}#{len(self.names)}"
        if len(item) == 1:
            x = item[0]
        else:
            x = self.new_rule(base + "-item", [list(item)])
        if hi is None:  # R ::= x{lo} | R x
            r = self.new_rule(base, None)
            self.bodies[r] = [[x] * lo, [r, x]]
            return r
        tail = None  # x{0,hi-lo} as nested options: O_k ::= | x O_{k-1}
        for k in range(hi - lo):
            tail = self.new_rule(f"{base}-opt{k + 1}", [[], [x] + ([tail] if tail is not None else [])])
        return self.new_rule(base, [[x] * lo + ([tail] if tail is not None else [])])


class ReferenceGrammar:
    """A GBNF grammar: matches(s), is_prefix(s), sample(rng)."""

    def __init__(self, text: str):
        parser = _Parser(text).parse()
        self.names = parser.names
        self.root = parser.defined["root"]
        n = len(self.names)
        # LR(0) items are numbered: item k is (production, dot); item k + 1 moves the dot.
        self._item_rule = []  # k -> the production's rule (left-hand side)
        self._item_rule_next = []  # k -> rule number after the dot, or -1
        self._item_term_next = []  # k -> CharSet after the dot, or None
        self._starts = [[] for _ in range(n)]  # rule -> first item of each production
        self._productions = [[] for _ in range(n)]  # rule -> [symbols], for sample
        for rule, alternatives in enumerate(parser.bodies):
            for seq in alternatives:
                self._productions[rule].append(seq)
                self._starts[rule].append(len(self._item_rule))
                for symbol in seq + [None]:
                    self._item_rule.append(rule)
                    self._item_rule_next.append(symbol if isinstance(symbol, int) else -1)
                    self._item_term_next.append(symbol if isinstance(symbol, CharSet) else None)
        self._nullable = self._find_nullable()
        self._shortest = self._find_shortest()
        self._costs = [[self._cost(seq, self._shortest) for seq in productions]
                       for productions in self._productions]

    def _find_nullable(self):
        nullable = [False] * len(self.names)
        changed = True
        while changed:
            changed = False
            for rule, productions in enumerate(self._productions):
                if not nullable[rule] and any(
                        all(isinstance(s, int) and nullable[s] for s in seq) for seq in productions):
                    nullable[rule] = changed = True
        return nullable

    def _cost(self, seq, best):
        """(length, height) of the shortest derivation of seq, None if it has none."""
        length, height = 0, 0
        for s in seq:
            if isinstance(s, CharSet):
                if not s:
                    return None
                length += 1
            else:
                if best[s] is None:
                    return None
                length += best[s][0]
                height = max(height, best[s][1])
        return (length, height + 1)

    def _find_shortest(self):
        """rule -> (length, height) of its shortest, then lowest, derivation (None: none).
        Following the productions that achieve it always ends: heights strictly drop."""
        best = [None] * len(self.names)
        changed = True
        while changed:
            changed = False
            for rule, productions in enumerate(self._productions):
                for seq in productions:
                    cost = self._cost(seq, best)
                    if cost is not None and (best[rule] is None or cost < best[rule]):
                        best[rule] = cost
                        changed = True
        return best

    # --- recognition

    def _final_chart(self, s):
        """Runs Earley over s: (items of the last chart, whether root completed over all of
        s). Items are (LR(0) item, origin); the chart is empty when s is no prefix."""
        rule_next, term_next, item_rule = self._item_rule_next, self._item_term_next, self._item_rule
        starts, nullable, root = self._starts, self._nullable, self.root
        waiting = []  # position -> {rule: items whose dot is before that rule}
        agenda = [(k, 0) for k in starts[root]]
        for i in range(len(s) + 1):
            seen = set(agenda)
            waits = {}
            waiting.append(waits)
            predicted = set()
            scans = []
            accepted = False
            stack = list(agenda)

            def add(item):
                if item not in seen:
                    seen.add(item)
                    stack.append(item)

            while stack:
                item = stack.pop()
                k, origin = item
                nxt = rule_next[k]
                if nxt >= 0:  # predict
                    waits.setdefault(nxt, []).append(item)
                    if nxt not in predicted:
                        predicted.add(nxt)
                        for k2 in starts[nxt]:
                            add((k2, i))
                    if nullable[nxt]:  # Aycock & Horspool: a nullable rule may also be skipped
                        add((k + 1, origin))
                elif term_next[k] is not None:
                    scans.append(item)
                else:  # complete: every item of chart `origin` waiting on this rule moves on
                    rule = item_rule[k]
                    if origin == 0 and rule == root:
                        accepted = True
                    for k2, origin2 in waiting[origin].get(rule, ()):
                        add((k2 + 1, origin2))
            if i == len(s):
                return seen, accepted
            cp = ord(s[i])
            agenda = [(k + 1, origin) for k, origin in scans if cp in term_next[k]]
            if not agenda:
                return set(), False

    def matches(self, s: str) -> bool:
        """Whether root derives the whole of s."""
        return self._final_chart(s)[1]

    def is_prefix(self, s: str) -> bool:
        """Whether some partial derivation from root consumes exactly s (the Earley chart
        after s is not empty): s extends to a match when every rule can complete."""
        return bool(self._final_chart(s)[0])

    # --- generation

    def sample(self, rng: random.Random, max_depth: int = 12) -> str:
        """A random string the grammar matches. Up to max_depth nested rules each
        alternative is equally likely (so a repetition stops with probability 1/2 at each
        step); deeper, the shortest derivation is taken."""
        if self._shortest[self.root] is None:
            raise ValueError("grammar: root derives no finite string")
        out = []
        self._expand(self.root, 0, rng, max_depth, out)
        return "".join(out)

    def _expand(self, rule, depth, rng, max_depth, out):
        productions, costs = self._productions[rule], self._costs[rule]
        if depth >= max_depth:
            best = self._shortest[rule]
            choices = [seq for seq, cost in zip(productions, costs) if cost == best]
        else:
            choices = [seq for seq, cost in zip(productions, costs) if cost is not None]
        for symbol in rng.choice(choices):
            if isinstance(symbol, CharSet):
                out.append(chr(symbol.sample(rng)))
            else:
                self._expand(symbol, depth + 1, rng, max_depth, out)
