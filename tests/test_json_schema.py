"""JSON Schema -> GBNF (pygpt.json_schema), checked with an independent GBNF recognizer
(tests/reference_grammar.py) and the jsonschema package; and tests of that recognizer.

A converted grammar must match valid instances as json.dumps writes them (compact, default
separators, indent=2), reject instances jsonschema rejects, and generate (by random
derivation) only text that json.loads reads and jsonschema accepts.
"""

import datetime
import itertools
import json
import random
import re
import time

import jsonschema
import pytest

import pygpt
from pygpt.json_schema import JSON_OBJECT_GBNF, JSON_VALUE_GBNF, json_schema_to_gbnf
from reference_grammar import ReferenceGrammar

# ======================================================================================
# The reference recognizer
# ======================================================================================

GRAMMAR_CASES = [
    # literals and escapes
    ('root ::= "abc"', ["abc"], ["", "ab", "abcd", "abd", "ABC"]),
    ('root ::= ""', [""], ["a", " "]),
    ('root ::= "a" "" "b" "c"', ["abc"], ["ab", "a b c"]),
    (r'root ::= "\n\r\t\\\"\[\]"', ['\n\r\t\\"[]'], ["\\n", '\n\r\t\\"['], ),
    (r'root ::= "\x41\u00e9\U0001F600"', ["A\u00e9\U0001F600"], ["A", "Ae\U0001F600", "\\x41"]),
    ('root ::= "h\u00e9llo \u4e16\u754c \U0001F600"', ["h\u00e9llo \u4e16\u754c \U0001F600"], ["hello"]),
    ('root ::= "a#b[c]("', ["a#b[c]("], ["a"]),  # no comment, class or group inside a literal
    # character classes
    ("root ::= [a-c]", ["a", "b", "c"], ["d", "", "ab", "A", "`"]),
    ("root ::= [a-cx-z0_]", ["a", "c", "x", "z", "0", "_"], ["d", "w", "1", "-"]),
    ("root ::= [^a-c]", ["d", "\u00e9", "\U0001F600", "\n", "\U0010FFFF"], ["a", "b", "c", "", "de", "\ud800"]),
    ("root ::= [-a]", ["-", "a"], ["b", ""]),
    ("root ::= [a-]", ["-", "a"], ["b"]),
    ("root ::= [^-]", ["a"], ["-"]),
    ("root ::= [^-a]", ["b"], ["-", "a"]),
    (r"root ::= [\]\[\\\"]", ["]", "[", "\\", '"'], ["a", ""]),
    (r"root ::= [\x00-\x1F]", ["\x00", "\x1f", "\n"], [" ", "a"]),
    (r"root ::= [\u00e0-\u00ff\U0001F600]", ["\u00e0", "\u00ff", "\U0001F600"], ["a", "\U0001F601", "\u00df"]),
    ("root ::= [\u00e9\u4e16]", ["\u00e9", "\u4e16"], ["e"]),
    ('root ::= [^"\\\\]', ["a", "'"], ['"', "\\"]),
    (r"root ::= [\x00-\U0010FFFF]", ["a", "\U0010FFFF", "\ue000"], ["\ud800", "\udfff"]),  # never a surrogate
    # any code point
    ("root ::= .", ["a", "\n", "\x00", "\U0001F600", "\U0010FFFF", "\uffff", "\ue000"], ["", "ab", "\ud800", "\udfff"]),
    ('root ::= . "b" .', ["abc", "\u00e9b\u00e9"], ["ab", "abcd"]),
    # groups and alternatives
    ('root ::= ("a" | "b") "c"', ["ac", "bc"], ["c", "abc", "a"]),
    ('root ::= "a" | | "b"', ["a", "", "b"], ["ab"]),
    ('root ::= ("a" ("b" | "c" ("d" | )))', ["ab", "ac", "acd"], ["a", "ad", "abd"]),
    ('root ::= () "x" ( )', ["x"], [""]),
    # postfix operators
    ('root ::= "a"*', ["", "a", "aaaa"], ["b", "ab"]),
    ('root ::= "ab"+', ["ab", "abab"], ["", "a", "aba"]),
    ('root ::= "a"? "b"', ["b", "ab"], ["aab", "a"]),
    ('root ::= "a"{3}', ["aaa"], ["aa", "aaaa"]),
    ('root ::= "a"{2,}', ["aa", "aaaaaa"], ["a", ""]),
    ('root ::= "a"{1,3}', ["a", "aa", "aaa"], ["", "aaaa"]),
    ('root ::= "a"{0,0} "b"', ["b"], ["ab"]),
    ('root ::= "a"{0} "b"{0,} "c"{ 2 , 3 }', ["cc", "bccc"], ["acc", "c", "cccc"]),
    ('root ::= "a" *', ["", "aa"], ["b"]),  # whitespace before the operator
    ('root ::= [ab]{2}', ["aa", "ab", "ba", "bb"], ["a", "abc", ""]),
    ('root ::= ("x" "y"){2}', ["xyxy"], ["xy", "xyx", "xxyy"]),
    ('root ::= "a"{2}{2}', ["aaaa"], ["aa", "aaa", "aaaaaa"]),  # operators chain
    ('root ::= "a"+? "b"', ["b", "ab", "aaab"], ["a"]),
    ('root ::= "ab"?*', ["", "ab", "abab"], ["a", "aba"]),
    ('root ::= ("a" | "b"){1,2}+', ["a", "ab", "abba", "babab"], [""]),
    ('root ::= "" *', [""], ["a"]),
    # rules: nullable, left and right recursion, cycles
    ('root ::= a "x"\na ::= | "a" a', ["x", "ax", "aaax"], ["", "xa", "a"]),
    ('root ::= root "a" | "b"', ["b", "ba", "baaa"], ["", "a", "ab", "bab"]),
    ('root ::= e e "x" e\ne ::= | "e"', ["x", "ex", "eex", "xe", "eexe"], ["eeex", "xee", "e"]),
    ('root ::= a\na ::= b\nb ::= a | "z"', ["z"], ["", "zz"]),
    ('root ::= s\ns ::= s s | "(" s ")" |', ["", "()", "(())()", "()()()", "((()))"], ["(", ")(", "(()", "())"]),
    ('root ::= e* "x"\ne ::= | "e"', ["x", "eex"], ["xe"]),  # a nullable repeated item
    ('root ::= a "c"\na ::= b\nb ::= "b" | ', ["c", "bc"], ["bbc"]),
    ('root ::= a\na ::= "(" a ")" | "x"', ["x", "(x)", "(((x)))"], ["()", "((x)", "(x))"]),
    # layout: comments, multi-line rules, a body ends at the next NAME ::=
    ('# a comment\nroot ::= # here too\n  "a" # and "b" here\n  | "c" # end', ["a", "c"], ["b", "ac"]),
    ('root ::=\n  "a"\n  "b"\n\nother ::=\n  "x"', ["ab"], ["a", "abx"]),
    ('root ::= x y ::= "q" x ::= "a"', ["a"], ["aq", "q"]),
    ('root::="a"b\nb::="b"', ["ab"], ["a"]),
    ("root ::= my-rule_2\nmy-rule_2 ::= \"k\"\n", ["k"], [""]),
    ('root ::= "a"\t|\r\n"b"', ["a", "b"], ["\t"]),
]


