"""The C++ sampler (csrc/sampler.cpp) against transformers' logits processors, and its draws
against the processed distribution (chi-square, fixed seed)."""

import math
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tlp = pytest.importorskip("transformers.generation.logits_process")

import pygpt  # noqa: E402
from pygpt import _core  # noqa: E402
from pygpt.generation import sampling_params  # noqa: E402

V = 50257
ISAS = pygpt.system_info()["isas"]
# Elementwise processors (temperature, penalties, bias) are single float32 operations on both
# sides, up to torch computing x / c as x * (1 / c): a few ulps.
RTOL_ELEMENTWISE = 1e-6
# Filters compare cumulative probabilities with a threshold. We compute them in double;
# transformers is run in float64 on the same float32 logits, so the kept sets must be equal.


def random_logits(seed, n=V, scale=2.0):
    return (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float32)


def lm_like_logits(seed, n=V):
    """Shaped like a language model's: a few tokens far ahead, a long Zipf-like tail."""
    rng = np.random.default_rng(seed)
    ranks = rng.permutation(n) + 1
    return (-1.3 * np.log(ranks) * 2.0 + rng.standard_normal(n) * 0.5 + 8).astype(np.float32)


HISTORY_IDS = [464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290]  # "The quick brown fox jumps over the lazy dog"


@pytest.fixture(scope="module", params=["random_model", "shipped_model"])
def model_logits(request, hf_model_factory):
    """Logits of real forward passes: a small random GPT-2 (tests/conftest.py), and the trained
    model shipped in the package when this tree has it."""
    import pygpt
    from pygpt.model import DEFAULT_MODEL_DIR

    if request.param == "random_model":
        m = pygpt.load(hf_model_factory("tiny")[2])
        ids = HISTORY_IDS
    else:
        if not os.path.isfile(os.path.join(DEFAULT_MODEL_DIR, "config.json")):
            pytest.skip("no model shipped in this tree")
        m = pygpt.load()
        ids = m.tokenizer.encode("ROMEO: But soft, what light through yonder window breaks?\nJULIET:")
    return m.logits(ids)[-1].astype(np.float32), ids


LOGITS = {
    "random": lambda: random_logits(0),
    "lm_like": lambda: lm_like_logits(1),
    "small_vocab": lambda: random_logits(2, n=1000, scale=3.0),
}


def ours(logits, history=(), n_prompt=None, **kw):
    history = list(history)
    n_prompt = len(history) if n_prompt is None else n_prompt
    return _core.process_logits(logits, history, n_prompt, sampling_params(len(logits), **kw))


def theirs(processor, logits, history=(), dtype=torch.float32):
    ids = torch.tensor([list(history) or [0]], dtype=torch.long)
    scores = torch.from_numpy(logits.astype(np.float32)).to(dtype)[None, :]
    return processor(ids, scores)[0].double().numpy()


def assert_same_scores(got, want, rtol=RTOL_ELEMENTWISE):
    got = np.asarray(got, dtype=np.float64)
    kept_got, kept_want = np.isfinite(got), np.isfinite(want)
    diff = np.flatnonzero(kept_got != kept_want)
    assert diff.size == 0, (f"kept sets differ at {diff.size} ids, first {diff[:5].tolist()}: "
                            f"ours {got[diff[:5]].tolist()} theirs {want[diff[:5]].tolist()}")
    assert np.all(got[~kept_got] == -np.inf)
    np.testing.assert_allclose(got[kept_got], want[kept_want], rtol=rtol, atol=0)


# -- each processor against transformers -----------------------------------------------------------


@pytest.mark.parametrize("kind", LOGITS)
@pytest.mark.parametrize("t", [0.3, 0.7, 1.5])
def test_temperature(kind, t):
    x = LOGITS[kind]()
    assert_same_scores(ours(x, temperature=t), theirs(tlp.TemperatureLogitsWarper(t), x))


@pytest.mark.parametrize("kind", LOGITS)
@pytest.mark.parametrize("k", [1, 7, 50, 5000])
def test_top_k(kind, k):
    x = LOGITS[kind]()
    assert_same_scores(ours(x, temperature=1.0, top_k=k), theirs(tlp.TopKLogitsWarper(k), x))


def test_top_k_keeps_ties_like_torch():
    x = np.array([1.0, 3.0, 2.0, 3.0, 2.0, 0.5], dtype=np.float32)
    assert_same_scores(ours(x, temperature=1.0, top_k=3), theirs(tlp.TopKLogitsWarper(3), x))
    assert np.isfinite(ours(x, temperature=1.0, top_k=3)).sum() == 4  # both 2.0s tie for third


@pytest.mark.parametrize("kind", LOGITS)
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9, 0.95, 0.999])
def test_top_p(kind, p):
    x = LOGITS[kind]()
    got = ours(x, temperature=1.0, top_p=p)
    assert_same_scores(got, theirs(tlp.TopPLogitsWarper(p), x, dtype=torch.float64))
    assert np.isfinite(got).sum() >= 1


@pytest.mark.parametrize("kind", LOGITS)
@pytest.mark.parametrize("p", [0.01, 0.1, 0.5, 1.0])
def test_min_p(kind, p):
    x = LOGITS[kind]()
    assert_same_scores(ours(x, temperature=1.0, min_p=p), theirs(tlp.MinPLogitsWarper(p), x, dtype=torch.float64))


@pytest.mark.parametrize("kind", LOGITS)
@pytest.mark.parametrize("mass", [0.2, 0.5, 0.9, 0.99])
def test_typical_p(kind, mass):
    x = LOGITS[kind]()
    assert_same_scores(ours(x, temperature=1.0, typical_p=mass),
                       theirs(tlp.TypicalLogitsWarper(mass), x, dtype=torch.float64))


