"""JSON Schema to GBNF: grammars under which generation writes JSON valid under a schema.

``json_schema_to_gbnf(schema)`` returns GBNF text (llama.cpp's dialect) whose ``root`` rule
matches the JSON texts valid under ``schema`` (a dict or bool, as from json.loads).
``JSON_VALUE_GBNF`` matches any JSON value and ``JSON_OBJECT_GBNF`` any JSON object (for an
OpenAI-style ``response_format: {"type": "json_object"}``).

The JSON the grammars accept is RFC 8259's, within these limits:

* whitespace: none before the first token or after the last; between two tokens at most
  llama.cpp's ``space ::= | " " | "\\n" [ \\t]{0,20}``: nothing, one space, or one newline
  and up to 20 spaces or tabs. json.dumps writes such text with its default separators,
  with separators=(",", ":"), and with indent= as long as an indented line has at most 20
  spaces (indent=2 up to 10 levels deep);
* numbers: at most 16 digits before the decimal point (as llama.cpp, so that a model cannot
  go on writing digits); integers (type "integer") have no fraction or exponent (1, not 1.0
  or 1e0);
* objects: properties come in the order of "properties", their names written as
  json.dumps(name, ensure_ascii=False) writes them ("é", not "\\u00e9"); additional
  properties follow them.

Keywords:

* ``type`` (a name or a list of names); without ``type`` a schema allows every type, its
  type-specific keywords constraining only values of their type, as JSON Schema says (so
  ``{"properties": ...}`` alone also allows strings and numbers: write ``"type": "object"``);
* ``enum`` and ``const``, with ``type`` beside them only (it filters the values); a value is
  written as ``json.dumps(value, ensure_ascii=False)`` writes it (so the number 1.0 only as
  ``1.0`` and "é" only raw, not as ``\\u00e9``), objects and arrays with the whitespace above
  allowed between their tokens and their keys in the given order;
* strings: ``minLength``, ``maxLength`` (each character or escape counts one), ``format``
  "date" (years 0001-9999, month lengths and leap years checked), "time" and "date-time"
  (RFC 3339, with an offset, no leap second), "uuid" (8-4-4-4-12 hex digits), ``pattern``
  (below; not beside minLength, maxLength or format: put the constraint into the pattern);
* integers: ``minimum``, ``maximum``, ``exclusiveMinimum``, ``exclusiveMaximum`` (numbers),
  on type "integer" only;
* objects: ``properties`` (any may be omitted unless ``required`` lists it), ``required``,
  ``additionalProperties``. Where ``properties`` is given, a missing additionalProperties
  means false (no other property, as OpenAI's strict structured outputs), unlike JSON
  Schema; without ``properties`` it means true. Additional properties (true or a schema)
  follow the listed ones, with any key except the listed names as json.dumps spells them;
  a required name that ``properties`` does not list is a listed property with the
  additionalProperties schema;
* arrays: ``items``, ``prefixItems``, ``minItems``, ``maxItems``;
* ``anyOf`` and ``oneOf`` as alternatives (oneOf as anyOf: a value valid under two branches
  is accepted), with no other constraining keyword beside them;
* ``$ref`` to a local JSON pointer (``#/$defs/NAME``, ``#/definitions/NAME``, ``#``, ...),
  recursion included, with no other constraining keyword beside it;
* ``true`` / ``{}``: any value. ``false`` (and anything else that no value satisfies) is
  an error at the top; inside, it forbids what it stands for (a property, more items, a
  branch of anyOf).

Patterns are ECMA-262 regular expressions, as JSON Schema says, read as over code points
(as with ECMA's u flag and Python's re: ``.`` matches one emoji), within these limits:

* anchored: each top-level alternative starts with ``^`` and ends with ``$`` (``^(a|b)$`` or
  ``^a$|^b$``), as llama.cpp's converter requires. JSON Schema's patterns match anywhere, so
  an unanchored one raises ValueError rather than being read as anchored (write
  ``^[\\s\\S]*(...)[\\s\\S]*$`` for a match anywhere);
* the syntax: characters; ``.`` (any but the line terminators \\n \\r U+2028 U+2029); classes
  ``[...]`` and ``[^...]`` with ranges; the escapes ``\\d \\D \\w \\W \\s \\S`` (ECMA's: ``\\d`` is
  [0-9] and ``\\w`` [A-Za-z0-9_], not Python's Unicode ones; ``\\s`` has ECMA's spaces and line
  terminators), ``\\n \\r \\t \\f \\v \\0 \\xHH \\uHHHH``, ``\\b`` in a class (backspace), and a
  backslash before punctuation (``\\. \\/ \\-``); groups ``(...)`` and ``(?:...)``; ``|``; the
  quantifiers ``* + ? {m} {m,} {m,n}`` and their lazy forms (``*?``: the same strings);
* anything else raises ValueError naming it: backreferences, lookahead and lookbehind, named
  groups, ``\\b`` and ``\\B`` (boundaries), ``\\p{...}``, ``\\cX``, ``\\u{...}``, surrogates as
  ``\\u`` escapes, flags ``(?i)``, ``^`` or ``$`` elsewhere, and what ECMA-262 and Python's re
  read differently: ``[]``, ``[^]``, a lone ``{``, ``}`` or ``]``, ``{,n}``, ``[\\d-z]``;
* a string is written as json.dumps(s, ensure_ascii=False) writes it: ``"`` and ``\\`` as
  ``\\"`` and ``\\\\``, the controls U+0000-U+001F as ``\\b \\t \\n \\f \\r`` or ``\\u00xx`` (lowercase
  hex), every other character raw; so ``"\\u0061"`` or ``"\\/"`` is refused where "a" or "/" is
  allowed. (jsonschema checks patterns with Python's re, which differs from ECMA-262 on
  non-ASCII characters for ``\\d \\D \\w \\W \\s \\S``, and whose ``$`` also matches before a
  final newline.)

A grammar accepts more than its schema in three rare cases: oneOf is treated as anyOf; a
character past U+FFFF written as a surrogate pair of ``\\u`` escapes counts as two for
minLength; a listed property name spelled with escapes (``"\\u0061"`` for "a") passes as an
additional property. Everywhere else it accepts a subset of what the schema allows, as
said above.

Annotations are ignored: title, description, default, examples, $schema, $id, $comment,
deprecated, readOnly, writeOnly ($defs and definitions hold schemas for $ref). Every other
keyword (multipleOf, allOf, not, if/then/else, uniqueItems, patternProperties,
minProperties, ...) raises ValueError naming it and its place as a JSON pointer: a
constraint is never silently dropped. So do malformed schemas (a wrong type of value, an
unknown type name, a $ref that resolves to nothing).
"""