@pytest.mark.parametrize("text, yes, no", GRAMMAR_CASES)
def test_reference_grammar_matches(text, yes, no):
    g = ReferenceGrammar(text)
    for s in yes:
        assert g.matches(s), (text, s)
        assert g.is_prefix(s), (text, s)
    for s in no:
        assert not g.matches(s), (text, s)


def test_reference_grammar_prefixes():
    g = ReferenceGrammar('root ::= "ab" "c"*')
    assert g.is_prefix("") and g.is_prefix("a") and g.is_prefix("ab") and g.is_prefix("abcc")
    assert not g.matches("") and not g.matches("a") and g.matches("ab")
    assert not g.is_prefix("b") and not g.is_prefix("abx") and not g.is_prefix("abcb")
    # a rule that never completes: prefixes exist, matches do not
    g = ReferenceGrammar('root ::= "a" loop\nloop ::= "b" loop')
    assert g.is_prefix("abbb") and not g.matches("ab") and not g.is_prefix("abc")
    # prefixes of a JSON value
    g = ReferenceGrammar(JSON_VALUE_GBNF)
    assert g.is_prefix('{"a": [1, tr') and not g.matches('{"a": [1, tr')
    assert not g.is_prefix('{"a": [1, tx')
    assert not g.is_prefix("{,")


GRAMMAR_ERRORS = [
    ("", "no 'root' rule"),
    ('a ::= "x"', "no 'root' rule"),
    ('root ::= "a"\nroot ::= "b"', "defined twice at 2:1"),
    ("root ::= foo", "undefined rule 'foo' at 1:10"),
    ('root ::= "a"\n  b ::= c', "undefined rule 'c' at 2:9"),
    ('root ::= "abc', "unterminated literal at 1:10"),
    ("root ::= [abc", "unterminated character class at 1:10"),
    ('root ::= [a\\', "unterminated character class"),
    ('root ::= ("a"', "expected ')'"),
    ('root ::= ("a" b ::= "c")', "expected ')'"),
    ('root ::= "a")', "unexpected ')'"),
    (r'root ::= "\q"', "unknown escape '\\q' at 1:11"),
    (r"root ::= [\-]", "unknown escape '\\-'"),
    (r'root ::= "\x4"', "needs 2 hex digits"),
    (r'root ::= "\x4g"', "needs 2 hex digits"),
    (r'root ::= "\u12"', "needs 4 hex digits"),
    (r'root ::= "\U0000004"', "needs 8 hex digits"),
    (r'root ::= "\uD800"', "no Unicode scalar value"),
    (r'root ::= [\uDFFF]', "no Unicode scalar value"),
    (r'root ::= "\U00110000"', "no Unicode scalar value"),
    ('root ::= "\ud800"', "no Unicode scalar value"),
    ("root ::= [z-a]", "is below its start U+007A at 1:11"),
    ("root ::= *", "postfix operator '*' with nothing before it at 1:10"),
    ('root ::= "a" | +', "postfix operator '+'"),
    ("root ::= ( ? )", "postfix operator '?'"),
    ("root ::= {2}", "postfix operator '{'"),
    ('root ::= "a"{3,2}', "max below min"),
    ('root ::= "a"{,2}', "expected a number"),
    ('root ::= "a"{}', "expected a number"),
    ('root ::= "a"{2', "expected '}'"),
    ('root ::= "a"{2,3', "expected '}'"),
    ('root ::= "a"{a}', "expected a number"),
    ('root "a"', "expected '::='"),
    ('::= "a"', "expected a rule name"),
    ('root ::= "a" @', "unexpected character '@' at 1:14"),
    ('root ::= "a"\n\n  % ::= "b"', "unexpected character '%' at 3:3"),
    ('root ::= "a" ::= "b"', "unexpected character ':'"),
]


@pytest.mark.parametrize("text, message", GRAMMAR_ERRORS)
def test_reference_grammar_errors(text, message):
    with pytest.raises(ValueError) as e:
        ReferenceGrammar(text)
    assert message in str(e.value)
    assert re.search(r"at \d+:\d+", str(e.value))


SAMPLED = [  # (grammar, how many different strings 200 samples have at least)
    ("root ::= [a-c]{2}", 9),
    ('root ::= "(" root ")" | "x"', 5),
    ('root ::= root | "a"', 1),  # a unit cycle: the sampler must still end
    ('root ::= s\ns ::= s s | "(" s ")" |', 20),
    ('root ::= ("a" | "b"){1,3} [^a-z]? .', 50),
    ('root ::= "a" (b | "c" root)\nb ::= "b"*', 10),
    (JSON_VALUE_GBNF, 50),
]


@pytest.mark.parametrize("text, different", SAMPLED)
def test_reference_grammar_samples_match(text, different):
    g = ReferenceGrammar(text)
    rng = random.Random(7)
    samples = [g.sample(rng, max_depth=8) for _ in range(200)]
    for s in samples:
        assert g.matches(s), (text, s)
    assert len(set(samples)) >= different


def test_reference_grammar_sample_variety_and_depth():
    g = ReferenceGrammar("root ::= [a-c]{2}")
    rng = random.Random(1)
    assert {g.sample(rng) for _ in range(300)} == {a + b for a in "abc" for b in "abc"}
    g = ReferenceGrammar('root ::= "(" root ")" | "x"')
    lengths = {len(g.sample(rng, max_depth=5)) for _ in range(300)}
    assert max(lengths) == 11 and 1 in lengths  # depth 5: five pairs at most, then the shortest
    with pytest.raises(ValueError):
        ReferenceGrammar('root ::= "a" root').sample(rng)


def test_reference_grammar_speed():
    g = ReferenceGrammar(JSON_VALUE_GBNF)
    doc = json.dumps({"name": "x" * 40, "ids": list(range(25)), "nested": {"a": [1.5, -2e10, None, True, "h\u00e9\n"]}},
                     indent=2)
    assert 300 <= len(doc) < 400
    best = min(_timed(g.matches, doc) for _ in range(3))
    assert best < 0.05, f"{len(doc)} characters took {best * 1e3:.0f} ms"


def _timed(f, *args):
    t = time.perf_counter()
    assert f(*args)
    return time.perf_counter() - t


# ======================================================================================
# The converter
# ======================================================================================

_GRAMMARS = {}


def grammar(schema):
    key = json.dumps(schema)
    if key not in _GRAMMARS:
        _GRAMMARS[key] = ReferenceGrammar(json_schema_to_gbnf(schema))
    return _GRAMMARS[key]


def validator(schema):
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


STYLES = {"compact": dict(separators=(",", ":")), "default": {}, "indent": dict(indent=2)}


class Text(str):
    """An instance given as JSON text (to write what json.dumps cannot: repeated keys, ...)."""


def texts(instance):
    if isinstance(instance, Text):
        return [str(instance)]
    return [json.dumps(instance, **style) for style in STYLES.values()]