@pytest.mark.parametrize("kind", LOGITS)
@pytest.mark.parametrize("eps", [1e-4, 3e-3, 0.05, 0.5])
def test_epsilon_cutoff(kind, eps):
    x = LOGITS[kind]()
    got = ours(x, temperature=1.0, epsilon_cutoff=eps)
    assert_same_scores(got, theirs(tlp.EpsilonLogitsWarper(eps), x, dtype=torch.float64))
    assert np.isfinite(got).sum() >= 1


@pytest.mark.parametrize("kind", LOGITS)
@pytest.mark.parametrize("eta", [1e-4, 3e-3, 0.05, 0.5])
def test_eta_cutoff(kind, eta):
    x = LOGITS[kind]()
    got = ours(x, temperature=1.0, eta_cutoff=eta)
    assert_same_scores(got, theirs(tlp.EtaLogitsWarper(eta, device="cpu"), x, dtype=torch.float64))
    assert np.isfinite(got).sum() >= 1


def _top_n_sigma_reference(x, n, t):
    """llama.cpp's top-nsigma on logits / t: keep within n population deviations of the max."""
    s = x.astype(np.float64) / t
    keep = s >= s.max() - n * s.std()
    return np.where(keep, s, -np.inf)


@pytest.mark.parametrize("kind", LOGITS)
@pytest.mark.parametrize("n", [0.0, 0.5, 1.0, 2.5])
@pytest.mark.parametrize("t", [0.5, 1.0, 2.0])
def test_top_n_sigma(kind, n, t):
    x = LOGITS[kind]()
    got = ours(x, temperature=t, top_n_sigma=n)
    assert_same_scores(got, _top_n_sigma_reference(x, n, t), rtol=1e-6)
    # the set does not depend on the temperature
    assert (np.isfinite(got) == np.isfinite(ours(x, temperature=1.0, top_n_sigma=n))).all()


def _dynatemp_reference(x, t, r, e, top_k=0):
    """llama.cpp's dynamic temperature (llama_sampler_temp_ext) after its top-k, as its chain
    runs them: over the kept tokens, T = lo + (hi - lo) * (H / log n)^e, then logits / T."""
    s = x.astype(np.float64)
    if top_k:
        s = np.where(s >= np.sort(s)[-top_k], s, -np.inf)
    kept = np.isfinite(s)
    p = np.exp(s[kept] - s[kept].max())
    p /= p.sum()
    H = -(p * np.log(p)).sum()
    lo, hi = max(0.0, t - r), t + r
    T = lo + (hi - lo) * (H / np.log(kept.sum())) ** e
    return np.where(kept, (s - s.max()) / T, -np.inf), T


@pytest.mark.parametrize("kind", LOGITS)
@pytest.mark.parametrize("t, r, e", [(1.0, 0.5, 1.0), (0.8, 1.0, 0.5), (0.3, 0.5, 2.0), (1.5, 0.2, 0.0)])
@pytest.mark.parametrize("top_k", [0, 40])
def test_dynatemp(kind, t, r, e, top_k):
    x = LOGITS[kind]()
    want, T = _dynatemp_reference(x, t, r, e, top_k)
    assert max(0.0, t - r) <= T <= t + r
    assert_same_scores(ours(x, temperature=t, dynatemp_range=r, dynatemp_exponent=e, top_k=top_k), want, rtol=1e-5)


@pytest.mark.parametrize("kind", LOGITS)
def test_dynatemp_is_llama_cpps(kind):
    """Against llama.cpp's own sampler (llama_sampler_init_temp_ext), where llama-cpp-python
    is installed (the bench extra; not the test extra, so CI skips this)."""
    import ctypes

    L = pytest.importorskip("llama_cpp")
    x = LOGITS[kind]()
    for t, r, e in [(1.0, 0.5, 1.0), (0.8, 1.0, 0.5), (0.3, 0.5, 2.0)]:
        data = (L.llama_token_data * len(x))(*[L.llama_token_data(i, float(v), 0.0) for i, v in enumerate(x)])
        arr = L.llama_token_data_array(data, len(x), -1, False)
        smpl = L.llama_sampler_init_temp_ext(t, r, e)
        L.llama_sampler_apply(smpl, ctypes.byref(arr))
        L.llama_sampler_free(smpl)
        theirs = np.full(len(x), -np.inf)
        for i in range(arr.size):
            theirs[data[i].id] = data[i].logit
        got = ours(x, temperature=t, dynatemp_range=r, dynatemp_exponent=e)
        p, q = (np.exp(a - a.max()) / np.exp(a - a.max()).sum() for a in (got, theirs))
        assert np.abs(p - q).max() < 1e-4  # llama.cpp computes in float


def test_dynatemp_follows_the_entropy():
    """A flat distribution gets the top of the range, a peaked one the bottom; the filters
    before it see the raw scores (top_p on logits, not logits / temperature)."""
    flat, peaked = np.zeros(100, np.float32), np.array([30.0] + [0.0] * 99, np.float32)
    assert_same_scores(ours(flat, temperature=1.0, dynatemp_range=0.5), flat / 1.5)
    got = ours(peaked, temperature=1.0, dynatemp_range=0.5)
    assert got[0] == 0 and np.all(got[1:] < -30 / 0.51)  # T near 0.5
    x = LOGITS["lm_like"]()
    raw = ours(x, temperature=1.0, top_p=0.99)  # 15 tokens; at temperature 0.3, 2
    assert (np.isfinite(ours(x, temperature=0.3, top_p=0.99, dynatemp_range=0.1)) == np.isfinite(raw)).all()
    assert np.isfinite(ours(x, temperature=0.3, top_p=0.99)).sum() < np.isfinite(raw).sum()
    # a range of 0 is plain temperature
    assert_same_scores(ours(x, temperature=0.7, dynatemp_range=0.0), x.astype(np.float64) / np.float32(0.7),
                       rtol=1e-6)
    # a lone token left by the filters keeps its score
    assert np.isfinite(ours(x, temperature=1.0, top_k=1, dynatemp_range=0.5)).sum() == 1
    with pytest.raises(ValueError, match="dynatemp_range"):
        ours(x, temperature=1.0, dynatemp_range=-1)
    with pytest.raises(ValueError, match="dynatemp_exponent"):
        ours(x, temperature=1.0, dynatemp_range=1, dynatemp_exponent=float("inf"))
    with pytest.raises(ValueError, match="mirostat does not go with dynatemp_range"):
        ours(x, temperature=1.0, dynatemp_range=1, mirostat=2)