from __future__ import annotations

import json
import math
import re
from urllib.parse import unquote

__all__ = ["JSON_OBJECT_GBNF", "JSON_VALUE_GBNF", "json_schema_to_gbnf"]

# The rules every grammar may use (only those reachable from root are written out).
_PRIMITIVES = {
    "space": r'| " " | "\n" [ \t]{0,20}',
    "value": "object | array | string | number | boolean | null",
    "object": r'"{" space (member (space "," space member)* space)? "}"',
    "member": r'string space ":" space value',
    "array": r'"[" space (value (space "," space value)* space)? "]"',
    "string": r'"\"" char* "\""',
    "char": r'[^"\\\x00-\x1F] | escape',
    "escape": r'"\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})',
    "number": r'"-"? integral ("." [0-9]+)? ([eE] [-+]? [0-9]+)?',
    "integer": r'"-"? integral',
    "integral": r'"0" | [1-9] [0-9]{0,15}',
    "boolean": r'"true" | "false"',
    "null": r'"null"',
    "date": r'year "-" month-day | leap-year "-02-29"',
    "year": r'[1-9] [0-9]{3} | "0" [1-9] [0-9]{2} | "00" [1-9] [0-9] | "000" [1-9]',
    "leap-year": r'[0-9]{2} ("0" [48] | [2468] [048] | [13579] [26]) | ("0" [48] | [2468] [048] | [13579] [26]) "00"',
    "month-day": r'("0" [13578] | "1" [02]) "-" (day | "29" | "3" [01]) | ("0" [469] | "11") "-" (day | "29" | "30") '
                 r'| "02-" day',
    "day": r'"0" [1-9] | "1" [0-9] | "2" [0-8]',
    "time": r'hour ":" [0-5] [0-9] ":" [0-5] [0-9] ("." [0-9]+)? ([Zz] | [-+] hour ":" [0-5] [0-9])',
    "hour": r'[01] [0-9] | "2" [0-3]',
    "date-time": r'date [Tt] time',
    "uuid": r'[0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{12}',
}
_FORMATS = ("date", "time", "date-time", "uuid")

_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$schema", "$id", "$comment",
                          "deprecated", "readOnly", "writeOnly", "$defs", "definitions"})
_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
_SUPPORTED = frozenset({"type", "enum", "const", "properties", "required", "additionalProperties", "items",
                        "prefixItems", "minItems", "maxItems", "minLength", "maxLength", "format", "pattern",
                        "anyOf", "oneOf", "$ref", *_BOUNDS})
_LARGEST = 10 ** 16 - 1  # the largest integral part the grammars write (16 digits)
_SEP = 'space "," space'
_QUOTE = r'"\""'
_NAME = re.compile(r"[a-zA-Z0-9_-]+")
_RESERVED = object()  # the body of a rule whose name is taken but whose body is still being built


class _Never(ValueError):
    """No value satisfies a schema: fatal at the top, a forbidden choice inside."""


def json_schema_to_gbnf(schema) -> str:
    """GBNF text whose `root` matches the JSON texts valid under `schema` (dict or bool).
    Raises ValueError for a keyword it does not support, a malformed schema, or a schema
    that no value satisfies."""
    return _Converter(schema).convert()


