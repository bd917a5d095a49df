"""Grammar-constrained generation (pygpt.Grammar, generate(grammar=...)).

The GBNF compiler and the C++ byte matcher against an independent recognizer
(tests/reference_grammar.py, an Earley parser over code points); the vocabulary walk against
checking every token one by one; generation against the same mask applied by a plain
logits_processor (greedy and filtered sampling token for token, plain sampling by a chi-square
test, as the fast path draws before masking); and every way of generating."""

import random
import re

import numpy as np
import pytest

import pygpt
from pygpt import Grammar, _core
from reference_grammar import ReferenceGrammar
from test_beam_search import GPT2_TOKENIZER
from test_sampler import CHI2_P_VALUE, two_sample_chi2

JSON = r'''
root   ::= object
object ::= "{" ws ( pair ( "," ws pair )* )? "}"
pair   ::= string ":" ws value ws
value  ::= object | array | string | number | "true" | "false" | "null"
array  ::= "[" ws ( value ws ( "," ws value ws )* )? "]"
string ::= "\"" ( [^"\\\x00-\x1f] | "\\" ["\\/bfnrtu] )* "\""
number ::= "-"? [0-9]{1,12} ( "." [0-9]{1,6} )?
ws     ::= | " " | "\n" [ \t]{0,8}
'''
LIST = r'''
root ::= item ( "," " "? item ){2,4} "."   # three to five words
item ::= [a-z]+
'''
ACCENTS = r'root ::= [à-ÿ]{1,3} ( "!" | "¡" .? )'
YES_NO = 'root ::= "yes" | "no"'
# a cycle through more states than the matcher keeps masks of (16): masks are dropped and remade
CYCLE = 'root ::= ( "the quick brown fox jumps over the lazy dog, " [0-9] "; " )*'
GRAMMARS = [JSON, LIST, ACCENTS, YES_NO, r'''
root ::= ( "ab" | "a" "b"? ) c*  # ambiguous on purpose
c ::= [^a-c\n] | "\\" [abc] | "\u00e9" | "\U0001F600"
''']


@pytest.fixture(scope="module")
def model():
    return pygpt.load()


@pytest.fixture(scope="module")
def gpt2_tokenizer():
    return pygpt.Tokenizer.from_dir(GPT2_TOKENIZER)


# --- the compiler and the matcher ----------------------------------------------------------------

@pytest.mark.parametrize("grammar,text,whole,prefix", [
    (YES_NO, "yes", True, True), (YES_NO, "ye", False, True), (YES_NO, "yess", False, False),
    (YES_NO, "", False, True),
    ('root ::= "a" "b"*', "abbb", True, True), ('root ::= "a" "b"*', "a", True, True),
    ('root ::= "a" "b"+', "a", False, True), ('root ::= "a"?', "", True, True),
    ('root ::= "x"{2,3}', "x", False, True), ('root ::= "x"{2,3}', "xxx", True, True),
    ('root ::= "x"{2,3}', "xxxx", False, False), ('root ::= "x"{2,}', "x" * 30, True, True),
    ('root ::= "x"{2}', "xx", True, True), ('root ::= ("ab")+ "c"', "ababc", True, True),
    ('root ::= [a-c]+', "abcab", True, True), ('root ::= [a-c]+', "abd", False, False),
    ('root ::= [^a-c]', "d", True, True), ('root ::= [^a-c]', "b", False, False),
    ('root ::= [-a]*', "-a-", True, True), ('root ::= [a-]*', "-a-", True, True),
    ('root ::= .', "\U0001F600", True, True), ('root ::= . .', "é", False, True),
    ('root ::= "\\n\\t\\\\\\"\\x41\\u00e9\\U0001F600"', '\n\t\\"Aé\U0001F600', True, True),
    ('root ::= [\\]\\[]+', "][", True, True),
    ('# a comment\nroot ::= a # another\n  | b\na ::= "A"\nb ::=\n "B"', "B", True, True),
    ('root ::= | "z"', "", True, True), ('root ::= x\nx ::= "1" x | "2"', "1112", True, True),
    ('root ::= "a" "b" | "a" "c"', "ac", True, True), ('root ::= "é"+', "éé", True, True),
])
def test_matches_each_construct(grammar, text, whole, prefix):
    g = Grammar(grammar)
    assert g.matches(text) is whole
    assert g.is_prefix(text) is prefix
    assert g.matches(text.encode()) is whole  # bytes too
    ref = ReferenceGrammar(grammar)
    assert (ref.matches(text), ref.is_prefix(text)) == (whole, prefix)