TREE = {
    "$defs": {"node": {"type": "object",
                       "properties": {"value": {"type": "integer"},
                                      "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
                       "required": ["value"]}},
    "$ref": "#/$defs/node",
}
SHAPE = {
    "oneOf": [
        {"type": "object", "properties": {"kind": {"const": "circle"}, "r": {"type": "number"}},
         "required": ["kind", "r"]},
        {"type": "object", "properties": {"kind": {"const": "rect"}, "w": {"type": "number"}, "h": {"type": "number"}},
         "required": ["kind", "w", "h"]},
    ],
}

STAMPS = {"d": "2024-01-01", "t": "12:00:00Z", "dt": "2000-01-01T00:00:00Z",
          "u": "123e4567-e89b-12d3-a456-426614174000"}

# (id, schema, valid instances, invalid instances)
CASES = [
    ("person", {
        "type": "object",
        "title": "Person", "description": "annotations are ignored", "$comment": "x", "examples": [{}],
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 8, "default": "x"},
            "age": {"type": "integer", "minimum": 0, "maximum": 150, "deprecated": False},
            "email": {"type": "string", "readOnly": True, "writeOnly": False},
            "admin": {"type": "boolean"},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    }, [
        {"name": "Ada", "age": 36},
        {"name": "B\u00e9", "age": 0, "admin": True},
        {"name": "12345678", "age": 150, "email": "a@b.c\n\"\\", "admin": False},
    ], [
        {"name": "Ada"}, {"age": 36}, {"name": "", "age": 3}, {"name": "123456789", "age": 3},
        {"name": "A", "age": -1}, {"name": "A", "age": 151}, {"name": "A", "age": "3"},
        {"name": "A", "age": 3, "other": 1}, {"name": "A", "age": 3, "admin": None}, [], "Ada", None,
    ]),
    ("nested", {
        "type": "object",
        "properties": {
            "user": {"type": "object", "properties": {"id": {"type": "integer"}, "email": {"type": "string"}},
                     "required": ["id"]},
            "meta": {"type": "object", "additionalProperties": {"type": "number"}},
            "any": {},
        },
        "required": ["user"],
    }, [
        {"user": {"id": 1}},
        {"user": {"id": -7, "email": ""}, "meta": {}, "any": [1, {"x": None}]},
        {"user": {"id": 0}, "meta": {"a": 1.5, "b": -2e-07, "": 3}},
    ], [
        {}, {"user": {}}, {"user": {"id": "1"}}, {"user": {"id": 1}, "meta": {"a": "b"}},
        {"user": {"id": 1}, "meta": []}, {"meta": {}},
    ]),
    ("array-bounds", {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 4}, [
        [1, 2], [1, 2, 3], [0, -1, 2, 3],
    ], [
        [], [1], [1, 2, 3, 4, 5], [1, "2"], [1.5, 2], {}, 1,
    ]),
    ("tuple", {"type": "array", "prefixItems": [{"type": "string"}, {"type": "boolean"}], "items": False,
               "minItems": 1},
     [["a"], ["a", True]],
     [[], [True], ["a", "b"], ["a", True, 1], ["a", True, None]]),
    ("prefix-and-items", {"type": "array", "prefixItems": [{"const": "head"}], "items": {"type": "null"},
                          "maxItems": 3},
     [[], ["head"], ["head", None], ["head", None, None]],
     [["tail"], [None], ["head", 1], ["head", None, None, None]]),
    ("enum", {"enum": ["red", "green", 42, None, True, [1, "a"], {"k": "v", "n": [1, 2]}, 2.5]}, [
        "red", "green", 42, None, True, [1, "a"], {"k": "v", "n": [1, 2]}, 2.5,
    ], [
        "blue", "Red", 43, False, [1], ["a", 1], {"k": "v"}, {"k": "v", "n": [1, 2], "x": 1}, 2.6, 0,
    ]),
    ("const-object", {"type": "object",
                      "properties": {"kind": {"const": "circle"}, "meta": {"const": {"a": [1, {"b": None}]}}},
                      "required": ["kind"]}, [
        {"kind": "circle"}, {"kind": "circle", "meta": {"a": [1, {"b": None}]}},
    ], [
        {"kind": "square"}, {}, {"kind": "circle", "meta": {"a": [1, {"b": 0}]}}, {"kind": "circle", "meta": {}},
    ]),
    ("anyOf", {"anyOf": [
        {"type": "string", "maxLength": 3},
        {"type": "integer", "minimum": 10},
        {"type": "array", "items": {"type": "boolean"}, "maxItems": 2},
        False,  # a branch that allows nothing is dropped
    ]}, [
        "", "abc", 10, 12345, [], [True, False],
    ], [
        "abcd", 9, -10, 10.5, [True, True, True], [1], None, {},
    ]),
    ("oneOf-shapes", SHAPE, [
        {"kind": "circle", "r": 1.5}, {"kind": "rect", "w": 1, "h": 2e3},
    ], [
        {"kind": "circle"}, {"kind": "rect", "r": 1}, {"kind": "triangle", "r": 1}, {"kind": "circle", "r": "1"},
    ]),
    ("tree-$defs", TREE, [
        {"value": 1},
        {"value": 1, "children": []},
        {"value": 1, "children": [{"value": 2, "children": [{"value": 3}]}, {"value": 4}]},
    ], [
        {}, {"value": 1, "children": [{}]}, {"value": 1, "children": [{"value": "2"}]},
        {"value": 1, "children": {"value": 2}},
    ]),
    ("list-definitions-root", {
        "definitions": {"item": {"type": ["string", "integer"]}},
        "type": "object",
        "properties": {"head": {"$ref": "#/definitions/item"}, "tail": {"anyOf": [{"$ref": "#"}, {"type": "null"}]}},
        "required": ["head", "tail"],
    }, [
        {"head": "a", "tail": None}, {"head": 1, "tail": {"head": "b", "tail": {"head": 2, "tail": None}}},
    ], [
        {"head": 1.5, "tail": None}, {"head": "a"}, {"head": "a", "tail": {"head": None, "tail": None}},
    ]),
    ("additionalProperties-true", {
        "type": "object", "properties": {"id": {"type": "integer"}, "tag": {"type": "string"}},
        "required": ["id"], "additionalProperties": True,
    }, [
        {"id": 1}, {"id": 1, "tag": "t"}, {"id": 1, "x": [1, {}]}, {"id": 1, "tag": "t", "ide": None, "i": 2, "": 0},
    ], [
        {"id": "1"}, {"tag": "t"}, {"id": 1, "tag": 2},
        Text('{"id": 1, "id": "x"}'),  # a listed key again, as an additional property
        Text('{"id": 1, "tag": 1}'),
    ]),
    ("additionalProperties-schema", {
        "type": "object", "properties": {"a": {"type": "null"}},
        "required": ["r"], "additionalProperties": {"type": "integer", "maximum": 9},
    }, [
        {"a": None, "r": 1}, {"r": 9}, {"a": None, "r": -5, "x": 0, "y": 9},
    ], [
        {"a": None}, {"r": 10}, {"r": 1, "x": 10}, {"r": 1, "x": None}, {"r": "1"},
    ]),
    ("type-list", {"type": ["string", "null", "integer"], "minLength": 2, "maximum": 5}, [
        "ab", None, 5, -100, "\u00e9\u00e9",
    ], [
        "a", 6, 1.5, True, [], {},
    ]),
    ("string-lengths", {"type": "string", "minLength": 2, "maxLength": 4}, [
        "ab", "abcd", "a\"\\", "\n\t", "\u00e9\u00e8\u00ea",
    ], [
        "a", "", "abcde", 12, None,
    ]),
    ("untyped-keywords", {"minLength": 3, "maxItems": 1, "properties": {"a": {"type": "integer"}}}, [
        "abc", 1, 2.5, None, True, [], [[1, 2]], {}, {"a": 1},
    ], [
        "ab", [1, 2], {"a": "x"},
    ]),
    ("optional-only", {"type": "object",
                       "properties": {"a": {"type": "integer"}, "b": {"type": "string"}, "c": {"type": "boolean"},
                                      "d": False}}, [
        {}, {"a": 1}, {"b": "x"}, {"c": True}, {"a": 1, "c": False}, {"b": "", "c": True},
        {"a": 1, "b": "x", "c": True},
    ], [
        {"a": "1"}, {"d": 1}, {"a": 1, "d": None}, {"a": 1, "b": 2},
    ]),
    ("patterns", {"type": "object", "properties": {
        "id": {"type": "string", "pattern": "^[A-Z]{2}-\\d{3}$"},
        "tag": {"type": ["string", "null"], "pattern": "^(x|\"|\\\\)+$"},
        "any": {"pattern": "^a+$", "minLength": 0},  # untyped: other types pass; 0 constrains nothing
    }, "required": ["id"]}, [
        {"id": "AB-123"}, {"id": "ZZ-000", "tag": None}, {"id": "AB-123", "tag": 'x"\\x'},
        {"id": "AB-123", "any": "aaa"}, {"id": "AB-123", "any": [1]}, {"id": "AB-123", "any": 5},
    ], [
        {"id": "ab-123"}, {"id": "AB-1234"}, {"id": "AB-12\n"}, {"id": "AB-123", "tag": ""},
        {"id": "AB-123", "tag": "xy"}, {"id": "AB-123", "any": "ab"}, {"id": "AB-123", "any": ""}, {},
    ]),
    ("formats", {"type": "object", "properties": {
        "d": {"type": "string", "format": "date"}, "t": {"type": "string", "format": "time"},
        "dt": {"type": "string", "format": "date-time"}, "u": {"type": "string", "format": "uuid"},
    }, "required": ["d", "t", "dt", "u"]}, [
        {"d": "2024-02-29", "t": "23:59:59Z", "dt": "2000-01-01T00:00:00.123+05:30",
         "u": "123e4567-e89b-12d3-a456-426614174000"},
        {"d": "0001-12-31", "t": "00:00:00.5-12:00", "dt": "1999-12-31t23:59:59z",
         "u": "ABCDEF01-2345-6789-ABCD-EF0123456789"},
    ], [
        dict(STAMPS, d="2023-02-29"), dict(STAMPS, d="2024-04-31"), dict(STAMPS, d="0000-01-01"),
        dict(STAMPS, d="2024-1-01"), dict(STAMPS, t="24:00:00Z"), dict(STAMPS, t="12:00:00"),
        dict(STAMPS, t="12:00:60Z"), dict(STAMPS, dt="2000-01-01 00:00:00Z"), dict(STAMPS, dt="2000-01-01T00:00Z"),
        dict(STAMPS, u="123e4567e89b12d3a456426614174000"), dict(STAMPS, u="123e4567-e89b-12d3-a456-42661417400"),
    ]),
    ("true", True, [None, 0, -1.5e300, "x", [], {"a": [True, {"b": "\u00e9"}]}], []),
    ("empty", {}, [None, "", [[]], {"": {}}], []),
]
CASE_IDS = [c[0] for c in CASES]