def _xtc_reference(x, threshold):
    """llama.cpp's XTC when it fires: drop the tokens with p >= threshold but the least likely."""
    s = x.astype(np.float64)
    p = np.exp(s - s.max())
    p /= p.sum()
    above = np.flatnonzero(p >= threshold)
    if above.size < 2:
        return s
    drop = above[p[above] > p[above].min()]
    s[drop] = -np.inf
    return s


@pytest.mark.parametrize("kind", LOGITS)
@pytest.mark.parametrize("threshold", [0.001, 0.01, 0.1, 0.3])
def test_xtc_when_it_fires(kind, threshold):
    x = LOGITS[kind]()
    want = _xtc_reference(x, threshold)
    got = ours(x, temperature=1.0, xtc_probability=1.0, xtc_threshold=threshold)
    assert_same_scores(got, want, rtol=1e-6)
    assert_same_scores(ours(x, temperature=1.0, xtc_probability=0.0, xtc_threshold=threshold), x.astype(np.float64))


def test_xtc_fires_with_its_probability():
    """Over seeds, the most likely token is excluded in about xtc_probability of the draws."""
    x = np.array([4.0, 3.5, 3.0] + [0.0] * 20, dtype=np.float32)  # p ~ 0.49, 0.30, 0.18, ...
    assert np.isfinite(_xtc_reference(x, 0.1)).sum() == 21  # tokens 0 and 1 dropped when it fires
    n = 4000
    for prob in (0.25, 0.75):
        p = sampling_params(len(x), temperature=1.0, xtc_probability=prob, xtc_threshold=0.1)
        draws = _core.sample_tokens(x, [], 0, p, 11, 0, n)
        probs = np.exp(x - x.max()) / np.exp(x - x.max()).sum()
        fired = np.exp(_xtc_reference(x, 0.1) - x.max())
        fired /= fired.sum()
        want = (1 - prob) * probs + prob * fired
        for token in (0, 1, 2):
            assert abs((draws == token).mean() - want[token]) < 4 * math.sqrt(want[token] * (1 - want[token]) / n)


def test_new_filters_chain_in_transformers_order():
    x = lm_like_logits(6)
    kw = dict(temperature=0.9, top_k=200, top_p=0.95, min_p=0.01, typical_p=0.97, epsilon_cutoff=3e-4,
              eta_cutoff=2e-3)
    chain = tlp.LogitsProcessorList([
        tlp.TemperatureLogitsWarper(0.9), tlp.TopKLogitsWarper(200), tlp.TopPLogitsWarper(0.95),
        tlp.MinPLogitsWarper(0.01), tlp.TypicalLogitsWarper(0.97), tlp.EpsilonLogitsWarper(3e-4),
        tlp.EtaLogitsWarper(2e-3, device="cpu"),
    ])
    got = ours(x, **kw)
    assert_same_scores(got, theirs(chain, x, dtype=torch.float64), rtol=1e-5)
    assert 1 < np.isfinite(got).sum() < 200


def _mirostat_reference(rows, tokens, version, tau, eta, t):
    """llama.cpp's mirostat samplers, replayed on the tokens drawn: (mu before each token, the
    kept set of each row)."""
    mu, mus, kept_sets = 2.0 * tau, [], []
    V = rows.shape[1]
    for row, token in zip(rows, tokens):
        s = row.astype(np.float64) / t
        p = np.exp(s - s.max())
        p /= p.sum()
        if version == 2:
            kept = (-np.log2(p) <= mu) | (s == s.max())
        else:
            order = sorted(range(V), key=lambda i: (-p[i], i))
            m = min(100, V)
            ti = np.log(np.arange(2, m + 1) / np.arange(1, m))
            bi = np.log(p[order[:m - 1]] / p[order[1:m]])
            s_hat = (ti * bi).sum() / (ti * ti).sum()
            e = s_hat - 1
            k = max(int((e * 2.0 ** mu / (1 - V ** -e)) ** (1 / s_hat)), 1)
            kept = np.zeros(V, bool)
            kept[order[:k]] = True
        mus.append(mu)
        kept_sets.append(kept)
        q = np.where(kept, p, 0.0)
        q /= q.sum()
        mu -= eta * (-np.log2(q[token]) - tau)
    return mus, kept_sets


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("tau, eta, t", [(5.0, 0.1, 1.0), (3.0, 0.3, 0.8), (8.0, 0.05, 1.3)])
def test_mirostat_follows_llama_cpp(version, tau, eta, t):
    rows = np.stack([lm_like_logits(100 + i) for i in range(40)])
    p = sampling_params(V, temperature=t, mirostat=version, mirostat_tau=tau, mirostat_eta=eta)
    tokens, mus = _core.sample_rows(rows, [], 0, p, 3)
    want_mus, kept = _mirostat_reference(rows, tokens, version, tau, eta, t)
    np.testing.assert_allclose(mus[:len(tokens)], want_mus, rtol=1e-6)  # (scores / t in float32)
    assert all(k[tok] for k, tok in zip(kept, tokens))
    # the first row's kept set, as process() leaves it
    first = ours(rows[0], temperature=t, mirostat=version, mirostat_tau=tau, mirostat_eta=eta)
    assert (np.isfinite(first) == kept[0]).all() and 1 <= kept[0].sum() < V


