"""Sampling functions, and ``generate`` against the full forward on the growing prefix."""

from __future__ import annotations

import copy
import logging
import math
import re

import pytest
import torch

from evo_cli.errors import EvoError, InputError
from evo_cli.generation import generate
from evo_cli.model.tokenizer import encode
from evo_cli.sampling import check_sampling, sample_tokens

PROBS = torch.tensor([0.5, 0.25, 0.15, 0.1])


def _frequencies(probs_logits, n=1000, **kw):
    """Token frequencies over an evenly spaced grid of draws: exactly the sampled distribution."""
    u = (torch.arange(n) + 0.5) / n
    tokens = sample_tokens(probs_logits.expand(n, -1), u, **kw)
    return torch.bincount(tokens, minlength=probs_logits.shape[-1]).float() / n


def _logits(probs, vocab=8):
    x = torch.full((1, vocab), -math.inf)
    x[0, : len(probs)] = probs.log()
    return x


@pytest.mark.parametrize(
    "kw, expected",
    [
        (dict(top_k=0), [0.5, 0.25, 0.15, 0.1]),
        (dict(top_k=0, temperature=2.0), (PROBS.sqrt() / PROBS.sqrt().sum()).tolist()),
        (dict(top_k=2), [2 / 3, 1 / 3, 0, 0]),
        (dict(top_k=0, top_p=0.75), [2 / 3, 1 / 3, 0, 0]),
        (dict(top_k=0, top_p=0.76), [0.5 / 0.9, 0.25 / 0.9, 0.15 / 0.9, 0]),
        # top-k, then temperature, then top-p: probs among the top 3 at T=0.5 are (.746, .187, .067),
        # so p=0.9 keeps two tokens (on the untempered probs it would keep three)
        (dict(top_k=3, temperature=0.5, top_p=0.9), [0.8, 0.2, 0, 0]),
    ],
)
def test_sampled_distribution(kw, expected):
    freq = _frequencies(_logits(PROBS), **kw)
    assert torch.allclose(freq[:4], torch.tensor(expected), atol=2e-3), freq
    assert freq[4:].sum() == 0


def test_greedy_is_argmax_and_ignores_draws():
    logits = torch.randn(6, 512, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sample_tokens(logits, None, top_k=1), logits.argmax(-1))


def test_nan_is_impossible_and_inf_wins():
    x = _logits(PROBS)
    x[0, 0] = float("nan")
    assert _frequencies(x, top_k=0)[0] == 0
    assert sample_tokens(x, None, top_k=1).item() == 1
    x[0, 3] = float("inf")
    assert _frequencies(x, top_k=0)[3] == 1


@pytest.mark.parametrize("temperature, top_k, top_p, match", [
    (0.0, 4, 1.0, "temperature"), (float("nan"), 0, 1.0, "temperature"), (1.0, 4, 0.0, "top_p"),
    (1.0, 4, 1.5, "top_p"), ("hot", 4, 1.0, "temperature must be a number"), (1.0, 4.0, 1.0, "top_k must be an integer"),
])
def test_check_sampling_rejects(temperature, top_k, top_p, match):
    with pytest.raises(InputError, match=match):
        check_sampling(temperature, top_k, top_p)


def test_check_sampling_greedy_ignores_temperature():
    check_sampling(0.0, 1, 1.0)


def _prompt(length, seed):
    g = torch.Generator().manual_seed(seed)
    return "".join("ACGT"[i] for i in torch.randint(0, 4, (length,), generator=g).tolist())


LENGTHS = [1, 2, 5, 6, 7, 127, 128, 129, 300]


@pytest.mark.parametrize("family", ["evo1", "evo2"])
def test_greedy_generation_equals_full_forward(tiny_models, family):
    """Prompts of every awkward length in one call (mixed-length batches, teacher forcing): each
    greedy token is the argmax of the full forward on the prefix, and the step log-probs match it."""
    model = tiny_models[family]
    n = 4
    prompts = [_prompt(L, L) for L in LENGTHS]
    gens = generate(model, prompts, n, top_k=1, batch_size=4)
    assert [g.prompt_id for g in gens] == [f"prompt{i}" for i in range(1, len(LENGTHS) + 1)]
    for prompt, gen in zip(prompts, gens):
        ids = torch.tensor([encode(prompt) + list(gen.token_ids)])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids)[0, len(prompt) - 1 : -1], -1)
        assert list(gen.token_ids) == logp.argmax(-1).tolist(), len(prompt)
        expected = logp.gather(-1, ids[0, len(prompt) :, None]).mean().item()
        assert abs(gen.logprob_mean - expected) < 1e-4, (len(prompt), gen.logprob_mean, expected)


