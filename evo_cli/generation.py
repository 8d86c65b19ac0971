"""Sampling DNA from a model: a parallel prefill over the prompt, then one recurrent step per token.

``generate(model, prompts, n_tokens=...)`` returns one ``Generation`` per (prompt, sample);
``run_generate`` also writes them to a file, keeping each finished batch so that an interrupted run
can resume (the rows' independent random streams make the resumed output the uninterrupted one).

How a batch runs. Rows are (prompt, sample) pairs, sorted by prompt length and cut into batches of
at most ``batch_size`` rows whose prompt lengths differ by at most ``MAX_LENGTH_SPREAD`` tokens. One
``InferenceState`` is allocated per batch, sized for the longest prompt plus ``n_tokens``. Each
distinct prompt of the batch is prefilled once (in chunks of ``prefill_chunk`` tokens, the state
carried across) up to one token short of the batch's shortest prompt, and the state is copied to
every row. From there each step feeds one token per row: the row's next prompt token while it has
any left (teacher forcing), else the token it just sampled. All rows sit at the same position, so
the state is exact for each, whatever the mix of prompt lengths. The state and the token, log-prob
and random-number buffers are allocated once per batch; a step allocates only the model's
transient activations, so memory does not grow with the generated length beyond the KV cache,
which is preallocated for it.

Reproducibility. Every row draws its random numbers from its own stream (numpy PCG64 seeded with
``(seed, prompt index, sample index)``) and ``sample_tokens`` consumes exactly one per generated
token. The same seed, prompts and settings therefore give the same tokens whatever the batch size,
the batch composition or the device, up to floating-point differences in the logits: different
batch shapes or devices can change logits in their last bits, which changes a token only when the
draw falls that close to the boundary between two tokens (or, greedy, on a near-tie). Same seed,
same batch size, same device: bit-identical output. ``seed=None`` picks a fresh seed, reported in
every ``Generation``.
"""

from __future__ import annotations

import contextlib
import logging
import numbers
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from evo_cli.distributed import Share, checkpoint_rank, current, shared_value
from evo_cli.errors import InputError
from evo_cli.io.atomic import STDOUT
from evo_cli.io.fasta import shown_char
from evo_cli.io.generated import output_format, recorded_seed, write_generations
from evo_cli.io.partial import open_progress, stored_settings
from evo_cli.limits import MAX_GENERATIONS, check_batch_size
from evo_cli.model.cpu_decode import CpuDecoder
from evo_cli.model.graph import StaticDecoder
from evo_cli.model.tokenizer import check_text, decode, encode
from evo_cli.runs import progress_metadata
from evo_cli.runtime import non_finite_error
from evo_cli.sampling import check_sampling, sample_tokens, token_logprobs

log = logging.getLogger(__name__)

# prompts in one batch differ by at most this many tokens: the shorter ones are teacher-forced one
# decode step per token, which costs far more per token than the parallel prefill
MAX_LENGTH_SPREAD = 64


@dataclass(frozen=True)
class Generation:
    """One generated continuation: ``token_ids`` exactly as sampled (the prompt is not included)."""

    prompt_id: str
    sample: int
    token_ids: tuple[int, ...]
    logprob_mean: float  # mean log p of the sampled tokens under the raw float32 logits
    seed: int

    @property
    def sequence(self) -> str:
        return decode(self.token_ids)