class _Converter:
    def __init__(self, document):
        self.document = document
        self.rules = {"root": _RESERVED}  # name -> body, in the order they are written
        self.refs = {"#": "root"}  # $ref -> its rule (or _Never once found unsatisfiable)

    def convert(self) -> str:
        self.rules["root"] = self.body(self.document, "#", "root")
        rules = {**self.rules, **{k: v for k, v in _PRIMITIVES.items() if k not in self.rules}}
        keep, todo = {"root"}, ["root"]
        while todo:  # only the rules root reaches (a branch given up may have left some)
            for name in _referenced(rules[todo.pop()]):  # (a _RESERVED body is never reached)
                if name in rules and name not in keep:
                    keep.add(name)
                    todo.append(name)
        return "".join(f"{name} ::= {body}\n" for name, body in rules.items() if name in keep)  # root first

    # --- rules

    def add(self, name: str, body: str) -> str:
        """The name of a rule with this body: a new one, or an existing one of that name."""
        base = _sanitize(name)
        candidate, i = base, 1
        while candidate in self.rules or candidate in _PRIMITIVES:
            if self.rules.get(candidate, _PRIMITIVES.get(candidate)) == body:
                return candidate
            i += 1
            candidate = f"{base}{i}"
        self.rules[candidate] = body
        return candidate

    def reserve(self, name: str) -> str:
        base = _sanitize(name)
        candidate, i = base, 1
        while candidate in self.rules or candidate in _PRIMITIVES:
            i += 1
            candidate = f"{base}{i}"
        self.rules[candidate] = _RESERVED
        return candidate

    def visit(self, schema, path: str, name: str) -> str:
        """A rule name (possibly a primitive's) matching the values valid under schema."""
        body = self.body(schema, path, name)
        return body if _NAME.fullmatch(body) else self.add(name, body)

    # --- schemas

    def body(self, schema, path: str, name: str) -> str:
        """GBNF alternatives matching the values valid under schema."""
        if schema is True:
            return "value"
        if schema is False:
            raise _Never(f"{path}: the schema false allows no value")
        if not isinstance(schema, dict):
            raise ValueError(f"{path}: a schema is an object or a boolean, not {_kind(schema)}")
        _check_keywords(schema, path)
        constraints = [k for k in schema if k not in _ANNOTATIONS]
        if not constraints:
            return "value"
        for keyword, where in (("$ref", "the schema it points to"), ("anyOf", "each branch"), ("oneOf", "each branch")):
            if keyword in schema:
                others = [k for k in constraints if k != keyword]
                if others:
                    raise ValueError(f"{path}: keywords beside {keyword} are not supported ({', '.join(others)}): "
                                     f"move them into {where}")
        if "$ref" in schema:
            return self.ref(schema["$ref"], path)
        for keyword in ("anyOf", "oneOf"):
            if keyword in schema:
                return self.any_of(schema[keyword], f"{path}/{keyword}", name)
        if "enum" in schema or "const" in schema:
            others = [k for k in constraints if k not in ("enum", "const", "type")]
            if others:
                raise ValueError(f"{path}: keywords beside enum/const other than type are not supported "
                                 f"({', '.join(others)})")
            return self.enum(schema, path)
        alternatives, never = [], None
        for t in _types(schema, path):
            try:
                alternatives.append(self.typed(t, schema, path, name))
            except _Never as e:  # e.g. an untyped schema whose strings are all too short
                never = e
        if not alternatives:
            raise never
        return " | ".join(alternatives)

    def typed(self, t: str, schema: dict, path: str, name: str) -> str:
        """The values of type t valid under schema."""
        if t == "object":
            return self.object(schema, path, name)
        if t == "array":
            return self.array(schema, path, name)
        if t == "string":
            return _string(schema, path)
        if t == "number":
            for keyword in _BOUNDS:
                if keyword in schema:
                    raise ValueError(f"{path}/{keyword}: bounds are supported on integers only "
                                     f"(\"type\": \"integer\"), not on numbers")
            return "number"
        if t == "integer":
            return _integer(schema, path)
        return t  # boolean, null

    def ref(self, ref, path: str) -> str:
        if not isinstance(ref, str):
            raise ValueError(f"{path}/$ref: a $ref is a string, not {_kind(ref)}")
        found = self.refs.get(ref)
        if isinstance(found, _Never):
            raise _Never(str(found))
        if found is not None:
            return found
        target = _resolve(self.document, ref, path)
        name = self.reserve(_pointer_name(ref))
        self.refs[ref] = name
        try:
            self.rules[name] = self.body(target, ref, name)
        except _Never as e:
            self.refs[ref] = e
            raise
        return name

    def any_of(self, branches, path: str, name: str) -> str:
        if not isinstance(branches, list) or not branches:
            raise ValueError(f"{path}: expected a non-empty array of schemas, not {_kind(branches)}")
        alternatives = []
        for i, branch in enumerate(branches):
            try:
                rule = self.visit(branch, f"{path}/{i}", f"{name}-{i}")
            except _Never:
                continue
            if rule not in alternatives:
                alternatives.append(rule)
        if not alternatives:
            raise _Never(f"{path}: no branch allows a value")
        return " | ".join(alternatives)

    def enum(self, schema: dict, path: str) -> str:
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list):
                raise ValueError(f"{path}/enum: expected an array, not {_kind(values)}")
            if "const" in schema:
                values = [v for v in values if _json_equal(v, schema["const"])]
        else:
            values = [schema["const"]]
        if "type" in schema:
            types = _types(schema, path)
            values = [v for v in values if any(_has_type(v, t) for t in types)]
        alternatives = []
        for i, v in enumerate(values):
            text = _value_literal(v, f"{path}/enum/{i}" if "enum" in schema else f"{path}/const")
            if text not in alternatives:
                alternatives.append(text)
        if not alternatives:
            raise _Never(f"{path}: no value of enum/const has the type the schema allows")
        return " | ".join(alternatives)

    def object(self, schema: dict, path: str, name: str) -> str:
        properties = schema.get("properties", {})
        required = list(dict.fromkeys(schema.get("required", [])))
        additional = schema.get("additionalProperties", "properties" not in schema)
        if not properties and not required and additional is True:
            return "object"
        listed = [(key, sub, f"{path}/properties/{_pointer_escape(key)}") for key, sub in properties.items()]
        for key in required:
            if key not in properties:
                if additional is False:
                    raise _Never(f"{path}/required: property {key!r} is required but not allowed "
                                 f"(not in properties, and additionalProperties is false)")
                listed.append((key, additional, f"{path}/additionalProperties"))
        members = []  # (rule of '"key": value', required)
        for key, sub, sub_path in listed:
            child = _child(name, key)
            try:
                value = self.visit(sub, sub_path, child)
            except _Never:
                if key in required:
                    raise
                continue  # an optional property no value satisfies: the key is never written
            members.append((self.add(child + "-kv", f'{_literal(_json_text(key))} space ":" space {value}'),
                            key in required))
        extra = None  # rule of '"other key": value' for additional properties
        if additional is not False:
            try:
                value = self.visit(additional, f"{path}/additionalProperties", _child(name, "additional"))
            except _Never:
                value = None
            if value is not None:
                key_rule = self.key_except([key for key, _, _ in listed], name)
                extra = self.add(_child(name, "additional-kv"), f'{key_rule} space ":" space {value}')

        # Any subset of the members, in order, holding the required ones, then extras.
        tail = f"({_SEP} {extra})*" if extra else ""
        first_required = next((i for i, (_, req) in enumerate(members) if req), None)
        firsts = range(len(members) if first_required is None else first_required + 1)
        share = len(firsts) > 1  # several alternatives continue with the same members: rules

        def after(j):  # what may follow a written member when members j.. are left
            if j == len(members):
                return tail
            rule, req = members[j]
            text = _seq(f"{_SEP} {rule}" if req else f"({_SEP} {rule})?", after(j + 1))
            return self.add(_child(name, f"rest{j}"), text) if share and text != tail else text

        alternatives = [_seq(members[j][0], after(j + 1)) for j in firsts]
        if first_required is None and extra:
            alternatives.append(_seq(extra, tail))
        if not alternatives:
            return '"{" space "}"'
        inner = alternatives[0] if len(alternatives) == 1 else "(" + " | ".join(alternatives) + ")"
        if first_required is None:
            return f'"{{" space ({inner} space)? "}}"'
        return f'"{{" space {inner} space "}}"'

    def key_except(self, keys: list, name: str) -> str:
        """A rule for JSON strings (quotes included) other than the keys as json.dumps spells
        them: a trie of the spellings, left at the first character that differs."""
        if not keys:
            return "string"
        trie = {}
        for key in keys:
            node = trie
            for ch in _json_text(key)[1:-1]:
                node = node.setdefault(ch, {})
            node[""] = {}  # the end of a key
        return self.add(_child(name, "additional-key"), f"{_QUOTE} {_paren(_key_rest(trie, 0))}")

    def array(self, schema: dict, path: str, name: str) -> str:
        prefix = schema.get("prefixItems", [])
        lo, hi = schema.get("minItems", 0), schema.get("maxItems")
        if not prefix and schema.get("items", True) is True and lo == 0 and hi is None:
            return "array"
        slots = []  # rules of the prefix items
        cap = None  # the most items any array may hold, past maxItems
        for i, sub in enumerate(prefix):
            if hi is not None and i >= hi:
                break
            try:
                slots.append(self.visit(sub, f"{path}/prefixItems/{i}", _child(name, f"item{i}")))
            except _Never:
                cap = i
                break
        rest = None  # rule of the items after the prefix
        if cap is None and (hi is None or hi > len(prefix)):
            try:
                rest = self.visit(schema.get("items", True), f"{path}/items", _child(name, "item"))
            except _Never:
                pass
        if rest is None and cap is None:
            cap = len(slots)
        if cap is not None:
            hi = cap if hi is None else min(hi, cap)
        if hi is not None and lo > hi:
            raise _Never(f"{path}: no array has at least {lo} items and at most {hi} valid ones")

        def elements(i):  # the elements from the i-th on (a separator before each unless i = 0)
            if hi is not None and i >= hi:
                return ""
            if i < len(slots):
                inner = _seq(slots[i] if i == 0 else f"{_SEP} {slots[i]}", elements(i + 1))
                return inner if i == 0 or i < lo else f"({inner})?"
            need, most = max(lo - i, 0), None if hi is None else hi - i
            if i == 0:
                return _seq(rest, _repeat(f"({_SEP} {rest})", max(need - 1, 0), None if most is None else most - 1))
            return _repeat(f"({_SEP} {rest})", need, most)

        content = elements(0)
        if not content:
            return '"[" space "]"'
        if lo == 0:
            return f'"[" space ({content} space)? "]"'
        return f'"[" space {content} space "]"'