@pytest.mark.parametrize("version", [1, 2])
def test_mirostat_holds_the_surprise_near_tau(version):
    """What mirostat is for: the drawn tokens' surprise settles around tau (below the rows'
    entropy, about 10 bits: mirostat only cuts the tail)."""
    rows = np.stack([random_logits(1000 + i, n=4000, scale=1.5) for i in range(400)])
    for tau in (3.0, 6.0):
        p = sampling_params(4000, temperature=1.0, mirostat=version, mirostat_tau=tau, mirostat_eta=0.1)
        tokens, _ = _core.sample_rows(rows, [], 0, p, 9)
        _, kept = _mirostat_reference(rows, tokens, version, tau, 0.1, 1.0)
        s = rows.astype(np.float64)
        logp = s - s.max(axis=1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
        # the surprise mirostat steers: under the kept tokens, renormalised
        kept_mass = np.array([np.exp(lp[k]).sum() for lp, k in zip(logp, kept)])
        surprise = -(logp[np.arange(len(tokens)), tokens] - np.log(kept_mass)) / np.log(2)
        assert abs(surprise[100:].mean() - tau) < 1.0, (tau, surprise[100:].mean())
        free, _ = _core.sample_rows(rows, [], 0, sampling_params(4000, temperature=1.0), 9)
        assert -logp[np.arange(len(free)), free][100:].mean() / np.log(2) > tau + 2  # the test can tell


def _dry_reference(x, history, multiplier, base, allowed, last_n, breakers):
    """DRY, naively: for every earlier end of the window's last tokens, how far back the two
    agree (never over a breaker); the token after it loses multiplier * base^(len - allowed)."""
    h = list(history) if last_n < 0 else list(history)[-last_n:]
    n, best = len(h), {}
    for i in range(n - 1):  # an earlier place, ending at h[i], followed by h[i + 1]
        k = 0
        while k <= i and h[i - k] == h[n - 1 - k] and h[n - 1 - k] not in breakers:
            k += 1
        if k >= allowed:
            best[h[i + 1]] = max(best.get(h[i + 1], 0), k)
    s = x.astype(np.float64)
    cap = np.log(np.finfo(np.float32).max) / np.log(base)
    for t, k in best.items():
        s[t] -= multiplier * base ** min(k - allowed, cap)
    return s


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("allowed, last_n, breakers", [(2, -1, ()), (1, -1, (7,)), (3, 40, (3, 9)), (2, 25, (4,))])
def test_dry(seed, allowed, last_n, breakers):
    rng = np.random.default_rng(seed)
    plain = [v for v in range(12) if v not in breakers]
    motif = rng.choice(plain, 6).tolist()  # a history full of repeats, some broken by breakers
    history = []
    for _ in range(12):
        history += motif[:rng.integers(2, 7)] + rng.integers(0, 12, rng.integers(0, 3)).tolist()
    history += motif[:4]  # it ends in a repeat
    x = random_logits(seed, n=50)
    got = ours(x, history, temperature=0.0, dry_multiplier=0.8, dry_base=1.75, dry_allowed_length=allowed,
               dry_penalty_last_n=last_n, dry_sequence_breakers=breakers)
    want = _dry_reference(x, history, 0.8, 1.75, allowed, last_n, set(breakers))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert (got != x).any()


def test_dry_repeats_stop_at_breakers():
    history = [1, 2, 3, 9, 1, 2, 3, 9, 1, 2, 3]  # "1 2 3" three times, 9 between
    x = np.zeros(12, dtype=np.float32)
    for breakers, penalty in [((), 2.0 ** (7 - 2)), ((9,), 2.0 ** (3 - 2))]:
        got = ours(x, history, temperature=0.0, dry_multiplier=1.0, dry_base=2.0, dry_sequence_breakers=breakers)
        assert got[9] == -penalty and (np.delete(got, 9) == 0).all()
        np.testing.assert_allclose(got, _dry_reference(x, history, 1.0, 2.0, 2, -1, set(breakers)))
    # a breaker last: nothing repeats across it
    got = ours(x, history + [9], temperature=0.0, dry_multiplier=1.0, dry_base=2.0, dry_sequence_breakers=(9,))
    assert (got == 0).all()


def test_dry_caps_the_exponent_where_a_float_would_overflow():
    history = [1, 2] * 300  # a repeat hundreds of tokens long
    x = np.zeros(10, dtype=np.float32)
    got = ours(x, history, temperature=0.0, dry_multiplier=1.0, dry_base=1.75)
    assert np.isfinite(got).all() and got[1] < -1e37 and got[2] == 0.0
    want = _dry_reference(x, history, 1.0, 1.75, 2, -1, set())
    np.testing.assert_allclose(got, want, rtol=1e-6)


HISTORY = [5, 17, 5, 999, 3, 17, 42, 5, 17]


@pytest.mark.parametrize("kind", LOGITS)
@pytest.mark.parametrize("penalty", [0.5, 1.2, 2.0])
def test_repetition_penalty(kind, penalty):
    x = LOGITS[kind]()
    # transformers penalises the whole sequence, prompt included: so do we
    got = ours(x, HISTORY, n_prompt=4, repetition_penalty=penalty)
    assert_same_scores(got, theirs(tlp.RepetitionPenaltyLogitsProcessor(penalty), x, HISTORY))
    assert not np.array_equal(got, x)


@pytest.mark.parametrize("kind", LOGITS)
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_no_repeat_ngram(kind, n):
    x = LOGITS[kind]()
    got = ours(x, HISTORY, no_repeat_ngram_size=n)
    assert_same_scores(got, theirs(tlp.NoRepeatNGramLogitsProcessor(n), x, HISTORY))
    if n == 2:  # the sequence ends in 17; "17 5" and "17 42" were seen
        assert np.isneginf(got[[5, 42]]).all() and np.isfinite(got[999])


@pytest.mark.parametrize("kind", LOGITS)
def test_logit_bias(kind):
    x = LOGITS[kind]()
    bias = {3: 5.0, 10: -2.5, 11: -math.inf, 500: 0.25}
    want = theirs(tlp.SequenceBiasLogitsProcessor([[[k], v] for k, v in bias.items()]), x)
    assert_same_scores(ours(x, logit_bias=bias), want)


@pytest.mark.parametrize("generated", [0, 2, 3, 5])
def test_min_new_tokens_bans_the_end_tokens(generated):
    # set by the decode loop (eos, stop_token_ids): not a sampling_params() argument
    x = LOGITS["random"]()
    prompt = [5, 6, 7]
    history = prompt + [9] * generated
    p = sampling_params(V)
    p.min_new_tokens, p.end_tokens = 3, [50256, 11]
    got = _core.process_logits(x, history, len(prompt), p)
    want = theirs(tlp.MinNewTokensLengthLogitsProcessor(len(prompt), 3, [50256, 11]), x, history)
    assert_same_scores(got, want)
    assert np.isneginf(got[[50256, 11]]).all() == (generated < 3)
    assert np.isfinite(got[12])


@pytest.mark.parametrize("generated", [0, 2, 3, 7])
@pytest.mark.parametrize("start, factor", [(2, 1.5), (0, 1.1), (3, 0.5)])
def test_exponential_decay_length_penalty(generated, start, factor):
    x = LOGITS["random"]()
    x[11] = -abs(x[11])  # a negative end-token score too: |s| makes it grow either way
    prompt = [5, 6, 7]
    history = prompt + [9] * generated
    p = sampling_params(V, exponential_decay_length_penalty=(start, factor))
    p.end_tokens = [50256, 11]  # set by the decode loop
    got = _core.process_logits(x, history, len(prompt), p)
    want = theirs(tlp.ExponentialDecayLengthPenalty((start, factor), [50256, 11], len(prompt)), x, history)
    assert_same_scores(got, want, rtol=1e-6)
    changed = np.flatnonzero(got != x)
    assert changed.tolist() == ([11, 50256] if generated > start else [])


SEQUENCE_HISTORY = [5, 6, 7, 8]
SEQUENCE_BIAS = {(3,): 2.5, (7, 8, 10): -1.5, (8, 11): 4.0, (6, 12): 9.0, (4, 5, 6, 7, 8, 13): 1.0, (8, 3): 0.5}


@pytest.mark.parametrize("kind", LOGITS)
def test_sequence_bias(kind):
    # (7, 8, 10), (8, 11), (8, 3) match the history's end; (6, 12) does not; (4, ..., 13) is
    # longer than the history
    x = LOGITS[kind]()
    got = ours(x, SEQUENCE_HISTORY, sequence_bias=SEQUENCE_BIAS)
    want = theirs(tlp.SequenceBiasLogitsProcessor([[list(k), v] for k, v in SEQUENCE_BIAS.items()]), x,
                  SEQUENCE_HISTORY)
    assert_same_scores(got, want)
    changed = np.flatnonzero(got != x)
    assert changed.tolist() == [3, 10, 11]


@pytest.mark.parametrize("kind", LOGITS)
def test_bad_words_ids(kind):
    x = LOGITS[kind]()
    bad = [[9], [7, 8, 10], [6, 12], [8, 11], [5, 6, 7, 8, 13], [4, 5, 6, 7, 8, 14]]
    got = ours(x, SEQUENCE_HISTORY, bad_words_ids=bad)
    assert_same_scores(got, theirs(tlp.NoBadWordsLogitsProcessor(bad), x, SEQUENCE_HISTORY))
    assert np.isneginf(got[[9, 10, 11, 13]]).all() and np.isfinite(got[[12, 14]]).all()


def test_presence_and_frequency_penalties_follow_openai():
    x = random_logits(3, n=100)
    history, n_prompt = [1, 2, 3, 4, 5, 6, 7, 7, 7, 9, 3], 6  # generated: 7 7 7 9 3
    got = ours(x, history, n_prompt=n_prompt, presence_penalty=0.5, frequency_penalty=0.25)
    want = x.astype(np.float64).copy()
    counts = np.bincount(history[n_prompt:], minlength=100)
    want -= counts * 0.25 + (counts > 0) * 0.5  # OpenAI's definition, generated tokens only
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got[1] == x[1]  # prompt-only tokens are not penalised


def test_processors_chain_in_transformers_order():
    x = lm_like_logits(4)
    history = [10, 20, 30, 10, 20]
    kw = dict(temperature=0.8, top_k=40, top_p=0.9, min_p=0.02, typical_p=0.95, repetition_penalty=1.3,
              no_repeat_ngram_size=2, logit_bias={7: 1.5})
    chain = tlp.LogitsProcessorList([
        tlp.SequenceBiasLogitsProcessor([[[7], 1.5]]),
        tlp.RepetitionPenaltyLogitsProcessor(1.3),
        tlp.NoRepeatNGramLogitsProcessor(2),
        tlp.TemperatureLogitsWarper(0.8),
        tlp.TopKLogitsWarper(40),
        tlp.TopPLogitsWarper(0.9),
        tlp.MinPLogitsWarper(0.02),
        tlp.TypicalLogitsWarper(0.95),
    ])
    got = ours(x, history, **kw)
    assert_same_scores(got, theirs(chain, x, history), rtol=1e-5)
    assert 1 < np.isfinite(got).sum() < 40


def test_model_logits_match_transformers(model_logits):
    x, history = model_logits
    for proc, kw, dtype in [
        (tlp.TopPLogitsWarper(0.9), dict(top_p=0.9), torch.float64),
        (tlp.TopKLogitsWarper(20), dict(top_k=20), torch.float32),
        (tlp.MinPLogitsWarper(0.1), dict(min_p=0.1), torch.float64),
        (tlp.TypicalLogitsWarper(0.9), dict(typical_p=0.9), torch.float64),
        (tlp.RepetitionPenaltyLogitsProcessor(1.5), dict(repetition_penalty=1.5), torch.float32),
        (tlp.NoRepeatNGramLogitsProcessor(1), dict(no_repeat_ngram_size=1), torch.float32),
    ]:
        assert_same_scores(ours(x, history, temperature=1.0, **kw), theirs(proc, x, history, dtype=dtype))


# -- greedy ---------------------------------------------------------------------------------------


def test_greedy_ignores_the_sampling_filters():
    x = lm_like_logits(5)
    got = ours(x, temperature=0.0, top_k=3, top_p=0.5, typical_p=0.2, min_p=0.5)
    np.testing.assert_array_equal(got, x)  # warpers only shape a random draw, as in transformers
    p = sampling_params(V, temperature=0.0, typical_p=0.2)
    assert _core.sample_tokens(x, [], 0, p, 0, 0, 3).tolist() == [int(np.argmax(x))] * 3


def test_greedy_applies_penalties_and_takes_lowest_id_on_ties():
    x = np.array([1.0, 4.0, 4.0, 2.0], dtype=np.float32)
    assert _core.sample_tokens(x, [], 0, sampling_params(4), 0, 0, 1)[0] == 1  # like torch.argmax
    p = sampling_params(4, repetition_penalty=4.0)
    assert _core.sample_tokens(x, [1], 1, p, 0, 0, 1)[0] == 2


def test_greedy_is_the_first_largest_logit_on_every_isa():
    """Plain greedy decoding takes the kernels' argmax of the logits themselves (no copy, no
    processing): the first of equal largest values, never -inf, the same as greedy with a
    processor that leaves every score as it is; ValueError when nothing is left. (NaN logits
    are refused before sampling; the kernel's NaN rule is tested in test_kernels.)"""
    rng = np.random.default_rng(3)
    x = rng.integers(-5, 5, V).astype(np.float32)  # ties in every lane
    x[rng.integers(0, V, 1000)] = -np.inf
    want = int(np.flatnonzero(x == x.max())[0])
    plain = sampling_params(V)
    processed = sampling_params(V, repetition_penalty=2.0)  # history [] : changes nothing
    for isa in ISAS:
        assert _core.sample_tokens(x, [], 0, plain, 0, 0, 2, isa).tolist() == [want] * 2
        assert _core.sample_tokens(x, [], 0, processed, 0, 0, 1, isa)[0] == want
        with pytest.raises(ValueError, match="filtered out"):
            _core.sample_tokens(np.full(V, -np.inf, np.float32), [], 0, plain, 0, 0, 1, isa)
        with pytest.raises(ValueError, match="outside the vocabulary"):
            _core.sample_tokens(x, [V], 1, plain, 0, 0, 1, isa)


# -- draws ----------------------------------------------------------------------------------------


# A correct sampler fails a chi-square test at this level with probability 1e-4 per seed (the
# seeds are fixed, so the tests are deterministic).
CHI2_P_VALUE = 1e-4


def chi2_p_value(stat, df):
    """P(X >= stat) for X ~ chi-square(df): the regularized upper incomplete gamma Q(df/2, stat/2)."""
    return torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                   torch.tensor(stat / 2, dtype=torch.float64)).item()