@pytest.mark.parametrize("name, schema, valid, invalid", CASES, ids=CASE_IDS)
def test_valid_instances_match(name, schema, valid, invalid):
    v, g = validator(schema), grammar(schema)
    for instance in valid:
        assert v.is_valid(instance), f"test data: {instance!r} should be valid"
        for text in texts(instance):
            assert g.matches(text), f"{name}: valid {text!r} not matched"


@pytest.mark.parametrize("name, schema, valid, invalid", CASES, ids=CASE_IDS)
def test_invalid_instances_do_not_match(name, schema, valid, invalid):
    v, g = validator(schema), grammar(schema)
    for instance in invalid:
        value = json.loads(instance) if isinstance(instance, Text) else instance
        assert not v.is_valid(value), f"test data: {instance!r} should be invalid"
        for text in texts(instance):
            assert not g.matches(text), f"{name}: invalid {text!r} matched"


@pytest.mark.parametrize("name, schema, valid, invalid", CASES, ids=CASE_IDS)
def test_samples_are_valid(name, schema, valid, invalid):
    v, g = validator(schema), grammar(schema)
    rng = random.Random(1234)
    samples = [g.sample(rng, max_depth=24) for _ in range(250)]
    for text in samples:
        instance = json.loads(text)
        errors = [e.message for e in v.iter_errors(instance)]
        assert not errors, f"{name}: sample {text!r} is invalid: {errors}"
    for text in samples[:25]:  # the oracle agrees with itself
        assert g.matches(text)
    assert len(set(samples)) > 10


# --- whitespace and numbers


def test_whitespace_between_tokens_only_and_bounded():
    g = grammar({"type": "object", "properties": {"a": {"type": "array", "items": {"type": "integer"}}}})
    for text in ['{"a":[1,2]}', '{ "a" : [ 1 , 2 ] }', '{\n  "a": [\n    1,\n    2\n  ]\n}', '{\n\t"a": [1]}',
                 "{\n" + " " * 20 + '"a":[]}', '{\n\t\t"a":[]\n}', "{ }", '{"a":[ ]}']:
        assert g.matches(text), text
    for text in [' {"a":[1]}', '{"a":[1]} ', '{"a":[1]}\n', '{  "a":[1]}', '{"a" :  [1]}', "{\n" + " " * 21 + '"a":[]}',
                 '{\r\n"a":[]}', '{\n\n"a":[]}', '{ \n"a":[]}', '{"a":[1,2,]}', '{"a":[1 2]}', '{,}']:
        assert not g.matches(text), text


def test_json_value_grammar():
    g = ReferenceGrammar(JSON_VALUE_GBNF)
    assert JSON_VALUE_GBNF == json_schema_to_gbnf(True) == json_schema_to_gbnf({})
    for text in ["0", "-0", "1.5e10", "1E-07", "-0.0e+0", "9999999999999999", '"\\u00E9\\n\\/"', '""', "[]", "{}",
                 '[1,"a",{"b":[null,true,false]}]', '"\u00e9\U0001F600"', '"\\ud83d\\ude00"']:
        assert g.matches(text), text
        json.loads(text)
    for text in ["", "01", "1.", ".5", "+1", "1e", "1e+", "NaN", "Infinity", "-", "tru", "nul", "[1,]", "{'a':1}",
                 '{"a"}', '{"a":}', '{1:2}', '"\x01"', '"\\x41"', '"\\u12"', '"abc', "'a'", "10000000000000000",
                 '"\\U0001F600"', "[1]]", "1 2"]:
        assert not g.matches(text), text


def test_json_object_grammar():
    g = ReferenceGrammar(JSON_OBJECT_GBNF)
    assert g.matches("{}") and g.matches('{"a": [1, {"b": null}]}') and g.matches('{"a":1,"a":2}')
    for text in ["[]", "1", '"{}"', "null", "{} {}"]:
        assert not g.matches(text)