# --- keywords


def _check_keywords(schema: dict, path: str) -> None:
    """Raises ValueError for an unsupported keyword or a supported one with a bad value."""
    for keyword, v in schema.items():
        where = f"{path}/{_pointer_escape(keyword)}"
        if keyword in _ANNOTATIONS:
            continue
        if keyword not in _SUPPORTED:
            raise ValueError(f"{where}: JSON Schema keyword {keyword!r} is not supported")
        if keyword in ("minItems", "maxItems", "minLength", "maxLength"):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{where}: expected a non-negative integer, not {v!r}")
        elif keyword in _BOUNDS:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{where}: expected a number, not {v!r}")
        elif keyword == "properties":
            if not isinstance(v, dict):
                raise ValueError(f"{where}: expected an object of schemas, not {_kind(v)}")
        elif keyword == "required":
            if not isinstance(v, list) or not all(isinstance(k, str) for k in v):
                raise ValueError(f"{where}: expected an array of strings, not {v!r}")
        elif keyword in ("additionalProperties", "items"):
            if isinstance(v, list) and keyword == "items":
                raise ValueError(f"{where}: items as an array (the old tuple form) is not supported: use prefixItems")
            if not isinstance(v, (bool, dict)):
                raise ValueError(f"{where}: expected a schema, not {_kind(v)}")
        elif keyword == "prefixItems":
            if not isinstance(v, list):
                raise ValueError(f"{where}: expected an array of schemas, not {_kind(v)}")
        elif keyword == "format":
            if v not in _FORMATS:
                raise ValueError(f"{where}: format {v!r} is not supported (only {', '.join(_FORMATS)})")
        elif keyword == "pattern":
            if not isinstance(v, str):
                raise ValueError(f"{where}: expected a string (a regular expression), not {_kind(v)}")
            _Regex(v, where).parse()  # (checked here too, so that a schema of any type hears of it)
    if "type" in schema:
        _types(schema, path)


def _types(schema: dict, path: str) -> list:
    """The type names a schema allows (integer dropped where number is there)."""
    if "type" not in schema:
        names = [t for t in _TYPES if t != "integer"]
    else:
        t = schema["type"]
        names = [t] if isinstance(t, str) else t
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{path}/type: expected a type name or a non-empty array of them, not {t!r}")
        for n in names:
            if n not in _TYPES:
                raise ValueError(f"{path}/type: unknown type {n!r} (expected one of {', '.join(_TYPES)})")
    names = list(dict.fromkeys(names))
    if "number" in names and "integer" in names:
        names.remove("integer")
    return names


def _has_type(v, t: str) -> bool:
    """Whether the JSON value v is of type t (1.0 is an integer, as JSON Schema says)."""
    if t == "null":
        return v is None
    if t == "boolean":
        return isinstance(v, bool)
    if t == "string":
        return isinstance(v, str)
    if t == "array":
        return isinstance(v, list)
    if t == "object":
        return isinstance(v, dict)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return t == "number" or isinstance(v, int) or v.is_integer()