def chi2_statistic(counts, probs):
    expected = counts.sum() * probs
    return float((((counts - expected) ** 2) / expected).sum())


@pytest.mark.parametrize("seed", [1, 2])
def test_draws_follow_the_processed_distribution(seed):
    x = random_logits(10, n=64, scale=1.5)
    kw = dict(temperature=0.8, top_k=40, top_p=0.95, repetition_penalty=1.2)
    history = [3, 4, 5]
    scores = ours(x, history, **kw).astype(np.float64)
    kept = np.isfinite(scores)
    probs = np.exp(scores[kept] - scores[kept].max())
    probs /= probs.sum()
    assert probs.min() * 200_000 > 5  # every expected count is large enough for the test

    n = 200_000
    draws = _core.sample_tokens(x, history, len(history), sampling_params(64, **kw), seed, 0, n)
    counts = np.bincount(draws, minlength=64)
    assert counts[~kept].sum() == 0, "drew a filtered token"
    df = int(kept.sum()) - 1
    stat = chi2_statistic(counts[kept].astype(np.float64), probs)
    assert chi2_p_value(stat, df) > CHI2_P_VALUE, f"chi2 = {stat:.1f} with {df} degrees of freedom"

    # the same test tells a wrong distribution apart (the unprocessed softmax over the kept set)
    raw = np.exp(x[kept].astype(np.float64) - x[kept].max())
    wrong = chi2_statistic(counts[kept].astype(np.float64), raw / raw.sum())
    assert chi2_p_value(wrong, df) < 1e-12