def prepare_prompts(prompts: str | Sequence[str] | Mapping[str, str]) -> dict[str, str]:
    """Named, validated prompts: id -> upper-case DNA.

    ``prompts``: one sequence, a list of them (named ``prompt1..N``) or a mapping id -> sequence.
    Lowercase bases are upper-cased with a logged notice (the tokenizer is case-sensitive); an empty
    prompt or a character other than A, C, G, T raises ``InputError`` naming the prompt and position,
    as does a prompt that is not a ``str`` (bytes, None, a number).
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    if isinstance(prompts, (bytes, bytearray)) or not isinstance(prompts, (Mapping, Iterable)):
        raise InputError("prompts must be a DNA string, a list of them or a mapping id -> DNA string, not "
                         f"{type(prompts).__name__}")
    items = list(prompts.items()) if isinstance(prompts, Mapping) else [(f"prompt{i}", s) for i, s in enumerate(prompts, 1)]
    if not items:
        raise InputError("no prompts given")
    named, lowered = {}, []
    for pid, seq in items:
        if not check_text(seq, f"prompt {pid!r}"):
            raise InputError(f"prompt {pid!r} is empty")
        # the character as given (upper-casing would show an 'n' as 'N', and can change the length: 'ß')
        bad = re.search("[^ACGTacgt]", seq)
        if bad:
            raise InputError(f"prompt {pid!r} has {shown_char(bad.group())} at position {bad.start() + 1}: prompts must be "
                             f"DNA (A, C, G, T)")
        upper = seq.upper()
        if upper != seq:
            lowered.append(pid)
        named[pid] = upper
    if lowered:
        log.warning("upper-cased lowercase bases in %s (the tokenizer is case-sensitive)", ", ".join(lowered))
    return named


def check_generations(n_prompts: int, num_samples: int) -> None:
    """Raise ``InputError`` when a run would make more than ``MAX_GENERATIONS`` generations (each is kept
    in memory until the output is written)."""
    if n_prompts * num_samples > MAX_GENERATIONS:
        raise InputError(f"{n_prompts:,} prompt(s) x {num_samples:,} samples: at most {MAX_GENERATIONS:,} "
                         "generations per run (each is kept until the output is written); split the run")


def check_context(model, prompts: Mapping[str, str], n_tokens: int) -> None:
    """Raise ``InputError`` when a prompt (id -> sequence, ``prepare_prompts``) plus ``n_tokens`` new
    tokens would pass the model's context. ``model``: a loaded model, or its context (an int)."""
    context = model if isinstance(model, int) else model.config.max_seqlen
    for pid, seq in prompts.items():
        n = len(encode(seq))
        if n + n_tokens > context:
            # lowering -n cannot help a prompt that fills the context alone
            if n < context:
                fix = "lower -n/--n-tokens"
            elif n_tokens < context:
                fix = f"shorten the prompt (to its last {context - n_tokens:,} bases, say)"
            else:
                fix = "shorten the prompt and lower -n/--n-tokens"
            raise InputError(f"prompt {pid!r} ({n:,} tokens) + {n_tokens:,} new tokens = {n + n_tokens:,} "
                             f"positions, past the model's context of {context:,}: {fix}")


def generate(
    model,
    prompts: str | Sequence[str] | Mapping[str, str],
    n_tokens: int = 500,
    *,
    temperature: float = 1.0,
    top_k: int = 4,
    top_p: float = 1.0,
    num_samples: int = 1,
    seed: int | None = None,
    batch_size: int = 8,
    prefill_chunk: int | None = 8192,
    progress: Callable[[int], None] | None = None,
) -> list[Generation]:
    """Sample ``n_tokens`` tokens after each prompt, ``num_samples`` times per prompt.

    Defaults follow Evo 2 (temperature 1, top-k 4, top-p 1); ``top_k=1`` is greedy decoding and
    ``top_k=0`` samples from the whole vocabulary (see ``sampling.py``; a negative top_k is an
    ``InputError``). No BOS is prepended (the reference default for both families).
    ``prefill_chunk`` bounds the prompt's activation memory (None: one pass). ``progress(n)`` is called after every step with the tokens it generated.
    Returns the generations in prompt order, samples in order within a prompt.
    """
    run = _Run(model, prompts, n_tokens, num_samples, seed, batch_size, prefill_chunk,
               dict(temperature=temperature, top_k=top_k, top_p=top_p))
    out = {}
    for batch in run.batches:
        out.update(zip(batch, run.generate(batch, progress)))
    return [out[r] for r in run.rows]


def resolve_seed(seed: int | None, output: str | Path | None, resume: bool) -> int:
    """The seed a run samples with: ``seed``; else, resuming, the interrupted run's, or the finished
    run's that ``output`` records (a resumed finished run then rewrites the same bytes); else a fresh
    one, rank 0's in a distributed run (every rank samples with it)."""
    if seed is None and resume and output not in STDOUT:
        seed = (stored_settings(output) or {}).get("seed")
        if seed is None:
            seed = recorded_seed(output)
    if seed is None and current() is not None:
        seed = int(shared_value("seed", str(secrets.randbits(32))))
    if seed is None:
        seed = secrets.randbits(32)
        log.info("seed %d", seed)
    return seed