def _json_equal(a, b) -> bool:
    """JSON Schema's equality: 1 == 1.0, but true != 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _string(schema: dict, path: str) -> str:
    lo, hi = schema.get("minLength", 0), schema.get("maxLength")
    if "pattern" in schema:
        if lo or hi is not None or "format" in schema:
            raise ValueError(f"{path}: minLength/maxLength/format beside pattern are not supported: "
                             f"write the constraint into the pattern (^[a-z]{{2,8}}$ for 2 to 8 letters)")
        return _pattern_string(schema["pattern"], f"{path}/pattern")
    if "format" in schema:
        if lo or hi is not None:
            raise ValueError(f"{path}: minLength/maxLength beside format are not supported")
        return f"{_QUOTE} {schema['format']} {_QUOTE}"
    if hi is not None and lo > hi:
        raise _Never(f"{path}: no string has minLength {lo} and maxLength {hi}")
    if lo == 0 and hi is None:
        return "string"
    return _seq(_QUOTE, _repeat("char", lo, hi), _QUOTE)


def _integer(schema: dict, path: str) -> str:
    """The integers within the bounds (and 16 digits), written without leading zeros."""
    lo, hi = -_LARGEST, _LARGEST
    if "minimum" in schema:
        lo = max(lo, math.ceil(schema["minimum"]))
    if "exclusiveMinimum" in schema:
        lo = max(lo, math.floor(schema["exclusiveMinimum"]) + 1)
    if "maximum" in schema:
        hi = min(hi, math.floor(schema["maximum"]))
    if "exclusiveMaximum" in schema:
        hi = min(hi, math.ceil(schema["exclusiveMaximum"]) - 1)
    if lo > hi:
        raise _Never(f"{path}: no integer of at most 16 digits lies within the bounds")
    if (lo, hi) == (-_LARGEST, _LARGEST):
        return "integer"
    alternatives = []
    if hi >= 0:
        alternatives += _digits_between(max(lo, 0), hi)
    if lo < 0:
        alternatives.append(f'"-" {_paren(" | ".join(_digits_between(max(-hi, 1), -lo)))}')
    if lo <= 0 <= hi:
        alternatives.append('"-0"')
    return " | ".join(alternatives)


def _digits_between(a: int, b: int) -> list:
    """Alternatives matching the numerals of a..b (0 <= a <= b), no leading zeros."""
    alternatives, full = [], []  # full: lengths (> 1) whose every numeral is in range
    for n in range(len(str(a)), len(str(b)) + 1):
        x, y = max(a, 10 ** (n - 1) if n > 1 else 0), min(b, 10 ** n - 1)
        if n > 1 and (x, y) == (10 ** (n - 1), 10 ** n - 1):
            full.append(n)
        elif x <= y:
            alternatives += _same_length(str(x), str(y))
    if full:  # consecutive lengths, so one repetition covers them
        alternatives.append(f"[1-9] {_repeat('[0-9]', full[0] - 1, full[-1] - 1)}")
    return alternatives


def _same_length(x: str, y: str) -> list:
    """Alternatives matching the digit strings s with x <= s <= y (all of one length)."""
    common = 0
    while common < len(x) and x[common] == y[common]:
        common += 1
    prefix = f'"{x[:common]}"' if common else ""
    if common == len(x):
        return [prefix]
    lo, hi, n = int(x[common]), int(y[common]), len(x) - common - 1
    x_rest, y_rest = x[common + 1:], y[common + 1:]
    any_digits = "" if n == 0 else "[0-9]" if n == 1 else f"[0-9]{{{n}}}"
    parts = []
    if x_rest != "0" * n:  # the lowest first digit, then at least the rest of x
        parts.append(_seq(f'"{lo}"', _paren(" | ".join(_same_length(x_rest, "9" * n)))))
        lo += 1
    last = None
    if y_rest != "9" * n:  # the highest first digit, then at most the rest of y
        last = _seq(f'"{hi}"', _paren(" | ".join(_same_length("0" * n, y_rest))))
        hi -= 1
    if lo <= hi:  # the first digits in between, then any digits
        parts.append(_seq(f'"{lo}"' if lo == hi else f"[{lo}-{hi}]", any_digits))
    if last:
        parts.append(last)
    if not prefix:
        return parts
    return [_seq(prefix, _paren(" | ".join(parts)))]


def _key_rest(node: dict, state: int) -> str:
    """Alternatives for the rest of a JSON string (closing quote included) whose spelling
    leaves the trie at `node`. state: 0 between characters, 1 after a backslash, 2 + k
    after \\u and k hex digits."""
    alternatives = []
    if state == 0 and "" not in node:
        alternatives.append(_QUOTE)  # end here: no key is spelled so
    children = sorted(ch for ch in node if ch)
    for ch in children:
        if state == 0:
            nxt = 1 if ch == "\\" else 0
        elif state == 1:
            nxt = 2 if ch == "u" else 0
        else:
            nxt = 0 if state == 5 else state + 1
        alternatives.append(_seq(_literal(ch), _paren(_key_rest(node[ch], nxt))))
    # a character no key has here, then any characters
    if state == 0 and not children:
        other = "char"
    elif state == 0:
        other = "[^" + r'"\\\x00-\x1F' + "".join(_class_char(ch) for ch in children if ch != "\\") + "]"
        if "\\" not in children:
            other = f"({other} | escape)"
    elif state == 1:
        letters = [ch for ch in '"\\/bfnrt' if ch not in children]
        other = [f"[{''.join(_class_char(ch) for ch in letters)}]"] if letters else []
        if "u" not in children:
            other.append('"u" [0-9a-fA-F]{4}')
        other = _paren(" | ".join(other)) if other else ""
    else:
        digits = [ch for ch in "0123456789abcdefABCDEF" if ch not in children]
        other = _seq(f"[{''.join(digits)}]", _repeat("[0-9a-fA-F]", 5 - state, 5 - state)) if digits else ""
    if other:
        alternatives.append(_seq(other, "char*", _QUOTE))
    return " | ".join(alternatives)


# --- patterns: ECMA-262 regular expressions (a subset) as the text of JSON strings

_SCALARS = ((0, 0xD7FF), (0xE000, 0x10FFFF))  # the Unicode scalar values (no surrogates)
_DIGITS = ((0x30, 0x39),)  # ECMA-262's \d, \w and \s (not Python's Unicode ones)
_WORD = ((0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A))
_SPACE = ((0x09, 0x0D), (0x20, 0x20), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A), (0x2028, 0x2029),
          (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000), (0xFEFF, 0xFEFF))
_LINE_ENDS = ((0x0A, 0x0A), (0x0D, 0x0D), (0x2028, 0x2029))  # what . does not match
_SET_ESCAPES = {"d": _DIGITS, "w": _WORD, "s": _SPACE}
_CHAR_ESCAPES = {"n": 0x0A, "r": 0x0D, "t": 0x09, "f": 0x0C, "v": 0x0B}
_UNSUPPORTED_ESCAPES = {"b": "the word boundary \\b", "B": "the non-boundary \\B", "c": "control escapes \\cX",
                        "k": "named backreferences \\k<...>", "p": "Unicode property escapes \\p{...}",
                        "P": "Unicode property escapes \\P{...}"}
_HEX = "0123456789abcdefABCDEF"
_JSON_ESCAPED = ((0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C))  # the characters a JSON string escapes
_JSON_SHORT = {0x22: '"', 0x5C: "\\", 0x08: "b", 0x0C: "f", 0x0A: "n", 0x0D: "r", 0x09: "t"}  # \" \\ \b ...
_SIMPLE_QUANTIFIERS = {"*": (0, None), "+": (1, None), "?": (0, 1)}
_BRACES = re.compile(r"\{([0-9]+)(,([0-9]*))?\}")  # {m} {m,} {m,n}
_NOTHING = ("set", ())  # the tree that matches no string


def _pattern_string(pattern: str, path: str) -> str:
    """A sequence matching the JSON strings (quotes included) whose value the anchored
    pattern matches, each character spelled as json.dumps(..., ensure_ascii=False) does."""
    alternatives = _emit(_Regex(pattern, path).parse())
    if not alternatives:
        raise _Never(f"{path}: no string matches the pattern {pattern!r}")
    inner = alternatives[0] if len(alternatives) == 1 else [_group(alternatives)]
    return " ".join(_concat(_concat([_QUOTE], inner), [_QUOTE]))


class _Regex:
    """Parses an anchored pattern into a tree: ("set", ranges) one character of a code point
    set, ("seq", trees), ("alt", trees), ("rep", tree, lo, hi) (hi None: no limit). Raises
    ValueError for what it does not support, naming it, the place and the pattern."""

    def __init__(self, text: str, path: str):
        self.text, self.path, self.pos = text, path, 0

    def error(self, message: str, pos=None):
        return ValueError(f"{self.path}: {message} (at {self.pos if pos is None else pos} in pattern {self.text!r})")

    def unanchored(self):
        return ValueError(f"{self.path}: patterns must be anchored (^...$, each top-level alternative), and "
                          f"{self.text!r} is not; for a match anywhere write ^[\\s\\S]*(...)[\\s\\S]*$")

    def peek(self, k: int = 0) -> str:
        i = self.pos + k
        return self.text[i] if i < len(self.text) else ""

    def parse(self):
        branches = []
        while True:
            if self.peek() != "^":
                raise self.unanchored()
            self.pos += 1
            branches.append(self.sequence(top=True))
            if self.peek() != "$":  # the end or a "|" before any "$"
                raise self.unanchored()
            self.pos += 1
            if self.pos == len(self.text):
                return _alt_tree(branches)
            self.pos += 1  # "|" (sequence stops at a "$" only before the end or a "|")

    def sequence(self, top: bool):
        """Items up to "|", ")" (in a group), the end, or at the top the final "$"."""
        items = []
        while self.pos < len(self.text):
            c = self.peek()
            if c == "|" or (c == ")" and not top) or (c == "$" and top and self.peek(1) in ("", "|")):
                break
            if c == ")":
                raise self.error("an unbalanced ')'")
            if c in "^$":
                raise self.error(f"{c!r} inside a pattern (supported: ^ at its start, $ at its end)")
            if c in "*+?" or (c == "{" and self.quantifier(peek=True)):
                raise self.error(f"the quantifier {c!r} with nothing to repeat")
            if c in "{}]":
                raise self.error(f"a lone {c!r} (write \\{c} for the character)")
            if c == "(":
                atom = self.group()
            elif c == "[":
                atom = ("set", self.char_class())
            elif c == ".":
                self.pos += 1
                atom = ("set", _minus(_SCALARS, _LINE_ENDS))
            elif c == "\\":
                e = self.escape(in_class=False)
                atom = ("set", _ranges([(e, e)]) if isinstance(e, int) else e)
            else:
                self.pos += 1
                atom = ("set", _ranges([(ord(c), ord(c))]))
            bounds = self.quantifier()
            if bounds is not None:
                self.pos += self.peek() == "?"  # lazy: the same strings
                if self.quantifier(peek=True):
                    raise self.error("a quantifier after a quantifier (a** or a possessive a*+)")
                atom = _rep_tree(atom, *bounds)
            items.append(atom)
        return _seq_tree(items)

    def quantifier(self, peek: bool = False):
        """(lo, hi) of the quantifier here (pos after it unless peek), or None."""
        c = self.peek()
        if c in _SIMPLE_QUANTIFIERS:
            bounds, end = _SIMPLE_QUANTIFIERS[c], self.pos + 1
        else:
            m = _BRACES.match(self.text, self.pos)
            if not m:
                return None
            lo = int(m.group(1))
            hi = lo if not m.group(2) else int(m.group(3)) if m.group(3) else None
            if hi is not None and hi < lo:
                raise self.error(f"the quantifier {m.group()} has its maximum below its minimum")
            bounds, end = (lo, hi), m.end()
        if not peek:
            self.pos = end
        return bounds

    def group(self):
        start = self.pos
        self.pos += 1
        if self.peek() == "?":
            if self.peek(1) == ":":
                self.pos += 2
            else:
                ahead = self.text[self.pos:self.pos + 3]
                what = ("lookahead (?=...)" if ahead.startswith("?=") else
                        "negative lookahead (?!...)" if ahead.startswith("?!") else
                        "lookbehind (?<=...)" if ahead == "?<=" else
                        "negative lookbehind (?<!...)" if ahead == "?<!" else
                        "named groups (?<name>...)" if ahead.startswith("?<") else
                        "Python's (?P...) groups" if ahead.startswith("?P") else
                        "flags and other (?...) groups")
                raise self.error(f"{what} is not supported", start)
        branches = [self.sequence(top=False)]
        while self.peek() == "|":
            self.pos += 1
            branches.append(self.sequence(top=False))
        if self.peek() != ")":
            raise self.error("an unclosed '('", start)
        self.pos += 1
        return _alt_tree(branches)

    def char_class(self) -> tuple:
        start = self.pos
        self.pos += 1
        negated = self.peek() == "^"
        self.pos += negated
        if self.peek() == "]":
            raise self.error("the class [] or [^] (ECMA-262 and Python's re read it differently; "
                             "write \\] for the character)", start)
        pairs = []
        while True:
            c, at = self.peek(), self.pos
            if c == "":
                raise self.error("an unclosed '['", start)
            if c == "]":
                self.pos += 1
                ranges = _ranges(pairs)
                return _complement(ranges) if negated else ranges
            lo = self.class_atom()
            if self.peek() == "-" and self.peek(1) not in ("]", ""):
                self.pos += 1
                hi = self.class_atom()
                if not isinstance(lo, int) or not isinstance(hi, int):
                    raise self.error("a range with a class escape at an end (like [\\d-z])", at)
                if hi < lo:
                    raise self.error("a range out of order", at)
                pairs.append((lo, hi))
            else:
                pairs += [(lo, lo)] if isinstance(lo, int) else lo

    def class_atom(self):
        if self.peek() == "\\":
            return self.escape(in_class=True)
        self.pos += 1
        return ord(self.text[self.pos - 1])

    def escape(self, in_class: bool):
        """The code point (int) or set (ranges) of the escape here; pos after it."""
        start, e = self.pos, self.peek(1)
        self.pos += 2
        if e == "":
            raise self.error("a lone backslash at the end", start)
        if e.lower() in _SET_ESCAPES:
            ranges = _ranges(_SET_ESCAPES[e.lower()])
            return _complement(ranges) if e.isupper() else ranges
        if e in _CHAR_ESCAPES:
            return _CHAR_ESCAPES[e]
        if e == "b" and in_class:
            return 0x08  # backspace
        if e == "0" and not ("0" <= self.peek() <= "9"):
            return 0
        if "0" <= e <= "9":
            raise self.error(f"backreferences and octal escapes (\\{e}) are not supported", start)
        if e in ("x", "u"):
            if e == "u" and self.peek() == "{":
                raise self.error("the escape \\u{...} (of the u flag) is not supported: write \\uHHHH", start)
            n = 2 if e == "x" else 4
            digits = self.text[self.pos:self.pos + n]
            if len(digits) != n or not all(d in _HEX for d in digits):
                raise self.error(f"\\{e} needs {n} hex digits", start)
            self.pos += n
            cp = int(digits, 16)
            if 0xD800 <= cp <= 0xDFFF:
                raise self.error(f"the surrogate escape \\u{digits} is not supported: write the character itself",
                                 start)
            return cp
        if e in _UNSUPPORTED_ESCAPES:
            raise self.error(f"{_UNSUPPORTED_ESCAPES[e]} is not supported", start)
        if e.isascii() and e.isprintable() and not e.isalnum() and e != " ":
            return ord(e)  # \. \- \/ ...
        raise self.error(f"the escape \\{e} is not supported", start)


# Trees. A repetition's item never matches the empty string (then GBNF needs no nullable
# repetitions, which a matcher that expands rules eagerly finds left-recursive).


def _seq_tree(items: list):
    return items[0] if len(items) == 1 else ("seq", tuple(items))


def _alt_tree(branches: list):
    return branches[0] if len(branches) == 1 else ("alt", tuple(branches))


def _rep_tree(item, lo: int, hi):
    if _nullable(item):  # item{lo,hi} = (item less the empty string){0,hi}
        item, lo = _nonempty(item), 0
    return ("rep", item, lo, hi)


def _nullable(tree) -> bool:
    kind = tree[0]
    if kind == "set":
        return False
    if kind == "seq":
        return all(_nullable(x) for x in tree[1])
    if kind == "alt":
        return any(_nullable(x) for x in tree[1])
    return tree[2] == 0 or _nullable(tree[1])


def _nonempty(tree):
    """A tree of the non-empty strings tree matches."""
    if not _nullable(tree):
        return tree
    kind = tree[0]
    if kind == "seq":  # every item nullable: a non-empty first item then the rest, or a non-empty rest
        items = tree[1]
        if not items:
            return _NOTHING
        rest = ("seq", items[1:])
        return _alt_tree([_seq_tree([_nonempty(items[0]), *items[1:]]), _nonempty(rest)])
    if kind == "alt":
        return _alt_tree([_nonempty(x) for x in tree[1]])
    item, _, hi = tree[1:]  # (its item is never nullable)
    return _NOTHING if hi == 0 else ("rep", item, 1, hi)


def _emit(tree) -> list:
    """The GBNF of a tree: a list of alternatives, each a list of items (a literal, a class,
    a group, each perhaps with a postfix operator); [] when the tree matches nothing."""
    kind = tree[0]
    if kind == "set":
        return _set_spellings(tree[1])
    if kind == "alt":
        out = []
        for branch in tree[1]:
            out += [a for a in _emit(branch) if a not in out]
        return out
    if kind == "seq":
        items = []
        for x in tree[1]:
            alternatives = _emit(x)
            if not alternatives:
                return []
            items = _concat(items, alternatives[0] if len(alternatives) == 1 else [_group(alternatives)])
        return [items]
    item, lo, hi = tree[1:]
    alternatives = _emit(item)
    if not alternatives or hi == 0:
        return [[]] if lo == 0 else []
    if (lo, hi) == (1, 1):
        return alternatives
    if len(alternatives) == 1 and len(alternatives[0]) == 1 and alternatives[0][0][-1] not in "*+?}":
        unit = alternatives[0][0]
    else:
        unit = _group(alternatives)
        if unit[-1] == "?":
            unit = f"({unit})"
    return [[_repeat(unit, lo, hi)]]


def _group(alternatives: list) -> str:
    """The alternatives as one item."""
    filled = [" ".join(a) for a in alternatives if a]
    if len(filled) < len(alternatives):  # one is empty
        if len(filled) == 1 and " " not in filled[0] and filled[0][-1] not in "*+?}":
            return filled[0] + "?"
        return f"({' | '.join(filled)})?"
    return f"({' | '.join(filled)})"


def _concat(a: list, b: list) -> list:
    """Two sequences of items back to back, a literal ending a and one starting b merged."""
    if a and b and _is_literal(a[-1]) and _is_literal(b[0]):
        return a[:-1] + [a[-1][:-1] + b[0][1:]] + b[1:]
    return a + b


def _is_literal(item: str) -> bool:
    return item[0] == '"' and item[-1] == '"'  # (a literal with a postfix ends otherwise)


def _set_spellings(ranges: tuple) -> list:
    """Alternatives matching one character of the set as JSON spells it in a string: raw, or
    escaped where JSON must escape it (\\" \\\\ \\b \\f \\n \\r \\t, other controls \\u00xx)."""
    alternatives = []
    raw = _minus(ranges, _JSON_ESCAPED)
    if raw:
        alternatives.append([_class(raw)])
    escaped = [cp for lo, hi in _intersect(ranges, _JSON_ESCAPED) for cp in range(lo, hi + 1)]
    if escaped:
        after = []  # what may follow the backslash
        short = [_JSON_SHORT[cp] for cp in escaped if cp in _JSON_SHORT]
        if short:
            after.append([_class(_ranges((ord(ch), ord(ch)) for ch in short))])
        for high in (0, 1):
            low = [f"{cp & 15:x}" for cp in escaped if cp not in _JSON_SHORT and cp >> 4 == high]
            if low:
                after.append(_concat([f'"u00{high}"'], [_class(_ranges((ord(ch), ord(ch)) for ch in low))]))
        alternatives.append(_concat([_literal("\\")], after[0] if len(after) == 1 else [_group(after)]))
    return alternatives


def _class(ranges: tuple) -> str:
    """A GBNF item matching one code point of the (non-empty) set: a literal, a class or a
    negated class, whichever has fewer ranges."""
    if len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
        return _literal(chr(ranges[0][0]))
    complement = _complement(ranges)
    negated = len(complement) < len(ranges)

    def spell(lo, hi):
        a, b = _class_char(chr(lo)), _class_char(chr(hi))
        return a if lo == hi else a + b if hi == lo + 1 else f"{a}-{b}"

    return ("[^" if negated else "[") + "".join(spell(*r) for r in (complement if negated else ranges)) + "]"


def _ranges(pairs) -> tuple:
    """Sorted disjoint (lo, hi) ranges of the code points in pairs, surrogates cut out."""
    merged = []
    for lo, hi in sorted(pairs):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return tuple((max(lo, a), min(hi, b)) for lo, hi in merged for a, b in _SCALARS if max(lo, a) <= min(hi, b))


def _complement(ranges: tuple) -> tuple:
    """The scalar values not in ranges."""
    out, nxt = [], 0
    for lo, hi in ranges:
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= 0x10FFFF:
        out.append((nxt, 0x10FFFF))
    return _ranges(out)


def _minus(a: tuple, b: tuple) -> tuple:
    return _complement(_ranges(_complement(a) + tuple(b)))


def _intersect(a: tuple, b: tuple) -> tuple:
    return _complement(_ranges(_complement(a) + _complement(_ranges(b))))


# --- GBNF text


def _value_literal(v, path: str) -> str:
    """A sequence matching the JSON value v as json.dumps writes it, with whitespace
    between the tokens of objects and arrays."""
    if isinstance(v, dict):
        members = [f'{_literal(_json_text(k))} space ":" space {_value_literal(x, path)}' for k, x in v.items()]
        return _seq('"{" space', f" {_SEP} ".join(members), "space" if members else "", '"}"')
    if isinstance(v, list):
        items = [_value_literal(x, path) for x in v]
        return _seq('"[" space', f" {_SEP} ".join(items), "space" if items else "", '"]"')
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"{path}: {v} is not a JSON value")
    if v is None or isinstance(v, (bool, int, float, str)):
        return _literal(_json_text(v))
    raise ValueError(f"{path}: {_kind(v)} is not a JSON value")