def test_integer_bounds_are_exact():
    cases = [(0, 150), (-5, 123), (-120, -7), (7, 7), (None, -3), (10, None), (-1000, 1000), (1, 99), (100, 999),
             (0, 0), (-1, 0), (0, 9), (19, 91), (101, 1099), (-999, -100)]
    for lo, hi in cases:
        schema = {"type": "integer"}
        if lo is not None:
            schema["minimum"] = lo
        if hi is not None:
            schema["maximum"] = hi
        g, v = grammar(schema), validator(schema)
        for n in range(-1100, 1101):
            assert g.matches(str(n)) == v.is_valid(n), (schema, n)
        assert g.matches("-0") == v.is_valid(0), schema
        for text in ["007", "-05", "1.0", "+1", "1e1"]:
            assert not g.matches(text), (schema, text)
    g = grammar({"type": "integer", "exclusiveMinimum": 2.5, "exclusiveMaximum": 6})
    assert [n for n in range(-10, 20) if g.matches(str(n))] == [3, 4, 5]
    g = grammar({"type": "integer", "minimum": -0.5, "maximum": 2.7, "exclusiveMaximum": 2})
    assert [n for n in range(-10, 20) if g.matches(str(n))] == [0, 1]
    g = grammar({"type": "integer", "minimum": 10 ** 15})  # as many digits as numbers have
    assert g.matches("9999999999999999") and g.matches(str(10 ** 15))
    assert not g.matches(str(10 ** 15 - 1)) and not g.matches(str(10 ** 16))


def test_dates_are_exact():
    g = ReferenceGrammar(json_schema_to_gbnf({"type": "string", "format": "date"}))
    for year in (1, 4, 100, 1900, 1999, 2000, 2023, 2024, 2100, 2400, 9999):
        for month in range(0, 14):
            for day in (0, 1, 9, 10, 19, 20, 28, 29, 30, 31, 32):
                text = f"{year:04d}-{month:02d}-{day:02d}"
                try:
                    datetime.date(year, month, day)
                    valid = True
                except ValueError:
                    valid = False
                assert g.matches(json.dumps(text)) == valid, text
    assert not g.matches('"0000-01-01"') and not g.matches('"2024-1-01"') and not g.matches('"20240101"')


# --- additional properties and keys


KEYS = ["a", "ab", "", "x y", 'q"', "b\\", "n\n", "c\x01", "\u00e9", "\U0001F600", "/"]


def test_additional_keys_exclude_the_listed_ones():
    schema = {"type": "object", "properties": {k: {"type": "string"} for k in KEYS},
              "additionalProperties": {"type": "integer"}}
    g, v = grammar(schema), validator(schema)
    candidates = set(KEYS)
    for k in KEYS:
        candidates |= {k + "x", k + "\\", k + '"', "x" + k, k[:-1], k + k, k + "\n", k + "\u00e9"}
    candidates |= {"A", "b", "n", "c", "\x01", "\x02", "e", "\u00ea", "\U0001F601", "\\"}
    for key in sorted(candidates):
        for value in (1, "s"):
            instance = {key: value}
            text = json.dumps(instance, ensure_ascii=False)
            assert g.matches(text) == v.is_valid(instance), text
    # listed properties first, in order, each at most once; then the others
    assert g.matches(json.dumps({"a": "1", "ab": "2", "zz": 3}))
    assert not g.matches(json.dumps({"zz": 3, "a": "1"}))
    assert not g.matches('{"a": "1", "a": "2"}')


def test_rule_names_are_valid_and_unique():
    keys = ["a b", "a-b", "a_b", "a.b", "\u00e9", "", "root", "space", "value", "string", "char", "-", "1", "a b-kv",
            "rest1", "additional-kv", "date"]
    schema = {"type": "object",
              "properties": {k: {"type": "object", "properties": {k: {"type": "integer", "minimum": i}}}
                             for i, k in enumerate(keys)},
              "$defs": {"root": {"type": "null"}, "space": {"type": "string"}},
              "additionalProperties": {"anyOf": [{"$ref": "#/$defs/root"}, {"$ref": "#/$defs/space"}]}}
    text = json_schema_to_gbnf(schema)
    names = [line.split(" ::= ")[0] for line in text.splitlines()]
    assert all(re.fullmatch(r"[a-zA-Z0-9_-]+", n) for n in names)
    assert len(names) == len(set(names)) and names[0] == "root"
    g = ReferenceGrammar(text)
    instance = {k: {k: 100} for k in keys}
    assert g.matches(json.dumps(instance, ensure_ascii=False)) and g.matches(json.dumps({"zz": None, "zy": "x"}))
    assert not g.matches(json.dumps({"a b": {"a b": -1}}))
    assert not g.matches(json.dumps({"zz": 1}))


def test_ref_forms():
    schema = {"$defs": {"a/b": {"type": "integer"}, "c~d": {"const": 1}, "e f": {"type": "null"}},
              "type": "array", "prefixItems": [{"$ref": "#/$defs/a~1b"}, {"$ref": "#/$defs/c~0d"},
                                               {"$ref": "#/$defs/e%20f"}, {"$ref": "#/prefixItems/0"}],
              "items": False, "minItems": 4}
    g = grammar(schema)
    assert g.matches("[5,1,null,6]") and not g.matches("[5,2,null,6]") and not g.matches("[5,1,null]")


def test_false_forbids_inside():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "secret": False},
              "additionalProperties": True}
    g = grammar(schema)
    assert g.matches('{"a": 1, "other": 2}') and g.matches("{}")
    assert not g.matches('{"secret": 1}') and not g.matches('{"a": 1, "secret": 1}')
    g = grammar({"type": "array", "prefixItems": [{"type": "integer"}, False], "items": {"type": "string"}})
    assert g.matches("[1]") and g.matches("[]") and not g.matches('[1, "x"]')
    g = grammar({"type": "object", "properties": {"a": {"anyOf": [{"$ref": "#/$defs/never"}, {"type": "null"}]},
                                                  "b": {"$ref": "#/$defs/never"}},
                 "$defs": {"never": {"type": "string", "minLength": 2, "maxLength": 1}}})
    assert g.matches('{"a": null}') and not g.matches('{"a": ""}') and not g.matches('{"b": ""}')


# --- documented restrictions: stricter than JSON Schema, never looser


RESTRICTIONS = [
    # (schema, instance text the schema allows but the grammar refuses)
    ({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}, '{"b": 1, "a": 2}'),
    ({"type": "object", "properties": {"a": {"type": "integer"}}}, '{"a": 1, "z": 2}'),  # closed by default
    ({"type": "object", "properties": {"a": {}}, "additionalProperties": True}, '{"z": 2, "a": 1}'),
    ({"type": "integer"}, "1.0"),
    ({"type": "integer"}, "1e2"),
    ({"type": "number"}, "12345678901234567"),
    ({"const": "\u00e9"}, '"\\u00e9"'),
    ({"const": 1}, "1.0"),
    ({"enum": [{"a": 1, "b": 2}]}, '{"b": 2, "a": 1}'),
    ({"type": "string", "maxLength": 1}, '"\\ud83d\\ude00"'),
    (True, " 1"),
    # patterns: each character in json.dumps's spelling only
    ({"type": "string", "pattern": "^a$"}, '"\\u0061"'),
    ({"type": "string", "pattern": "^/$"}, '"\\/"'),
    ({"type": "string", "pattern": "^\\x1f$"}, '"\\u001F"'),
    ({"type": "string", "pattern": "^\\n$"}, '"\\u000a"'),
    ({"type": "string", "pattern": "^.$"}, '"\\ud83d\\ude00"'),
]