def test_samples_are_within_top_k_of_full_forward(tiny_models):
    model = tiny_models["evo2"]
    prompt = _prompt(20, 1)
    (gen,) = generate(model, prompt, 12, top_k=3, seed=0)
    ids = torch.tensor([encode(prompt) + list(gen.token_ids)])
    with torch.no_grad():
        top3 = model(ids)[0, 19:-1].topk(3, -1).indices
    assert all(t in row for t, row in zip(gen.token_ids, top3.tolist()))


@pytest.mark.parametrize("family", ["evo1", "evo2"])
def test_seed_reproducible_and_batch_independent(tiny_models, family):
    model = tiny_models[family]
    prompts = {"a": _prompt(3, 0), "b": _prompt(40, 1), "c": _prompt(10, 2)}
    # the tiny random models are very peaked: a high temperature makes samples differ
    kw = dict(n_tokens=10, top_k=0, temperature=5.0, num_samples=3, seed=7)
    batched = generate(model, prompts, batch_size=8, **kw)
    alone = generate(model, prompts, batch_size=1, **kw)
    assert [(g.prompt_id, g.sample) for g in batched] == [(p, k) for p in "abc" for k in range(3)]
    assert [g.token_ids for g in batched] == [g.token_ids for g in alone]
    assert all(g.seed == 7 for g in batched)
    # samples of one prompt differ, and another seed gives other samples
    assert len({g.token_ids for g in batched[:3]}) == 3
    other = generate(model, prompts, batch_size=8, **{**kw, "seed": 8})
    assert [g.token_ids for g in other] != [g.token_ids for g in batched]



def test_each_sample_has_its_own_stream(tiny_models):
    """A (prompt, sample) row draws from a stream of its own, seeded by (seed, prompt index, sample index),
    one number per token: fewer samples give the first samples of a larger run, fewer tokens the first
    tokens, and the same prompt at another index other samples."""
    model = tiny_models["evo2"]
    kw = dict(top_k=0, temperature=5.0, seed=7)
    big = generate(model, {"a": _prompt(5, 0), "b": _prompt(9, 1)}, 12, num_samples=3, batch_size=4, **kw)
    small = generate(model, {"a": _prompt(5, 0), "b": _prompt(9, 1)}, 7, num_samples=2, batch_size=1, **kw)
    assert [(g.prompt_id, g.sample) for g in small] == [(p, k) for p in "ab" for k in range(2)]
    kept = [g for g in big if g.sample < 2]
    assert [g.token_ids[:7] for g in kept] == [g.token_ids for g in small]
    assert len({g.token_ids for g in big}) == 6
    moved = generate(model, {"b": _prompt(9, 1)}, 7, num_samples=2, **kw)  # prompt b at index 0
    assert [g.token_ids for g in moved] != [g.token_ids for g in small[2:]]

def test_unseeded_run_reports_its_seed(tiny_models):
    model = tiny_models["evo2"]
    first = generate(model, "ACGTAC", 8, top_k=0, temperature=5.0, num_samples=2)
    again = generate(model, "ACGTAC", 8, top_k=0, temperature=5.0, num_samples=2, seed=first[0].seed)
    assert [g.token_ids for g in first] == [g.token_ids for g in again]
    assert first[0].token_ids != first[1].token_ids


def test_chunked_prefill_same_output(tiny_models):
    model = tiny_models["evo1"]
    prompt = _prompt(150, 3)
    one = generate(model, prompt, 8, top_k=0, temperature=5.0, seed=1, prefill_chunk=None)
    chunked = generate(model, prompt, 8, top_k=0, temperature=5.0, seed=1, prefill_chunk=7)
    assert one[0].token_ids == chunked[0].token_ids
    assert abs(one[0].logprob_mean - chunked[0].logprob_mean) < 1e-5


def test_progress_counts_every_token(tiny_models):
    seen = []
    generate(tiny_models["evo2"], ["ACG", "ACGTACGTAC"], 5, num_samples=2, seed=0, progress=seen.append)
    assert sum(seen) == 2 * 2 * 5


def test_prompt_checks(tiny_models, caplog):
    model = tiny_models["evo2"]
    with pytest.raises(InputError, match=r"prompt 'prompt2' has 'N' at position 3"):
        generate(model, ["ACGT", "ACNT"], 4)
    # a byte of a prompts FASTA that is not UTF-8 (read as U+FFFD) is named as such
    with pytest.raises(InputError, match=r"prompt 'p' has a byte that is not UTF-8 text \(.*\) at position 2"):
        generate(model, {"p": "A\ufffdGT"}, 4)
    with pytest.raises(InputError, match="'x' is empty"):
        generate(model, {"x": ""}, 4)
    with pytest.raises(InputError, match="past the model's context"):
        generate(model, "ACGT", model.config.max_seqlen)
    with pytest.raises(InputError, match="n_tokens must be at least 1"):
        generate(model, "ACGT", 0)
    with pytest.raises(InputError, match="num_samples"):
        generate(model, "ACGT", 4, num_samples=0)
    with caplog.at_level(logging.WARNING):
        lower = generate(model, "acgtac", 6, top_k=1)
    assert "upper-cased" in caplog.text
    assert lower[0].token_ids == generate(model, "ACGTAC", 6, top_k=1)[0].token_ids