def _json_text(v) -> str:
    """json.dumps(v, ensure_ascii=False), lone surrogates escaped (they are no characters)."""
    return re.sub("[\ud800-\udfff]", lambda m: f"\\u{ord(m.group()):04x}", json.dumps(v, ensure_ascii=False))


_LITERAL_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_CLASS_ESCAPES = {"\\": "\\\\", "]": "\\]", "[": "\\[", '"': '\\"', "-": "\\x2D", "^": "\\x5E"}


def _hex_escape(ch: str) -> str:
    cp = ord(ch)
    return f"\\x{cp:02X}" if cp < 0x100 else f"\\u{cp:04X}" if cp < 0x10000 else f"\\U{cp:08X}"


def _literal(s: str) -> str:
    """A GBNF literal matching exactly s."""
    return '"' + "".join(_LITERAL_ESCAPES.get(ch) or (ch if ch.isprintable() else _hex_escape(ch)) for ch in s) + '"'


def _class_char(ch: str) -> str:
    return _CLASS_ESCAPES.get(ch) or (ch if ch.isprintable() else _hex_escape(ch))


def _seq(*parts: str) -> str:
    return " ".join(p for p in parts if p)


def _paren(alternatives: str) -> str:
    """alternatives as one item of a sequence."""
    return alternatives if _NAME.fullmatch(alternatives) or " " not in alternatives else f"({alternatives})"