@pytest.mark.parametrize("schema, text", RESTRICTIONS)
def test_documented_restrictions(schema, text):
    assert validator(schema).is_valid(json.loads(text))
    assert not grammar(schema).matches(text)


def test_escaped_listed_key_passes_as_additional():
    """Documented: the other place a grammar is looser than its schema."""
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": True}
    text = '{"\\u0061": "x"}'
    assert not validator(schema).is_valid(json.loads(text)) and grammar(schema).matches(text)
    assert not grammar(schema).matches('{"a": "x"}')


def test_surrogate_pair_escapes_count_two():
    """The one place a grammar is looser than its schema (documented in the module): string
    lengths count each escape as a character, and a character past U+FFFF written as a
    surrogate pair of \\u escapes is two."""
    schema = {"type": "string", "minLength": 2}
    text = '"\\ud83d\\ude00"'
    assert not validator(schema).is_valid(json.loads(text)) and grammar(schema).matches(text)
    assert not grammar(schema).matches(json.dumps("\U0001F600", ensure_ascii=False))


def test_const_spelling():
    g = grammar({"const": {"k": ["\u00e9", 1.5, None]}})
    assert g.matches('{"k":["\u00e9",1.5,null]}')
    assert g.matches('{\n  "k": [\n    "\u00e9",\n    1.5,\n    null\n  ]\n}')
    assert not g.matches('{"k":["e",1.5,null]}')
    g = grammar({"const": "a\nb\"\\\x01\ud800"})  # escapes, a control character, a lone surrogate
    assert g.matches(json.dumps("a\nb\"\\\x01\ud800"))


def test_enum_filtered_by_type():
    g = grammar({"type": ["string", "integer"], "enum": ["a", 1, 1.0, 2.5, None, True]})
    assert g.matches('"a"') and g.matches("1") and g.matches("1.0")
    assert not g.matches("2.5") and not g.matches("null") and not g.matches("true")
    g = grammar({"enum": [1, 2, 3], "const": 2.0})
    assert g.matches("2") and not g.matches("1") and not g.matches("3")


# --- errors


UNSUPPORTED = ["multipleOf", "allOf", "not", "if", "then", "else", "dependentRequired",
               "dependentSchemas", "uniqueItems", "patternProperties", "minProperties", "maxProperties",
               "propertyNames", "contains", "minContains", "maxContains", "unevaluatedProperties",
               "unevaluatedItems", "additionalItems", "$anchor", "$dynamicRef", "nullable", "contentEncoding"]
_VALUES = {"multipleOf": 2, "allOf": [{}], "not": {}, "if": {}, "then": {}, "else": {},
           "dependentRequired": {"a": ["b"]}, "dependentSchemas": {"a": {}}, "uniqueItems": True,
           "patternProperties": {"^a": {}}, "minProperties": 1, "maxProperties": 1, "propertyNames": {},
           "contains": {}, "minContains": 1, "maxContains": 1, "unevaluatedProperties": False,
           "unevaluatedItems": False, "additionalItems": False, "$anchor": "x", "$dynamicRef": "#x",
           "nullable": True, "contentEncoding": "base64"}


@pytest.mark.parametrize("keyword", UNSUPPORTED)
def test_unsupported_keyword_raises(keyword):
    schema = {"type": "object", "properties": {"a/b": {"type": "array", "items": {keyword: _VALUES[keyword]}}}}
    with pytest.raises(ValueError) as e:
        json_schema_to_gbnf(schema)
    assert repr(keyword) in str(e.value)
    assert f"#/properties/a~1b/items/{keyword}" in str(e.value)
    with pytest.raises(ValueError, match=re.escape(repr(keyword))):
        json_schema_to_gbnf({keyword: _VALUES[keyword]})


BAD_SCHEMAS = [
    (False, "false"),
    ({"$ref": "#/$defs/missing"}, "resolves to nothing"),
    ({"$ref": "http://example.com/schema"}, "only local"),
    ({"$ref": "other.json#/a"}, "only local"),
    ({"$ref": 3}, "$ref"),
    ({"$ref": "#/$defs/a", "$defs": {"a": {}}, "type": "object"}, "beside $ref"),
    ({"anyOf": [{}], "type": "string"}, "beside anyOf"),
    ({"oneOf": [{}], "anyOf": [{}]}, "beside"),
    ({"enum": ["a"], "minLength": 2}, "beside enum"),
    ({"type": "strin"}, "unknown type 'strin'"),
    ({"type": []}, "type"),
    ({"type": 3}, "type"),
    ({"properties": []}, "properties"),
    ({"required": "a"}, "required"),
    ({"minLength": -1}, "minLength"),
    ({"minLength": 1.5}, "minLength"),
    ({"maxItems": True}, "maxItems"),
    ({"minimum": "1", "type": "integer"}, "minimum"),
    ({"enum": "a"}, "enum"),
    ({"anyOf": []}, "anyOf"),
    ({"items": 3}, "items"),
    ({"items": [{}]}, "prefixItems"),
    ({"additionalProperties": []}, "additionalProperties"),
    (3, "a schema is an object or a boolean"),
    ({"properties": {"a": 3}}, "#/properties/a"),
    ({"type": "number", "minimum": 0}, "integers only"),
    ({"minimum": 0}, "integers only"),
    ({"type": "string", "format": "email"}, "format 'email'"),
    ({"type": "string", "format": "date", "maxLength": 3}, "beside format"),
    ({"const": float("nan")}, "not a JSON value"),
    # schemas no value satisfies
    ({"type": "string", "minLength": 3, "maxLength": 2}, "no string"),
    ({"type": "array", "minItems": 2, "items": False}, "no array"),
    ({"type": "array", "minItems": 3, "maxItems": 2}, "no array"),
    ({"enum": []}, "no value"),
    ({"const": "a", "type": "integer"}, "no value"),
    ({"type": "object", "properties": {"a": False}, "required": ["a"]}, "false"),
    ({"type": "object", "required": ["a"], "additionalProperties": False}, "required"),
    ({"type": "integer", "minimum": 5, "maximum": 4}, "no integer"),
    ({"type": "integer", "minimum": 10 ** 16}, "no integer"),
    ({"anyOf": [False, {"not": {}}]}, "'not'"),
    ({"anyOf": [False, False]}, "no branch"),
    ({"$ref": "#/$defs/f", "$defs": {"f": False}}, "false"),
]


@pytest.mark.parametrize("schema, message", BAD_SCHEMAS)
def test_bad_schema_raises(schema, message):
    with pytest.raises(ValueError) as e:
        json_schema_to_gbnf(schema)
    assert message in str(e.value)


# --- patterns


# ECMA-262's \s: its white space and line terminators (Python's Unicode \s differs: it has
# \x1c-\x1f and \x85, not \ufeff).
_ECMA_SPACE = r"\t\n\v\f\r \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"