def processed_distribution(x, history, **kw):
    """(p, kept): the probabilities our processors leave for logits x, and where they are > 0."""
    scores = ours(x, history, **kw).astype(np.float64)
    kept = np.isfinite(scores)
    probs = np.where(kept, np.exp(scores - scores[kept].max()), 0.0)
    return probs / probs.sum(), kept


def two_sample_chi2(counts_a: dict, counts_b: dict, n: int, min_count: int = 20):
    """(p-value, tokens counted apart) of a two-sample chi-square test of n draws each, given
    as {token: count}: the tokens drawn at least min_count times in all, and the rest together."""
    tokens = sorted(set(counts_a) | set(counts_b), key=lambda t: -(counts_a.get(t, 0) + counts_b.get(t, 0)))
    big = [t for t in tokens if counts_a.get(t, 0) + counts_b.get(t, 0) >= min_count]
    table = np.array([[c.get(t, 0) for t in big] + [n - sum(c.get(t, 0) for t in big)]
                      for c in (counts_a, counts_b)], float)
    table = table[:, table.sum(axis=0) > 0]
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    return chi2_p_value(float(((table - expected) ** 2 / expected).sum()), table.shape[1] - 1), len(big)


def generated_token_counts(model, prompt, pos, n, **options):
    """({token: count} of the token at generated position pos over seeds 0 .. n - 1, the draft
    tokens proposed and those taken over the n runs)."""
    counts, drafted, accepted = {}, 0, 0
    for seed in range(n):
        out = model.generate(prompt, seed=seed, **options)
        t = out.tokens[pos]
        counts[t] = counts.get(t, 0) + 1
        drafted += out.timings.draft_tokens
        accepted += out.timings.accepted_draft_tokens
    return counts, drafted, accepted