def test_nan_logits_are_an_error(tiny_models):
    broken = copy.deepcopy(tiny_models["evo2"])
    with torch.no_grad():
        broken.norm.scale[0] = float("nan")
    with pytest.raises(EvoError, match=r"NaN or infinite values for prompt 'prompt1' while sampling \(already float32"):
        generate(broken, "ACGTACGT", 3, seed=0)


def test_numpy_numbers_are_numbers(tiny_models, tmp_path):
    """numpy scalars (np.arange, np.linspace) are the numbers they hold: top_k=np.int64(4) was refused as
    "top_k must be an integer ..., got np.int64(4)", and numpy values written to a file failed with a
    TypeError (not JSON serializable); a float where an integer is needed is one InputError."""
    import numpy as np

    from evo_cli.generation import run_generate
    from evo_cli.io.generated import read_generations_jsonl

    model = tiny_models["evo2"]
    want = generate(model, "ACGTAC", 4, top_k=4, temperature=0.5, num_samples=2, seed=3)
    got = generate(model, "ACGTAC", np.int64(4), top_k=np.int64(4), temperature=np.float32(0.5), num_samples=np.int32(2),
                   seed=np.uint32(3), batch_size=np.int64(1), prefill_chunk=np.int64(2))
    assert got == want
    out = tmp_path / "g.jsonl"
    gens, _ = run_generate(model, "ACGTAC", np.int64(4), out, top_k=np.int64(4), temperature=np.float32(0.5),
                           num_samples=np.int64(2), seed=np.int64(3), batch_size=np.int64(1))
    assert gens == want and [r["token_ids"] for r in read_generations_jsonl(out)] == [list(g.token_ids) for g in want]
    for kw, message in [(dict(n_tokens=2.5), "n_tokens must be an integer, got 2.5"),
                        (dict(num_samples=2.0), "num_samples must be an integer, got 2.0"),
                        (dict(seed=1.5), "seed must be an integer, got 1.5")]:
        with pytest.raises(InputError, match=message):
            generate(model, "ACGT", **{"n_tokens": 3, **kw})


@pytest.mark.parametrize("prompts, message", [
    (b"ACGT", "prompts must be a DNA string, a list of them or a mapping id -> DNA string, not bytes"),
    (None, "prompts must be a DNA string, a list of them or a mapping id -> DNA string, not NoneType"),
    ([b"ACGT"], "prompt 'prompt1' must be a str, not bytes"),
    ({"a": 5}, "prompt 'a' must be a str, not int"),
    ({"a": None}, "prompt 'a' must be a str, not NoneType"),
])
def test_prompts_of_another_type_are_an_input_error(tiny_models, prompts, message):
    """bytes, None or a number as prompts ended in an AttributeError or TypeError from inside."""
    with pytest.raises(InputError, match=re.escape(message)):
        generate(tiny_models["evo2"], prompts, 2, seed=0)


def test_a_prompt_that_fills_the_context_is_told_to_shorten(tiny_models):
    """The advice was always "lower -n/--n-tokens", which cannot help a prompt as long as the context."""
    model = tiny_models["evo2"]
    context = model.config.max_seqlen
    with pytest.raises(InputError, match=r"context of [\d,]+: lower -n/--n-tokens$"):
        generate(model, "ACGT", context)
    with pytest.raises(InputError, match=rf"shorten the prompt \(to its last {context - 10:,} bases, say\)$"):
        generate(model, "A" * context, 10)
    with pytest.raises(InputError, match=r"shorten the prompt and lower -n/--n-tokens$"):
        generate(model, "A" * context, context)


def test_a_bad_prompt_character_is_named_as_given(tiny_models):
    """A lowercase 'n' was reported as 'N', and a character whose upper case is longer ('ß' -> 'SS') was
    reported as another character at another position."""
    model = tiny_models["evo2"]
    with pytest.raises(InputError, match=r"prompt 'prompt1' has 'n' at position 5:"):
        generate(model, "acgtnacgt", 2)
    with pytest.raises(InputError, match=r"prompt 'prompt1' has 'ß' at position 3:"):
        generate(model, "ACßT", 2)