def python_regex(pattern):
    r"""The ECMA-262 pattern as a Python regex of the same meaning under re.ASCII (which makes
    \d and \w ASCII, as ECMA's are): \s and \S spelled out as ECMA's, and . without \r,
    U+2028 and U+2029 (Python's . only leaves out \n)."""
    out, i, in_class = [], 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            e = pattern[i + 1]
            if e == "s":
                out.append(_ECMA_SPACE if in_class else f"[{_ECMA_SPACE}]")
            elif e == "S":
                assert not in_class, "the tests spell out no \\S in a class"
                out.append(f"[^{_ECMA_SPACE}]")
            else:
                out.append(c + e)
            i += 2
            continue
        if c == "[" and not in_class:
            in_class = True
        elif c == "]" and in_class:
            in_class = False
        elif c == "." and not in_class:
            c = r"[^\n\r\u2028\u2029]"
        out.append(c)
        i += 1
    return "".join(out)


def ecma_match(pattern, s):
    """Whether the ECMA-262 pattern matches the whole of s (it is anchored)."""
    return re.fullmatch(python_regex(pattern), s, re.ASCII) is not None


def pattern_grammar(pattern):
    return grammar({"type": "string", "pattern": pattern})


# (id, pattern, matching strings, other strings, whether ECMA's matches are all Python's too:
# jsonschema checks patterns with Python's re, whose \D \W \s \S differ)
PATTERNS = [
    ("date", r"^\d{4}-\d{2}-\d{2}$", ["2024-01-31", "0000-99-99"],
     ["2024-1-31", "20240131", "2024-01-31\n", " 2024-01-31", "2024-01-3x", "\uff12024-01-31", ""], True),
    ("phone", r"^\+?\d{1,3}[ -]?\(?\d{3}\)?[ -]?\d{3}[ -]?\d{4}$",
     ["+1 (555) 123-4567", "15551234567", "+44-207-946-0958"],
     ["555-1234", "+1 (555) 123-456", "+1 (555) 123-45678", "phone", "+1  5551234567", "++15551234567"], True),
    ("email", r"^[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,}$", ["john.doe+x@example.co.uk", "a@b.cd", "x_%-@0.io"],
     ["a@b.c", "A@b.cd", "a@@b.cd", "a b@c.de", "@b.cd", "a@b.cd.", "a@b.c\u00e9"], True),
    ("alternation", r"^(cat|dog)s?$", ["cat", "cats", "dog", "dogs"],
     ["", "cat s", "catss", "cow", "catdog", "Cat", "s"], True),
    ("top-alternatives", r"^a$|^b+$", ["a", "b", "bbb"], ["ab", "", "abb", "ba", "aa"], True),
    ("quote-backslash-class", r'^["\\a-c]+$', ['"', "\\", 'a"b\\c', '""', "\\\\"], ["d", "", "'", "a/", "\\n"],
     True),
    ("negated-class", r"^[^a-z]{2,4}$",
     ["AB", '"\\', "\n\t", "\x01\x1f", "12\u00e9", "\U0001F600\U0001F600", "\x7f\u2028", "\x00\x08\x0c\r"],
     ["a1", "A", "ABCDE", "Ab", "", '"\\"\\"\\'], True),
    ("dot", r"^a.b.c$", ['a"b\\c', "a b c", "a\tb\x00c", "a\U0001F600b\u00e9c", "a\x1fb\x7fc", "a\x0bb\x0cc"],
     ["a\nb c", "a\rb c", "a\u2028b c", "a b\u2029c", "abc", "a b cc", "a\"\"b c"], True),
    ("unicode", "^[\u00e0-\u00ff]+ ?\\u4e16\u754c\U0001F600?$",
     ["\u00e0\u00e9 \u4e16\u754c\U0001F600", "\u00ff\u4e16\u754c"],
     ["a\u4e16\u754c", "\u00e0\u00e9  \u4e16\u754c", "\u00e0 \u4e16\u754c\U0001F600\U0001F600", "\u00e9\u4e16"], True),
    ("escapes", r"^\x41\u00e9\/\.\*\$\^\[\]\(\)\{\}\|\?\+\\\-$", ["A\u00e9/.*$^[](){}|?+\\-"],
     ["A\u00e9/.*$^[](){}|?+\\", "a\u00e9/.*$^[](){}|?+\\-", "A\u00e9/x*$^[](){}|?+\\-"], True),
    ("controls", r"^[\t\n\r\f\v\b\0]{2}\u0001?$", ["\t\n", "\x08\x00", "\x0b\x0c\x01", "\r\r"],
     ["  ", "\t", "\t\n\x02", "\\t\\n", "\t\n\x01\x01"], True),
    ("ecma-classes", r"^\w+\s\W\S\D$",
     ["a_1 !x-", "z\u2028\u00e9\u00e9\u0663", "A\ufeff.\U0001F600\u00e9", "Z9\x0b\x1c\x1c\x85", 'q\t"\\"'],
     ["\u00e9 !xy", "a\x1c!xy", "a\x85!xy", "a !x1", "a ! y", "a !xyz", "a!xy"], False),
    ("quantifiers", r"^(?:ab|c){2,3}?x*?y+?z??(q{2})?w{0,}$", ["abcy", "ccabyw", "abababxxyyzqqwww", "ccy"],
     ["aby", "cy", "ccccy", "ccyq", "ccyqqq", "ccx", "ccyzz"], True),
    ("nullable-repeats", r"^(a?b?)*c(|d)+(e*){2,}((f|)*|g?){3}$", ["c", "abbac", "cddd", "cee", "bcde", "cfffg", "cgg"],
     ["ca", "cdh", "", "cdedd", "cgggg", "cgfgg", "cfd"], True),
    ("empty", r"^$", [""], ["a", " "], True),
    ("code-points", r"^.{2}$", ["\U0001F600\u00e9", '""', "\\\\", "\x00\x7f"], ["\U0001F600", "a\n", "abc"], True),
]
PATTERN_IDS = [c[0] for c in PATTERNS]


@pytest.mark.parametrize("name, pattern, yes, no, python_agrees", PATTERNS, ids=PATTERN_IDS)
def test_pattern_matches(name, pattern, yes, no, python_agrees):
    g = pattern_grammar(pattern)
    for s in yes:
        assert ecma_match(pattern, s), f"test data: {s!r} should match"
        assert g.matches(json.dumps(s, ensure_ascii=False)), f"{name}: {s!r} not matched"
    for s in no:
        assert not ecma_match(pattern, s), f"test data: {s!r} should not match"
        for text in (json.dumps(s, ensure_ascii=False), json.dumps(s)):
            assert not g.matches(text), f"{name}: {text!r} matched"


@pytest.mark.parametrize("name, pattern, yes, no, python_agrees", PATTERNS, ids=PATTERN_IDS)
def test_pattern_samples(name, pattern, yes, no, python_agrees):
    schema = {"type": "string", "pattern": pattern}
    g, v = pattern_grammar(pattern), validator(schema)
    rng = random.Random(99)
    samples = [g.sample(rng, max_depth=24) for _ in range(150)]
    for text in samples:
        s = json.loads(text)
        assert ecma_match(pattern, s), f"{name}: sample {text!r}"
        assert text == json.dumps(s, ensure_ascii=False), f"{name}: {text!r} is not json.dumps's spelling"
        if python_agrees:
            assert v.is_valid(s), f"{name}: jsonschema rejects sample {text!r}"
    assert len(set(samples)) >= min(len(yes), 5)