SPECULATIVE_CASE = dict(temperature=0.8, top_k=40, repetition_penalty=1.2)  # with history [3, 4, 5]


@pytest.mark.parametrize("rank", [0, 2, 10])
def test_draws_against_a_draft_follow_the_processed_distribution(rank):
    """Speculative sampling against a one-token draft (prompt lookup): the draft is taken with
    its probability, and the tokens are distributed as without a draft."""
    x = random_logits(11, n=64, scale=1.5)
    kw = SPECULATIVE_CASE
    history = [3, 4, 5]
    probs, kept = processed_distribution(x, history, **kw)
    draft = int(np.argsort(-probs, kind="stable")[rank])

    n = 200_000
    assert probs[kept].min() * n > 5  # every expected count is large enough for the test
    tokens, taken = _core.sample_draft_tokens(x, history, len(history), sampling_params(64, **kw), 7, draft, n)
    assert np.all(tokens[taken] == draft) and np.all(tokens[~taken] != draft)
    p = probs[draft]
    assert abs(taken.mean() - p) < 5 * math.sqrt(p * (1 - p) / n), (taken.mean(), p)
    counts = np.bincount(tokens, minlength=64)
    assert counts[~kept].sum() == 0
    df = int(kept.sum()) - 1
    stat = chi2_statistic(counts[kept].astype(np.float64), probs[kept])
    assert chi2_p_value(stat, df) > CHI2_P_VALUE, f"chi2 = {stat:.1f} with {df} degrees of freedom"
    # what a sampler that drew the rejected case from all of p (draft included) would give
    wrong = probs * (1 - p)
    wrong[draft] += p
    assert chi2_p_value(chi2_statistic(counts[kept].astype(np.float64), wrong[kept]), df) < 1e-12


@pytest.mark.parametrize("q_kind", ["close", "far", "same"])
def test_draws_against_a_drawn_draft_follow_the_processed_distribution(q_kind):
    """Speculative sampling against a draft drawn from q (an assistant model's distribution):
    the draft is taken with probability min(1, p / q), and the tokens are distributed as p,
    whatever q."""
    x = random_logits(13, n=64, scale=1.5)
    kw = SPECULATIVE_CASE
    history = [3, 4, 5]
    probs, kept = processed_distribution(x, history, **kw)
    rng = np.random.default_rng(3)
    q = {"same": probs, "close": probs * rng.uniform(0.7, 1.3, 64),
         "far": rng.uniform(0.0, 1.0, 64)}[q_kind]
    q = (q / q.sum()).astype(np.float32)
    n = 200_000
    taken_by_draft = {}
    ratio = np.where(kept, q / np.maximum(probs, 1e-30), 0.0)
    for draft in (int(np.argmax(probs)), int(np.argmax(ratio))):  # the most over-proposed: often refused
        tokens, taken = _core.sample_draft_tokens(x, history, len(history), sampling_params(64, **kw), 7, draft, n,
                                                  q)
        assert np.all(tokens[taken] == draft)
        rate = min(1.0, probs[draft] / float(q[draft]))
        assert abs(taken.mean() - rate) < 5 * math.sqrt(max(rate * (1 - rate), 1e-12) / n) + 1e-9, (taken.mean(), rate)
        taken_by_draft[draft] = taken.mean()
        # the tokens drawn instead follow the residual max(0, p - q), renormalised: with the
        # rate above and a draft drawn from q, that makes every token's probability p's
        # (Leviathan et al., 2023, appendix A.1)
        rejected = tokens[~taken]
        if rejected.size > 1000:
            residual = np.maximum(probs - q.astype(np.float64), 0.0)
            residual /= residual.sum()
            support = residual > 0
            c = np.bincount(rejected, minlength=64)
            assert c[~support].sum() == 0
            stat = chi2_statistic(c[support].astype(np.float64), residual[support])
            assert chi2_p_value(stat, int(support.sum()) - 1) > CHI2_P_VALUE, stat
    if q_kind == "same":
        assert all(t == 1.0 for t in taken_by_draft.values())  # p / q = 1: always taken


def test_greedy_against_a_draft_takes_it_when_it_is_the_argmax():
    x = random_logits(12, n=100)
    best = int(np.argmax(x))
    tokens, taken = _core.sample_draft_tokens(x, [], 0, sampling_params(100), 0, best, 3)
    assert tokens.tolist() == [best] * 3 and taken.all()
    tokens, taken = _core.sample_draft_tokens(x, [], 0, sampling_params(100), 0, (best + 1) % 100, 2)
    assert tokens.tolist() == [best] * 2 and not taken.any()
    with pytest.raises(ValueError, match="draft token"):
        _core.sample_draft_tokens(x, [], 0, sampling_params(100), 0, 100, 1)