def run_generate(
    model,
    prompts: str | Sequence[str] | Mapping[str, str],
    n_tokens: int,
    output: str | Path | None,
    *,
    format: str = "auto",
    resume: bool = False,
    settings: dict | None = None,
    header: dict | None = None,
    temperature: float = 1.0,
    top_k: int = 4,
    top_p: float = 1.0,
    num_samples: int = 1,
    seed: int | None = None,
    batch_size: int = 8,
    prefill_chunk: int | None = 8192,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[Generation], int]:
    """``generate`` and write the generations to ``output`` (FASTA or JSONL, see ``io/generated.py``;
    ``header``: the settings written with each record). Returns (generations, how many of them an
    interrupted run had made).

    Writing to a file, each finished batch is kept in ``<output>.evo-partial``; ``resume=True``
    continues an interrupted run with the same ``settings`` (``runs.run_settings``) and sampling
    options, and writes what the uninterrupted run would have: every row has its own random stream.
    ``seed=None`` when resuming takes the interrupted run's seed."""
    fmt = output_format(output, format)
    seed = resolve_seed(seed, output, resume)
    run = _Run(model, prompts, n_tokens, num_samples, seed, batch_size, prefill_chunk,
               dict(temperature=temperature, top_k=top_k, top_p=top_p))
    store = open_progress(output, {**(settings or {}), **run.sampling, "prompts": run.prompts, "n_tokens": run.n_tokens,
                                   "num_samples": run.num_samples, "seed": run.seed, "batch_size": run.batch_size,
                                   "prefill_chunk": run.prefill_chunk, "format": fmt,
                                   "header": progress_metadata(header)}, resume,
                          checkpoint_rank())
    out: dict[tuple[int, int], Generation] = {}
    resumed = 0
    with store or contextlib.nullcontext():
        share = Share(store, progress)
        for b, batch in enumerate(run.batches):
            if store is not None and b in store:
                resumed += len(batch)
            if share.take(b, len(batch) * n_tokens):
                gens = run.generate(batch, share.progress)
                if store is not None:
                    store.append(b, [[i, k, list(g.token_ids), g.logprob_mean] for (i, k), g in zip(batch, gens)])
                else:
                    out.update(zip(batch, gens))
        if not share.finish():
            return [], resumed  # another rank writes the output
        for stored in store.chunks() if store is not None else ():
            out.update(((i, k), Generation(run.names[i], k, tuple(t), lp, run.seed)) for i, k, t, lp in stored)
        generations = [out[r] for r in run.rows]
        write_generations(output, generations, header or {}, fmt)
    return generations, resumed


class _Run:
    """One generation job: validated prompts, its seed, its rows (prompt, sample) and their batches."""

    def __init__(self, model, prompts, n_tokens: int, num_samples: int, seed: int | None, batch_size: int,
                 prefill_chunk: int | None, sampling: dict):
        check_sampling(**sampling)
        # plain Python numbers from here on (numpy scalars included): they go into JSON progress files
        self.sampling = {"temperature": float(sampling["temperature"]), "top_k": int(sampling["top_k"]),
                         "top_p": float(sampling["top_p"])}
        n_tokens, num_samples = _integer("n_tokens", n_tokens), _integer("num_samples", num_samples)
        batch_size = _integer("batch_size", batch_size)
        prefill_chunk = None if prefill_chunk is None else _integer("prefill_chunk", prefill_chunk)
        for name, value in (("n_tokens", n_tokens), ("num_samples", num_samples), ("prefill_chunk", prefill_chunk)):
            if value is not None and value < 1:
                raise InputError(f"{name} must be at least 1, got {value}")
        check_batch_size(batch_size)
        if seed is not None and _integer("seed", seed) < 0:
            raise InputError(f"seed must be a non-negative integer, got {seed}")
        self.prompts = prepare_prompts(prompts)
        check_generations(len(self.prompts), num_samples)
        self.names = list(self.prompts)
        self.ids = [encode(seq) for seq in self.prompts.values()]
        check_context(model, self.prompts, n_tokens)
        self.model = model
        self.n_tokens = n_tokens
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = int(resolve_seed(seed, None, False))
        self.prefill_chunk = prefill_chunk
        self.rows = [(i, k) for i in range(len(self.ids)) for k in range(num_samples)]
        self.batches = list(_batches(self.rows, [len(t) for t in self.ids], batch_size))

    @torch.inference_mode()
    def generate(self, batch: list[tuple[int, int]], progress) -> list[Generation]:
        """The generations of one batch of rows, in the batch's order."""
        greedy = self.sampling["top_k"] == 1
        uniforms = None if greedy else torch.stack([_uniforms(self.seed, i, k, self.n_tokens) for i, k in batch])
        tokens, logprobs, nan_rows = _run_batch(self.model, self.ids, [i for i, _ in batch], uniforms, self.n_tokens,
                                                self.sampling, self.prefill_chunk, progress)
        out = []
        for r, (i, k) in enumerate(batch):
            if nan_rows[r]:
                raise non_finite_error(f"prompt {self.names[i]!r} while sampling", self.model.dtype)
            out.append(Generation(self.names[i], k, tuple(tokens[r]), float(logprobs[r]), self.seed))
        return out