@pytest.mark.parametrize("name, pattern, yes, no, python_agrees", PATTERNS, ids=PATTERN_IDS)
def test_pattern_grammars_compile(name, pattern, yes, no, python_agrees):
    """pygpt's own matcher takes the grammars (no repetition of an item that matches the empty
    string, which it reads as left recursion) and agrees with the oracle."""
    g = pygpt.Grammar(json_schema_to_gbnf({"type": "string", "pattern": pattern}))
    for s in yes:
        assert g.matches(json.dumps(s, ensure_ascii=False)), s
    for s in no:
        assert not g.matches(json.dumps(s, ensure_ascii=False)), s


ALPHABET = "ab\"\\\n\u00e9\U0001F600 \x01"
EXHAUSTIVE = [
    r'^(a|b")*[^a"]?$',
    r"^.\\?[\s\"]*$",
    r"^(?:a|b(?:\n|\"))+?\S{0,2}$",
    r"^[\w\\]{1,2}(a|)(\n|\u00e9+)?$",
    r"^[^\n\x01]*$",
    r"^(\x01|\W\W)*b?$",
]


@pytest.mark.parametrize("pattern", EXHAUSTIVE)
def test_pattern_agrees_on_every_short_string(pattern):
    """Over a small alphabet (characters JSON escapes, and some it does not), every string of
    up to 3 characters: the grammar matches it exactly when the pattern does."""
    g = pattern_grammar(pattern)
    matched = 0
    for n in range(4):
        for chars in itertools.product(ALPHABET, repeat=n):
            s = "".join(chars)
            want = ecma_match(pattern, s)
            assert g.matches(json.dumps(s, ensure_ascii=False)) == want, (pattern, s)
            matched += want
    assert 0 < matched < len(ALPHABET) ** 3


PATTERN_ERRORS = [
    # not anchored
    ("abc", "must be anchored"), ("^abc", "must be anchored"), ("abc$", "must be anchored"),
    ("", "must be anchored"), ("^a|b$", "must be anchored"), ("^a$|b", "must be anchored"),
    ("^a\\$", "must be anchored"), ("(^a$)", "must be anchored"), ("^", "must be anchored"),
    ("^a*", "must be anchored"), ("^a*?", "must be anchored"), ("^(a|b)$|", "must be anchored"),
    # unsupported constructs
    ("^(a)\\1$", "backreferences"), ("^(?=a)a$", "lookahead (?=...)"), ("^(?!a)b$", "negative lookahead"),
    ("^(?<=a)b$", "lookbehind (?<=...)"), ("^(?<!a)b$", "negative lookbehind"), ("^(?<n>a)$", "named groups"),
    ("^(?P<n>a)$", "(?P...)"), ("^(?i)a$", "flags"), ("^a\\bc$", "word boundary"), ("^a\\Bc$", "\\B"),
    ("^\\p{L}$", "property escapes"), ("^[\\P{L}]$", "property escapes"), ("^\\cA$", "control escapes"),
    ("^\\k<n>$", "named backreferences"), ("^a^b$", "'^' inside"), ("^a$b$", "'$' inside"),
    ("^(a$)$", "'$' inside"), ("^\\01$", "octal"), ("^\\A$", "\\A"), ("^\\q$", "\\q"),
    ("^\\uD83D\\uDE00$", "surrogate"), ("^\\u{1F600}$", "\\u{"),
    # malformed, or read otherwise by Python's re
    ("^*a$", "nothing to repeat"), ("^(+)$", "nothing to repeat"), ("^a**$", "quantifier after a quantifier"),
    ("^a*+$", "quantifier after a quantifier"), ("^a{2}{3}$", "quantifier after a quantifier"),
    ("^a???$", "quantifier after a quantifier"), ("^a{3,2}$", "maximum below"), ("^a{,2}$", "lone '{'"),
    ("^a}$", "lone '}'"), ("^a]$", "lone ']'"), ("^[]a]$", "[]"), ("^[^]$", "[]"), ("^[a$", "unclosed '['"),
    ("^(a", "unclosed '('"), ("^a)$", "unbalanced ')'"), ("^[\\d-z]$", "class escape"),
    ("^[a-\\w]$", "class escape"), ("^[z-a]$", "out of order"), ("^\\x4$", "hex digits"),
    ("^\\u12$", "hex digits"), ("^a\\", "lone backslash"),
]


@pytest.mark.parametrize("pattern, message", PATTERN_ERRORS)
def test_pattern_errors(pattern, message):
    schema = {"type": "object", "properties": {"a/b": {"type": "string", "pattern": pattern}}}
    with pytest.raises(ValueError) as e:
        json_schema_to_gbnf(schema)
    assert message in str(e.value)
    assert str(e.value).startswith("#/properties/a~1b/pattern: ")
    assert repr(pattern) in str(e.value)
    with pytest.raises(ValueError, match=re.escape(message)):  # a pattern is checked whatever the type
        json_schema_to_gbnf({"type": "integer", "pattern": pattern})


PATTERN_BAD_SCHEMAS = [
    ({"type": "string", "pattern": "^a+$", "maxLength": 3}, "beside pattern"),
    ({"type": "string", "pattern": "^a+$", "minLength": 1}, "beside pattern"),
    ({"pattern": "^a+$", "maxLength": 3}, "beside pattern"),
    ({"type": "string", "pattern": "^\\d{4}-\\d{2}-\\d{2}$", "format": "date"}, "beside pattern"),
    ({"type": "string", "pattern": 3}, "expected a string"),
    ({"type": "string", "pattern": "^[^\\s\\S]$"}, "no string matches"),
    ({"type": "string", "pattern": "^a[^\\s\\S]?b[^\\d\\D]+$"}, "no string matches"),
    ({"enum": ["a"], "pattern": "^a$"}, "beside enum"),
]


@pytest.mark.parametrize("schema, message", PATTERN_BAD_SCHEMAS)
def test_pattern_bad_schema_raises(schema, message):
    with pytest.raises(ValueError) as e:
        json_schema_to_gbnf(schema)
    assert message in str(e.value)


def test_pattern_matching_nothing_forbids_inside():
    never = "^[^\\s\\S]$"
    g = grammar({"pattern": never})  # untyped: the other types remain
    assert g.matches("1") and g.matches("null") and g.matches("[]") and not g.matches('""')
    g = grammar({"type": "array", "items": {"anyOf": [{"type": "string", "pattern": never}, {"type": "integer"}]}})
    assert g.matches("[1, 2]") and not g.matches('["a"]')
    g = grammar({"type": "string", "pattern": "^a(b[^\\s\\S]|c)?[^\\d\\D]*$"})  # impossible parts drop out
    assert g.matches('"a"') and g.matches('"ac"') and not g.matches('"ab"')


def test_pattern_types_other_than_string_unaffected():
    g = grammar({"type": ["integer", "string"], "pattern": "^x$"})
    assert g.matches("12") and g.matches('"x"') and not g.matches('"12"')