def test_chi2_p_value():
    # tabulated 0.9999 quantiles of chi-square: df 10 -> 35.56, df 1 -> 15.14
    assert chi2_p_value(35.56, 10) == pytest.approx(1e-4, rel=0.01)
    assert chi2_p_value(15.14, 1) == pytest.approx(1e-4, rel=0.01)


def test_same_seed_same_draws_and_streams_differ():
    x = lm_like_logits(6)
    p = sampling_params(V, temperature=1.0, top_p=0.95)
    a = _core.sample_tokens(x, [], 0, p, 1234, 0, 50)
    np.testing.assert_array_equal(a, _core.sample_tokens(x, [], 0, p, 1234, 0, 50))
    assert not np.array_equal(a, _core.sample_tokens(x, [], 0, p, 1234, 1, 50))
    assert not np.array_equal(a, _core.sample_tokens(x, [], 0, p, 1235, 0, 50))


def test_uniform_logits_give_uniform_draws():
    n_bins, n = 256, 256 * 200
    draws = _core.sample_tokens(np.zeros(n_bins, np.float32), [], 0, sampling_params(n_bins, temperature=1.0), 7, 0, n)
    stat = chi2_statistic(np.bincount(draws, minlength=n_bins).astype(np.float64), np.full(n_bins, 1 / n_bins))
    assert chi2_p_value(stat, n_bins - 1) > CHI2_P_VALUE


def test_tiny_temperature_draws_the_top_token():
    x = lm_like_logits(8, n=500)
    x -= x.max() + 1.0  # all negative: they overflow to -inf
    x[123] = 0.5        # this one to +inf
    p = sampling_params(500, temperature=1e-38, top_p=0.9, min_p=0.1, typical_p=0.9)  # scores overflow to inf
    assert _core.sample_tokens(x, [], 0, p, 5, 0, 20).tolist() == [123] * 20


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw, exc", [
    (dict(temperature=-0.1), ValueError),
    (dict(temperature=float("nan")), ValueError),
    (dict(temperature="hot"), TypeError),
    (dict(top_k=-1), ValueError),
    (dict(top_k=2.5), TypeError),
    (dict(top_k=True), TypeError),
    (dict(top_p=1.5), ValueError),
    (dict(min_p=-0.1), ValueError),
    (dict(typical_p=0.0), ValueError),
    (dict(epsilon_cutoff=1.0), ValueError),
    (dict(eta_cutoff=-0.1), ValueError),
    (dict(top_n_sigma=-1.0), ValueError),
    (dict(top_n_sigma=float("inf")), ValueError),
    (dict(xtc_probability=1.5), ValueError),
    (dict(xtc_threshold="high"), TypeError),
    (dict(mirostat=3), ValueError),
    (dict(dry_multiplier=0.5, dry_base=1.0), ValueError),
    (dict(dry_multiplier=0.5, dry_allowed_length=0), ValueError),
    (dict(dry_multiplier=0.5, dry_penalty_last_n=0), ValueError),
    (dict(dry_multiplier=0.5, dry_sequence_breakers=[V]), ValueError),
    (dict(dry_multiplier=-1.0), ValueError),
    (dict(mirostat=2, temperature=1.0, top_k=5), ValueError),
    (dict(mirostat=2, temperature=0.0), ValueError),
    (dict(mirostat=1, temperature=1.0, mirostat_tau=-1.0), ValueError),
    (dict(repetition_penalty=0.0), ValueError),
    (dict(presence_penalty=float("inf")), ValueError),
    (dict(no_repeat_ngram_size=-2), ValueError),
    (dict(logit_bias={V: 1.0}), ValueError),
    (dict(logit_bias={-1: 1.0}), ValueError),
    (dict(logit_bias={"5": 1.0}), TypeError),
    (dict(logit_bias={5: float("nan")}), ValueError),
    (dict(logit_bias=[(5, 1.0)]), TypeError),
])
def test_bad_parameters(kw, exc):
    with pytest.raises(exc):
        sampling_params(V, **kw)


def test_core_validates_too():
    p = _core.SamplingParams()
    p.top_p = 2.0
    with pytest.raises(ValueError, match="top_p"):
        _core.process_logits(np.zeros(10, np.float32), [], 0, p)
    with pytest.raises(ValueError, match="NaN"):
        _core.process_logits(np.array([0.0, np.nan], np.float32), [], 0, _core.SamplingParams())
    with pytest.raises(ValueError, match="vocabulary"):
        _core.process_logits(np.zeros(10, np.float32), [10], 0, _core.SamplingParams())
    p = _core.SamplingParams()
    p.min_new_tokens = -1
    with pytest.raises(ValueError, match="min_new_tokens"):
        _core.process_logits(np.zeros(10, np.float32), [], 0, p)
    p = _core.SamplingParams()
    p.end_tokens = [10]
    with pytest.raises(ValueError, match="end token id 10"):
        _core.process_logits(np.zeros(10, np.float32), [], 0, p)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_everything_filtered_is_a_value_error(temperature):
    p = sampling_params(3, temperature=temperature, logit_bias={0: -math.inf, 1: -math.inf, 2: -math.inf})
    with pytest.raises(ValueError, match="filtered out"):
        _core.sample_tokens(np.zeros(3, np.float32), [], 0, p, 0, 0, 1)


@pytest.mark.parametrize("logits,expected", [
    ([1.0, 3.0, 3.0, 2.0], 1),                      # ties: the first largest
    ([-math.inf, -5.0, -math.inf], 1),              # filtered tokens are never chosen
    ([0.0, math.inf, math.inf, 1.0], 1),            # +inf is a score like any other
    ([-3.0] * 37 + [-2.5] + [-3.0] * 10, 37),
])
def test_greedy_picks_the_first_largest_score(logits, expected):
    p = sampling_params(len(logits), temperature=0.0)
    assert list(_core.sample_tokens(np.array(logits, np.float32), [], 0, p, 0, 0, 2)) == [expected, expected]