def _integer(name: str, value) -> int:
    """``value`` as a Python int (numpy integers included); an ``InputError`` for a float or a bool."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(f"{name} must be an integer, got {value!r}")
    return int(value)


def _uniforms(seed: int, prompt_index: int, sample: int, n: int) -> torch.Tensor:
    """The random stream of one row: [n] float32 in [0, 1)."""
    return torch.from_numpy(np.random.default_rng([seed, prompt_index, sample]).random(n, dtype=np.float32))


def _batches(rows: list[tuple[int, int]], lengths: list[int], batch_size: int) -> Iterator[list[tuple[int, int]]]:
    """Rows sorted by prompt length, in batches of at most ``batch_size`` and ``MAX_LENGTH_SPREAD``."""
    batch: list[tuple[int, int]] = []
    for row in sorted(rows, key=lambda r: lengths[r[0]]):
        if batch and (len(batch) == batch_size or lengths[row[0]] - lengths[batch[0][0]] > MAX_LENGTH_SPREAD):
            yield batch
            batch = []
        batch.append(row)
    if batch:
        yield batch


def _run_batch(model, prompts: list[list[int]], row_prompt: list[int], uniforms, n_tokens: int, settings: dict,
               prefill_chunk: int | None, progress):
    """Generate for one batch of rows; row r continues ``prompts[row_prompt[r]]``.

    uniforms: [B, n_tokens] float32 or None (greedy). Returns (token lists, mean log-probs [B], NaN flags [B]).
    """
    dev = model.device
    lens = torch.tensor([len(prompts[j]) for j in row_prompt])
    B, m, width = len(row_prompt), int(lens.min()), int(lens.max()) + n_tokens
    # seq holds every row's prompt, then its sampled tokens: position q is chosen by the step that feeds q - 1
    seq = torch.zeros(B, width, dtype=torch.long)
    for r, j in enumerate(row_prompt):
        seq[r, : len(prompts[j])] = torch.tensor(prompts[j])
    pos = torch.arange(width)
    forced = pos < lens[:, None]
    sampled = ~forced & (pos < lens[:, None] + n_tokens)
    per_step = sampled.sum(0).tolist()
    u = torch.zeros(B, width)
    if uniforms is not None:
        u[sampled] = uniforms.reshape(-1)
    seq, forced, sampled, u = seq.to(dev), forced.to(dev), sampled.to(dev), u.to(dev)
    logp = torch.zeros(B, width, device=dev)
    nan_rows = torch.zeros(B, dtype=torch.bool, device=dev)

    # the state holds every position but the last; each distinct prompt is prefilled once, then copied to its rows
    distinct = list(dict.fromkeys(row_prompt))
    state = model.new_state(len(distinct), width - 1)
    prefix = torch.tensor([prompts[j][: m - 1] for j in distinct], dtype=torch.long, device=dev).view(len(distinct), m - 1)
    chunk = prefill_chunk or max(1, m - 1)
    for a in range(0, m - 1, chunk):
        model(prefix[:, a : a + chunk], state, return_logits=False)
    if distinct != row_prompt:
        state = state.index_select([distinct.index(j) for j in row_prompt])

    # on one CUDA device each step replays a captured CUDA graph (model/graph.py); on a CPU with numba
    # it is one kernel call per block (model/cpu_decode.py); elsewhere (a model split over devices,
    # hooks, FP8) it is the normal forward
    if dev.type == "cuda" and model.placement is None:
        step = StaticDecoder(model, state).step
    else:
        cpu = CpuDecoder.build(model, state)
        step = cpu.step if cpu is not None else lambda t: model(t, state)
    for p in range(m - 1, width - 1):
        logits = step(seq[:, p : p + 1])[:, -1]
        nan_rows |= logits.isnan().any(-1)
        q = p + 1
        tok = torch.where(forced[:, q], seq[:, q], sample_tokens(logits, u[:, q], **settings))
        seq[:, q] = tok
        logp[:, q] = token_logprobs(logits, tok)
        if progress is not None and per_step[q]:
            progress(per_step[q])
    tokens = seq[sampled].view(B, n_tokens).tolist()
    return tokens, logp[sampled].view(B, n_tokens).mean(1).tolist(), nan_rows.tolist()