def _repeat(item: str, lo: int, hi) -> str:
    """item repeated lo..hi times (hi None: no limit)."""
    if hi == 0:
        return ""
    if hi is None:
        return item + ("*" if lo == 0 else "+" if lo == 1 else f"{{{lo},}}")
    if lo == hi:
        return item if lo == 1 else f"{item}{{{lo}}}"
    return item + ("?" if (lo, hi) == (0, 1) else f"{{{lo},{hi}}}")


_TOKENS = re.compile(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|\{[^}]*\}|([a-zA-Z0-9_-]+)')


def _referenced(body: str) -> set:
    """The rule names a body mentions."""
    return {m.group(1) for m in _TOKENS.finditer(body) if m.group(1)}


# --- names and pointers


def _sanitize(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]+", "-", name).strip("-") or "x"  # (uniqueness is add's)


def _child(name: str, suffix: str) -> str:
    return suffix if name == "root" else f"{name}-{suffix}"


def _pointer_escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _pointer_name(ref: str) -> str:
    """The rule name for a $ref: its last pointer segment."""
    segment = ref.rstrip("/").rsplit("/", 1)[-1]
    return unquote(segment).replace("~1", "/").replace("~0", "~") or "ref"


def _resolve(document, ref: str, path: str):
    """The schema a local $ref points to."""
    if not ref.startswith("#") or (len(ref) > 1 and not ref.startswith("#/")):
        raise ValueError(f"{path}/$ref: only local JSON pointers ('#/$defs/NAME') are supported, not {ref!r}")
    target = document
    for segment in ref[2:].split("/") if len(ref) > 1 else []:
        key = unquote(segment).replace("~1", "/").replace("~0", "~")
        if isinstance(target, dict) and key in target:
            target = target[key]
        elif isinstance(target, list) and key.isdigit() and int(key) < len(target):
            target = target[int(key)]
        else:
            raise ValueError(f"{path}/$ref: {ref!r} resolves to nothing (no {key!r})")
    return target


def _kind(v) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(v), type(v).__name__)


JSON_VALUE_GBNF = json_schema_to_gbnf(True)
JSON_OBJECT_GBNF = json_schema_to_gbnf({"type": "object"})