def _mutations(s: str, rng: random.Random, alphabet: str):
    out = [s, s[:-1], s[1:]] + [s[:k] for k in range(0, len(s), max(1, len(s) // 6))]
    for _ in range(6):
        i = rng.randrange(len(s) + 1)
        c = rng.choice(alphabet)
        out += [s[:i] + c + s[i:], s[:i] + c + s[i + 1:], s[:i] + s[i + 1:]]
    return out


@pytest.mark.parametrize("grammar", GRAMMARS)
def test_agrees_with_the_reference_recognizer(grammar):
    """Whole matches and prefixes, on strings the reference draws from the grammar and on
    mutations of them (most of which do not match)."""
    ours, ref = Grammar(grammar), ReferenceGrammar(grammar)
    rng = random.Random(0)
    alphabet = 'ab c{}[]",:.-0123456789\\\néà¡!\U0001F600yesnotrufl'
    seen = {True: 0, False: 0}
    for _ in range(60):
        for s in _mutations(ref.sample(rng), rng, alphabet):
            whole = ref.matches(s)
            assert ours.matches(s) == whole, s
            assert ours.is_prefix(s) == ref.is_prefix(s), s
            seen[whole] += 1
    assert seen[True] > 20 and seen[False] > 20, seen


def test_bytes_are_utf8():
    """Classes are compiled to UTF-8: a split character is a prefix, invalid UTF-8 never is."""
    g = Grammar('root ::= .+')
    assert g.is_prefix(b"\xc3") and not g.matches(b"\xc3") and g.matches(b"\xc3\xa9")
    assert g.is_prefix(b"\xf0\x9f\x98") and g.matches(b"\xf0\x9f\x98\x80")
    for bad in (b"\xff", b"\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc3\x28"):
        assert not g.is_prefix(bad), bad
    narrow = Grammar('root ::= [à-ÿ]')  # U+00E0..U+00FF: C3 A0..C3 BF
    assert narrow.matches("à".encode()) and narrow.matches("ÿ") and not narrow.is_prefix("ß")
    assert narrow.is_prefix(b"\xc3") and not narrow.is_prefix(b"\xc3\x9f")
    negated = Grammar('root ::= [^é]')
    assert negated.matches("e") and negated.matches("è") and not negated.is_prefix("é")


@pytest.mark.parametrize("text,message", [
    ("", "no rules"), ("  # only a comment\n", "no rules"), ('x ::= "a"', "no 'root' rule"),
    ('root ::= y', "rule 'y' is used but never defined at line 1, column 10"),
    ('root ::= "a"\nroot ::= "b"', "defined twice"), ('root ::= "a', "unterminated literal"),
    ('root ::= [a-', "unterminated character class"), ('root ::= [b-a]', "ends before it starts"),
    ('root ::= "\\q"', "unknown escape"), ('root ::= "\\x4"', "hex digits"),
    ('root ::= "\\ud800"', "not a Unicode scalar value"), ('root ::= "\\U00110000"', "not a Unicode scalar"),
    ('root ::= *', "repeats nothing"), ('root ::= "a"{3,2}', "upper bound is below"),
    ('root ::= "a"{2', "expected '}'"), ('root ::= "a"{x}', "expected a number"),
    ('root ::= ( "a"', "expected ')'"), ('root ::= "a" )', "unexpected ')'"),
    ('root = "a"', "expected '::='"), ('root ::= "a" ; "b"', "unexpected ';'"),
    ('root ::= []', "empty character class"), ('root ::= [^\\x00-\\U0010FFFF]', "matches no character"),
    ('root ::= "a"{20000}', "repetition bound"), ("root ::= " + "(" * 5000 + '"a"' + ")" * 5000, "nested over 100"),
    ('root ::= root "a" | "b"', "left-recursive"), ('root ::= a\na ::= b? a "x" | "y"\nb ::= "b"', "left-recursive"),
    ('root ::= "a" root', "matches no text"),
    ('root ::= ("a"?)* "b"', "match at least one character"),
])
def test_bad_grammars_raise_value_error(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Grammar(text)


def test_from_file(tmp_path):
    (tmp_path / "yes.gbnf").write_text(YES_NO + "  # a comment\n", encoding="utf-8")
    g = Grammar.from_file(tmp_path / "yes.gbnf")
    assert g.matches("no") and not g.matches("n")
    with pytest.raises(FileNotFoundError):
        Grammar.from_file(tmp_path / "missing.gbnf")


def test_grammar_types():
    with pytest.raises(TypeError):
        Grammar(b'root ::= "a"')
    with pytest.raises(TypeError):
        Grammar(YES_NO).matches(3)
    g = Grammar(YES_NO)
    assert "yes" in repr(g) and g.text == YES_NO


def test_ambiguous_repetitions_stay_small():
    """Options of options ((x?){0,3} chained) can match the empty text in exponentially many
    ways; each place is expanded once, so matching stays fast and exact."""
    g = Grammar("root ::= .?{0,3}?{0,3}{0,3}{2}")
    assert g.matches("") and g.matches("abc") and g.matches("x" * 54)  # at most 1 * 3 * 3 * 3 * 2
    assert not g.is_prefix("x" * 55)
    ref = ReferenceGrammar("root ::= .?{0,3}?{0,3}{0,3}{2}")
    assert ref.matches("x" * 54) and not ref.is_prefix("x" * 55)


def test_random_grammars_raise_or_work(model):
    """Random pieces of GBNF: each text compiles or raises ValueError, and a compiled grammar
    matches, masks and generates without raising anything else (a regression fuzz)."""
    pieces = ['root', ' ::= ', 'a', 'b', ' ::= ', '"x"', '"é"', '[a-z]', '[^"]', '.', '(', ')', '|', '*', '+', '?',
              '{2}', '{0,3}', '{1,}', ' ', '\n', '#c\n', '"', '[', ']', '\\', '-', 'root ::= ', 'a ::= ', '""',
              '{', '}', ',', '0']
    rng = random.Random(20)
    tok, compiled = model.tokenizer, 0
    for _ in range(40000):  # most do not compile
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 25)))
        try:
            g = Grammar(text)
        except ValueError:
            continue
        compiled += 1
        for s in ["", "x", "xx", "é", "ab", "xxxxx", '"', "\n"]:
            assert g.matches(s) <= g.is_prefix(s)
        masks = _core.grammar_masks(g._core, tok.vocab_trie(), tok.encode("xx"), tok.vocab_size, [tok.eot_id])
        assert len(masks) == len(tok.encode("xx")) + 1
        if compiled % 50 == 0:
            out = model.generate(PROMPT, grammar=g, max_new_tokens=4, temperature=1.0, seed=compiled)
            assert g.is_prefix(out.text)
    assert compiled > 50


def test_dead_alternatives_are_dropped():
    """An alternative that can never finish is not a prefix of anything."""
    g = Grammar('root ::= "a" | "b" loop\nloop ::= "c" loop')
    assert g.matches("a") and not g.is_prefix("b") and not g.is_prefix("bc")


def test_raw_rules_are_checked():
    """The compiled form is checked again in C++ (it is reachable from Python)."""
    full = b"\xff" * 32
    with pytest.raises(ValueError, match="out of range"):
        _core.Grammar(["root"], [[[1]]], [full])
    with pytest.raises(ValueError, match="out of range"):
        _core.Grammar(["root"], [[[-2]]], [full])
    with pytest.raises(ValueError, match="no alternatives"):
        _core.Grammar(["root"], [[]], [full])
    with pytest.raises(ValueError, match="32 bytes"):
        _core.Grammar(["root"], [[[0]]], [b"\xff"])
    with pytest.raises(ValueError, match="one name per rule"):
        _core.Grammar([], [[[0]]], [full])
    with pytest.raises(ValueError, match="at least one rule"):
        _core.Grammar([], [], [])


# --- which tokens may come next --------------------------------------------------------------------

def _brute_force(g: Grammar, tok, generated, end_tokens):
    """Allowed next tokens, checking each token's bytes after the text so far."""
    done = tok.decode_bytes(generated)
    specials = set(tok.special_tokens.values())
    allowed = np.array([t not in specials and g.is_prefix(done + tok.token_bytes(t))
                        for t in range(tok.vocab_size)])
    allowed[end_tokens] = g.matches(done)
    return allowed


@pytest.mark.parametrize("text", ['', '{', '{"', '{"na', '{"a": 1', '{"a": [1, ', '{"a": "é', '{"a": {}}'])
def test_mask_is_every_token_that_fits(gpt2_tokenizer, text):
    """The vocabulary walk (GPT-2's 50257 tokens) allows exactly the tokens after which the text
    is still a prefix of a match, eos only after a whole match."""
    tok, g = gpt2_tokenizer, Grammar(JSON)
    ids = tok.encode(text)
    got = np.array(_core.grammar_masks(g._core, tok.vocab_trie(), ids, tok.vocab_size, [tok.eot_id])[-1])
    want = _brute_force(g, tok, ids, [tok.eot_id])
    assert (got == want).all(), np.flatnonzero(got != want)[:10]
    assert want.sum() > 0


def test_masks_shared_between_matchers_are_right(gpt2_tokenizer):
    """Masks are shared between the matchers of a grammar by the contents of their stacks: a
    string in an object and a string in an array are other states (after `"`, the tokens
    `"}` and `"]` are not both allowed), however the cache was filled."""
    tok = gpt2_tokenizer
    trie = tok.vocab_trie()
    g = Grammar(JSON)
    texts = ['{"a": "x', '{"a": ["x', '{"bb": "y', '{"a": [{"c": "x', '{"a": ["x", "y']
    for text in texts:  # each after the others filled the shared masks
        ids = tok.encode(text)
        shared = np.array(_core.grammar_masks(g._core, trie, ids, tok.vocab_size, [tok.eot_id])[-1])
        alone = np.array(_core.grammar_masks(g._core, trie, ids, tok.vocab_size, [tok.eot_id], share=False)[-1])
        assert (shared == alone).all(), text
    quote_brace, quote_bracket = tok.encode('"}')[0], tok.encode('"]')[0]
    in_object = _core.grammar_masks(g._core, trie, tok.encode(texts[0]), tok.vocab_size, [])[-1]
    in_array = _core.grammar_masks(g._core, trie, tok.encode(texts[1]), tok.vocab_size, [])[-1]
    assert (in_object[quote_brace], in_object[quote_bracket]) == (True, False)
    assert (in_array[quote_brace], in_array[quote_bracket]) == (False, True)


def test_mask_past_the_tokenizer_and_after_a_special_token(gpt2_tokenizer):
    tok, g = gpt2_tokenizer, Grammar(YES_NO)
    got = np.array(_core.grammar_masks(g._core, tok.vocab_trie(), [], tok.vocab_size + 7, [])[-1])
    assert not got[tok.vocab_size:].any()
    assert set(np.flatnonzero(got)) == {t for t in range(tok.vocab_size)
                                        if tok.token_bytes(t) in (b"y", b"ye", b"yes", b"n", b"no")}
    # a special token is no text: after it nothing fits
    assert not any(_core.grammar_masks(g._core, tok.vocab_trie(), [tok.eot_id], tok.vocab_size, [tok.eot_id])[-1])


@pytest.mark.parametrize("grammar,text", [(JSON, '{"a": [1, 2, {"b": "cd"}], "e": "fgh ij"}'),
                                          (CYCLE, "the quick brown fox jumps over the lazy dog, 1; " * 3)])
def test_masks_when_the_matcher_drops_what_it_keeps(gpt2_tokenizer, grammar, text):
    """A matcher that keeps at most a few states rebuilds them from the tokens: the same masks."""
    tok, g = gpt2_tokenizer, Grammar(grammar)
    ids = tok.encode(text)
    kept = _core.grammar_masks(g._core, tok.vocab_trie(), ids, tok.vocab_size, [tok.eot_id], share=False)
    small = _core.grammar_masks(g._core, tok.vocab_trie(), ids, tok.vocab_size, [tok.eot_id], max_states=3,
                                share=False)
    assert kept == small
    assert all(kept[k][t] for k, t in enumerate(ids))  # each token was allowed where it came


# --- generation --------------------------------------------------------------------------------------

def _masking_processor(g: Grammar, tok, n_prompt: int, ends):
    """The grammar's mask as a plain logits_processor (no fast path)."""
    trie = tok.vocab_trie()

    def process(ids, scores):
        allowed = np.array(_core.grammar_masks(g._core, trie, [int(t) for t in ids[n_prompt:]], len(scores), ends)[-1])
        scores[~allowed] = -np.inf
        return scores
    return process


def _same_tokens(got, want, eot):
    """got (grammar=) equals want (a masking processor), but where the grammar closed: a
    closed grammar stops the sequence, where the processor leaves eos the only token."""
    if got.finish_reason == "stop" and want.finish_reason == "eos":
        return want.tokens == got.tokens + [eot]
    return got.tokens == want.tokens


def _check_output(g: Grammar, out):
    assert g.is_prefix(out.text), out.text
    if out.finish_reason != "length":
        assert g.matches(out.text), (out.text, out.finish_reason)


PROMPT = "Here it is:"


@pytest.mark.parametrize("grammar", [JSON, LIST, ACCENTS])
@pytest.mark.parametrize("options", [
    dict(), dict(temperature=1.0), dict(temperature=0.9, top_p=0.9), dict(temperature=1.2, top_k=20),
    dict(temperature=1.0, min_p=0.05, repetition_penalty=1.3), dict(temperature=1.0, num_return_sequences=3),
])
def test_generated_text_fits_the_grammar(model, grammar, options):
    g = Grammar(grammar)
    for seed in range(3):
        outs = model.generate([PROMPT, "To be"], grammar=g, max_new_tokens=40, seed=seed, **options)
        for out in (o for group in outs for o in (group if isinstance(group, list) else [group])):
            _check_output(g, out)


@pytest.mark.parametrize("grammar", [JSON, LIST, ACCENTS, CYCLE])
def test_greedy_equals_masking_every_token(model, grammar):
    """Greedy with a grammar checks the unmasked argmax first: the same tokens as masking all."""
    g, tok = Grammar(grammar), model.tokenizer
    n = len(tok.encode(PROMPT))
    want = model.generate(PROMPT, max_new_tokens=80,
                          logits_processor=[_masking_processor(g, tok, n, [tok.eot_id])])
    got = model.generate(PROMPT, grammar=g, max_new_tokens=80)
    assert _same_tokens(got, want, tok.eot_id) and got.text == want.text
    assert g.is_prefix(got.text)


@pytest.mark.parametrize("options", [dict(top_p=0.8), dict(top_k=5), dict(min_p=0.1), dict(typical_p=0.9),
                                     dict(top_n_sigma=1.0), dict(epsilon_cutoff=0.01), dict(eta_cutoff=0.01),
                                     dict(xtc_probability=0.5), dict(dynatemp_range=0.5)])
def test_filtered_sampling_equals_masking_every_token(model, options):
    """With a filter after the mask the whole mask is made first: a processor doing the same
    draws the same tokens from the same seed."""
    g, tok = Grammar(JSON), model.tokenizer
    n = len(tok.encode(PROMPT))
    for seed in range(4):
        want = model.generate(PROMPT, max_new_tokens=30, temperature=0.9, seed=seed,
                              logits_processor=[_masking_processor(g, tok, n, [tok.eot_id])], **options)
        got = model.generate(PROMPT, grammar=g, max_new_tokens=30, temperature=0.9, seed=seed, **options)
        assert _same_tokens(got, want, tok.eot_id)


def test_plain_sampling_has_the_masked_distribution(model):
    """Temperature alone: a draw made before the mask and kept when allowed is distributed as a
    draw after the mask (chi-square against masked draws)."""
    g, tok = Grammar('root ::= [a-z] "."'), model.tokenizer   # about 20 likely tokens
    n_prompt = len(tok.encode(PROMPT))
    proc = _masking_processor(g, tok, n_prompt, [tok.eot_id])
    N, pos = 600, 0
    fast, masked = {}, {}
    for seed in range(N):
        a = model.generate(PROMPT, grammar=g, max_new_tokens=pos + 1, temperature=1.0, seed=seed).tokens[pos]
        b = model.generate(PROMPT, max_new_tokens=pos + 1, temperature=1.0, seed=seed + 10 ** 6,
                           logits_processor=[proc]).tokens[pos]
        fast[a] = fast.get(a, 0) + 1
        masked[b] = masked.get(b, 0) + 1
    p, k = two_sample_chi2(fast, masked, N)
    assert k >= 3, (fast, masked)
    assert p > CHI2_P_VALUE, (p, fast, masked)
    # and the test can tell: unmasked draws are another distribution
    free = {}
    for seed in range(N):
        t = model.generate(PROMPT, max_new_tokens=pos + 1, temperature=1.0, seed=seed).tokens[pos]
        free[t] = free.get(t, 0) + 1
    assert two_sample_chi2(free, masked, N)[0] < 1e-6


def test_a_closed_grammar_stops_the_sequence(model):
    g = Grammar(YES_NO)
    for seed in range(5):
        out = model.generate(PROMPT, grammar=g, max_new_tokens=20, temperature=1.0, seed=seed, min_new_tokens=5)
        assert out.text in ("yes", "no") and out.finish_reason == "stop"
        assert model.tokenizer.decode(out.tokens) == out.text  # no end token was needed


def test_eos_only_after_a_whole_match(model):
    """eos pushed up by +100 is taken at the first point where the text is a whole match."""
    tok = model.tokenizer
    g = Grammar('root ::= "ab" [a-z]{0,30}')
    out = model.generate(PROMPT, grammar=g, max_new_tokens=20, logit_bias={tok.eot_id: 100.0})
    assert out.finish_reason == "eos" and g.matches(out.text)
    assert tok.decode(out.tokens[:-1]) in ("ab", out.text) and len(out.tokens) <= 3
    # ignore_eos: eos is then no end token, and no text either
    out = model.generate(PROMPT, grammar=g, max_new_tokens=20, ignore_eos=True, logit_bias={tok.eot_id: 100.0})
    assert tok.eot_id not in out.tokens and g.is_prefix(out.text)


def test_stop_tokens_only_after_a_whole_match(model):
    tok = model.tokenizer
    newline = tok.encode("\n")[0]
    g = Grammar('root ::= "a" "b"? | "a\\nb"')
    out = model.generate(PROMPT, grammar=g, max_new_tokens=20, stop_token_ids=[newline],
                         logit_bias={newline: 100.0})
    assert out.text in ("a", "ab") and out.finish_reason == "stop" and out.tokens[-1] == newline


@pytest.mark.parametrize("draft", [dict(prompt_lookup_num_tokens=4), dict(assistant="self")])
def test_drafts_keep_greedy_tokens(model, draft):
    g = Grammar(LIST)
    if draft.get("assistant"):
        draft = dict(assistant_model=pygpt.load(model.path), num_assistant_tokens=3)
    prompt = "a, b, c. a, b, c. a, b, c. a, b,"
    want = model.generate(prompt, grammar=g, max_new_tokens=30)
    got = model.generate(prompt, grammar=g, max_new_tokens=30, **draft)
    assert got.tokens == want.tokens
    assert got.timings.draft_tokens > 0
    # a grammar that closes after one token, with no end token to draft after it
    for seed in range(3):
        out = model.generate(prompt, grammar=YES_NO, max_new_tokens=10, ignore_eos=True, temperature=1.0, seed=seed,
                             **draft)
        assert out.text in ("yes", "no") and out.finish_reason == "stop"


def test_one_grammar_in_many_threads(model):
    """A Grammar is shared by calls on several threads at once: each gets what it gets alone."""
    import threading

    g = Grammar(JSON)
    want = [model.generate(PROMPT, grammar=g, max_new_tokens=25, temperature=1.0, seed=s).text for s in range(6)]
    got = [None] * 6

    def run(s):
        got[s] = model.generate(PROMPT, grammar=g, max_new_tokens=25, temperature=1.0, seed=s).text

    threads = [threading.Thread(target=run, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == want


def test_assisted_sampling_fits_the_grammar(model):
    g, helper = Grammar(JSON), pygpt.load(model.path)
    for seed in range(3):
        out = model.generate(PROMPT, grammar=g, max_new_tokens=30, temperature=1.0, seed=seed,
                             assistant_model=helper)
        _check_output(g, out)


def test_beam_search_with_a_grammar(model):
    """Beams are masked as sampling is; a beam whose grammar closes is a finished hypothesis
    ("stop"); with a grammar that never closes here, the same beams as a masking processor."""
    g, tok = Grammar(YES_NO), model.tokenizer
    outs = model.generate(PROMPT, grammar=g, num_beams=3, num_return_sequences=2, max_new_tokens=5)
    assert sorted(o.text for o in outs) == ["no", "yes"] and all(o.finish_reason == "stop" for o in outs)
    assert outs[0].score >= outs[1].score
    g = Grammar(JSON)
    n = len(tok.encode(PROMPT))
    want = model.generate(PROMPT, num_beams=4, num_return_sequences=4, max_new_tokens=12,
                          logits_processor=[_masking_processor(g, tok, n, [tok.eot_id])])
    got = model.generate(PROMPT, grammar=g, num_beams=4, num_return_sequences=4, max_new_tokens=12)
    assert [o.tokens for o in got] == [o.tokens for o in want]
    assert [o.score for o in got] == pytest.approx([o.score for o in want], rel=1e-6)
    for o in got:
        _check_output(g, o)
    # a grammar that closes in a few tokens, no end token: every hypothesis is whole
    outs = model.generate(PROMPT, grammar=LIST, num_beams=3, num_return_sequences=3, max_new_tokens=40,
                          ignore_eos=True)
    for o in outs:
        assert Grammar(LIST).matches(o.text) and o.finish_reason == "stop", o


def test_stream_and_batcher(model):
    g = Grammar(JSON)
    whole = model.generate(PROMPT, grammar=g, max_new_tokens=30, temperature=1.0, seed=3)
    assert "".join(pygpt.generation.stream(model, PROMPT, grammar=g, max_new_tokens=30, temperature=1.0,
                                           seed=3)) == whole.text
    with pygpt.Batcher(model) as b:
        jobs = [b.submit(PROMPT, grammar=g, max_new_tokens=30, temperature=1.0, seed=s) for s in range(3, 6)]
        outs = [j.result() for j in jobs]
    assert outs[0].text == whole.text
    for out in outs:
        _check_output(g, out)


def test_a_grammar_given_as_text(model):
    out = model.generate(PROMPT, grammar=YES_NO, max_new_tokens=5)
    assert out.text in ("yes", "no")


def test_errors(model):
    with pytest.raises(TypeError, match="grammar must be"):
        model.generate(PROMPT, grammar=3)
    with pytest.raises(ValueError, match="line 1"):
        model.generate(PROMPT, grammar="root ::= (")


def test_a_processor_that_breaks_the_grammar_is_an_error(model):
    """A logits_processor runs after the mask; lifting a banned token is caught, not followed."""
    tok = model.tokenizer
    z = tok.encode("z")[0]

    def lift(ids, scores):
        scores[z] = 1e9
        return scores

    with pytest.raises(ValueError, match="does not fit the grammar"):
        model.generate(PROMPT, grammar=YES_NO, max_new_tokens=5, logits_processor=[lift])
    assert model.generate(PROMPT, grammar=YES_NO, max_new_tokens=5).text in ("yes", "no")  # still usable


def test_full_vocabulary_model(tmp_path):
    """End to end with GPT-2's vocabulary: JSON that parses."""
    pytest.importorskip("torch")
    import json

    import pygpt.convert
    from conftest import make_hf_model

    make_hf_model(str(tmp_path / "hf"), seed=3, n_layer=2, n_head=2, n_embd=32, n_positions=128, vocab_size=50257)
    pygpt.convert.convert(str(tmp_path / "hf"), str(tmp_path / "m"), tokenizer=GPT2_TOKENIZER)
    m = pygpt.load(str(tmp_path / "m"))
    g = Grammar('root ::= "{\\"n\\": " [1-9] [0-9]{0,3} ", \\"ok\\": " ("true" | "false") "}"')
    for seed in range(4):
        out = m.generate("Data:", grammar=g, max_new_tokens=40, temperature=1.0, seed=seed)
        assert out.finish_reason == "stop", out
        assert set(json.loads(out.text)) == {"n", "ok"}


# --- JSON schemas ---------------------------------------------------------------------------------

from test_json_schema import CASES, CASE_IDS, texts  # noqa: E402


@pytest.mark.parametrize("name, schema, valid, invalid", CASES, ids=CASE_IDS)
def test_json_schema_grammars_agree_with_the_reference(name, schema, valid, invalid):
    """The grammars of tests/test_json_schema.py's schemas, compiled by pygpt, accept what the
    reference does: valid instances, invalid ones, its samples, and cuts and edits of those."""
    from pygpt.json_schema import json_schema_to_gbnf

    text = json_schema_to_gbnf(schema)
    ours, ref = Grammar.from_json_schema(schema), ReferenceGrammar(text)
    for instance in valid:
        for t in texts(instance):
            assert ours.matches(t), t
    for instance in invalid:
        for t in texts(instance):
            assert not ours.matches(t), t
    rng = random.Random(7)
    for _ in range(40):
        for s in _mutations(ref.sample(rng, max_depth=16), rng, '{}[]":,0123456789.-eE tfnul\\aé'):
            assert ours.matches(s) == ref.matches(s), s
            assert ours.is_prefix(s) == ref.is_prefix(s), s


def test_json_schema_given_as_text_and_errors():
    schema = '{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}'
    g = Grammar.from_json_schema(schema)
    assert g.matches('{"a": 12}') and not g.matches('{"a": 1.5}') and not g.matches("{}")
    with pytest.raises(ValueError, match="not valid JSON"):
        Grammar.from_json_schema("{type: object}")
    with pytest.raises(ValueError, match="anchored"):
        Grammar.from_json_schema({"type": "string", "pattern": "^a"})
    with pytest.raises(ValueError, match="uniqueItems"):
        Grammar.from_json_schema({"type": "array", "uniqueItems": True})
    obj, value = Grammar.json(), Grammar.json(object_only=False)
    assert obj.matches('{"x": [1, true, null, "y"]}') and not obj.matches("[1]") and value.matches("[1]")


def test_a_schema_with_patterns(model):
    """pattern: the generated values fullmatch their regular expressions."""
    import json
    import re

    schema = {"type": "object", "properties": {
        "date": {"type": "string", "pattern": r"^\d{4}-(0[1-9]|1[0-2])-\d{2}$"},
        "code": {"type": "string", "pattern": r"^[A-Z]{2,3}-[0-9a-f]{4}$"}}, "required": ["date", "code"]}
    g = Grammar.from_json_schema(schema)
    finished = 0
    for seed in range(8):
        out = model.generate("Record: ", grammar=g, max_new_tokens=60, temperature=1.0, seed=seed)
        if out.finish_reason == "stop":
            value = json.loads(out.text)
            assert re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])-\d{2}", value["date"]), value
            assert re.fullmatch(r"[A-Z]{2,3}-[0-9a-f]{4}", value["code"]), value
            finished += 1
    assert finished >= 4


def test_a_pydantic_models_schema(model):
    """Pydantic's schemas ($defs, anyOf for Optional, enums, Literal, bounds): the text a
    generation finishes validates with the model class."""
    import enum
    from typing import List, Literal, Optional

    pydantic = pytest.importorskip("pydantic")

    class Color(str, enum.Enum):
        red = "red"
        green = "green"

    class Address(pydantic.BaseModel):
        street: str
        zip: Optional[int] = None

    class Person(pydantic.BaseModel):
        name: str = pydantic.Field(max_length=20)
        age: int = pydantic.Field(ge=0, le=150)
        color: Color
        kind: Literal["a", "b"]
        tags: List[str] = pydantic.Field(max_length=3)
        address: Optional[Address] = None
        score: float

    g = Grammar.from_json_schema(Person.model_json_schema())
    finished = 0
    for seed in range(12):
        out = model.generate("Person: ", grammar=g, max_new_tokens=150, temperature=1.0, seed=seed,
                             logit_bias={model.tokenizer.eot_id: 3.0})
        assert g.is_prefix(out.text)
        if out.finish_reason == "stop":
            Person.model_validate_json(out.text)
            finished += 1
    assert finished >= 3
