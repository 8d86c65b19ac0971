"""StripedHyena: one implementation for Evo 1 and Evo 2; the block of each layer comes from the config."""

from __future__ import annotations

import itertools
import operator
from typing import Callable

import torch
import torch.nn as nn

from evo_cli import kernels as K
from evo_cli.errors import InputError, whole_number
from evo_cli.kernels import BACKENDS

from .cache import AttentionState, InferenceState
from .config import ModelConfig
from .layers import AttentionBlock, HyenaBlock, RMSNorm


def keeps_float32(name: str) -> bool:
    """Parameters kept in float32 whatever the model dtype: Hyena filters (poles, residues, taps,
    D), rotary frequencies and FP8 scales. They are small, and their precision matters at long range
    (the scales: they are the stored float32 values Transformer Engine quantises with)."""
    return ".filter." in name or name.endswith("inv_freq") or ".fp8_scale_" in name


class StripedHyena(nn.Module):
    """``forward(input_ids [B, L] int64) -> logits [B, L, vocab] float32`` (any integer dtype of ids is
    taken; ``check_input_ids`` says what else is refused).

    With an ``InferenceState`` the call continues the sequence the state has seen (positions start
    at ``state.seqlen``) and updates the state in place: the prompt can be fed in one piece or in
    chunks, then one token at a time, and every piece gives the logits the full forward would.
    """

    def __init__(self, config: ModelConfig, kernels: str = "auto"):
        super().__init__()
        self.config = config
        self.kernels = kernels
        # an explicit weight skips nn.Embedding's normal_ init, which on the meta device pulls in
        # torch._dynamo (seconds of start-up); loaders and init.py set the values anyway
        self.embedding_layer = nn.Embedding(config.vocab_size, config.hidden_size,
                                            _weight=torch.empty(config.vocab_size, config.hidden_size))
        self.blocks = nn.ModuleList(
            AttentionBlock(config, i, kernels) if kind == "attn" else HyenaBlock(config, i, kernels)
            for i, kind in enumerate(config.block_types)
        )
        self.norm = RMSNorm(config.hidden_size, config.eps, kernels)
        # a forward without a state over more tokens than this runs in chunks of this many (bounded memory)
        self.forward_chunk = 8192
        # blocks split over several devices (placement.py; set by the loader), None on one device
        self.placement = None
        # model dtype -> each block's state layout (``_check_state``), computed once per dtype
        self._state_layouts = {}
        self._cpu_gemv_layout()  # a model built on a CPU (not the meta device): see there

    @property
    def device(self) -> torch.device:
        return self.embedding_layer.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embedding_layer.weight.dtype

    def block_device(self, i: int) -> torch.device:
        """Where block ``i`` and its inference state live."""
        return self.device if self.placement is None else self.placement.block_device(i)

    def set_kernels(self, kernels: str) -> StripedHyena:
        """Switch every op between ``auto``, ``triton``, ``numba`` and ``torch`` kernels."""
        if kernels not in BACKENDS:
            raise ValueError(f"unknown kernel backend {kernels!r} (choose from {', '.join(BACKENDS)})")
        self.kernels = kernels
        for m in self.modules():
            if hasattr(m, "backend"):
                m.backend = kernels
        self._cpu_gemv_layout()
        return self

    def load_state_dict(self, *args, **kwargs):
        result = super().load_state_dict(*args, **kwargs)
        self._cpu_gemv_layout()  # ``assign=True`` puts the given tensors, in their own layout, in place
        return result

    def _apply(self, fn, recurse=True):
        """.to() / .float() / .half() / .cpu(): the ``keeps_float32`` tensors follow the device but keep
        their float32 values (as ``load_model(dtype=...)`` gives them: a cast would round the filters,
        or leave them float64 beside float32 states); FP8 weights are rebuilt from the float32 scales,
        and the weights get their CPU layout."""
        kept = {name: t.data for name, t in itertools.chain(self.named_parameters(), self.named_buffers())
                if keeps_float32(name) and t.is_floating_point()}
        super()._apply(fn, recurse)
        rescaled = False  # an FP8 scale put back: the E4M3 weights were built from the cast one
        for name, before in kept.items():
            owner, _, attr = name.rpartition(".")
            module = self.get_submodule(owner)
            now = getattr(module, attr)
            if now.dtype == before.dtype or now.dtype == torch.float32 and before.dtype != torch.float32:
                continue  # a move only, or a widening to float32 (a model that kept its stored dtypes)
            with torch.inference_mode(now.is_inference()), torch.no_grad():  # as _cpu_gemv_layout
                restored = (before if before.device.type != "meta" else now).to(device=now.device, dtype=torch.float32)
                if isinstance(now, nn.Parameter):
                    now.data = restored
                else:
                    module._buffers[attr] = restored
            rescaled = rescaled or ".fp8_scale_" in name
        for block in self.blocks if rescaled else ():
            if block.kind != "attn" and block.projections.fp8 != "off":
                block.projections.set_fp8(block.projections.fp8)
        self._cpu_gemv_layout()
        return self

    @property
    def has_fp8_state(self) -> bool:
        """True when the Hyena projections carry FP8 scales (from the checkpoint)."""
        return any(b.projections.has_fp8_state for b in self.blocks if b.kind != "attn")

    @property
    def fp8(self) -> str:
        """How the Hyena projections run: ``off``, ``emulate`` or ``native``."""
        return next((b.projections.fp8 for b in self.blocks if b.kind != "attn"), "off")

    def add_fp8_state(self) -> StripedHyena:
        """Give every Hyena projection its FP8 scale buffers (filled by the checkpoint loader)."""
        for b in self.blocks:
            if b.kind != "attn":
                b.projections.add_fp8_state()
        return self

    def set_fp8(self, mode: str) -> StripedHyena:
        """Run the Hyena projections ``off`` (plain matmul), ``emulate`` (mmaemu) or ``native``
        (torch._scaled_mm); the E4M3 weights are prepared here. See ``evo_cli.runtime.resolve_fp8``."""
        if mode not in ("off", "emulate", "native"):
            raise ValueError(f"unknown FP8 mode {mode!r} (off, emulate or native)")
        for b in self.blocks:
            if b.kind != "attn":
                b.projections.set_fp8(mode)
        return self

    def new_state(self, batch_size: int, max_seqlen: int, last_block: int | None = None) -> InferenceState:
        """Zeroed state for ``batch_size`` sequences of up to ``max_seqlen`` tokens (sizes the KV cache);
        with ``last_block``, only for blocks ``0..last_block`` (see ``forward``)."""
        batch_size = whole_number(batch_size, "batch_size", 0)
        max_seqlen = whole_number(max_seqlen, "max_seqlen", 0)
        n = self.blocks_to_run(last_block)
        self._cpu_gemv_layout()
        return InferenceState([self._block_state(i, batch_size, max_seqlen) for i in range(n)], max_seqlen)

    def _cpu_gemv_layout(self) -> None:
        """Lay out every CPU ``nn.Linear`` weight [out, in] for one-token steps: column-major (the
        transpose of a contiguous [in, out] tensor) where the step's matrix-vector product streams it
        faster. The numba loop (``kernels.linear``) reads every weight so. MKL, under ``--kernels
        torch``, streams a weight at a rate that depends on its rows' length: on this project's CPUs
        (one core, benchmarks/README.md) a [1536, 512] projection runs at 16 GB/s column-major against
        9 row-major, while the MLP's [512, 1368] down-projection runs at 13 GB/s row-major against 10
        column-major; so there, only weights with more outputs than inputs are stored column-major.
        Matrix products of many tokens run at the same speed either way.

        Done whenever the weights or the kernels change (building, loading, ``.to()`` of the whole
        model, ``set_kernels``) and again by ``new_state``, not first by a decoding call: a product of
        up to ``kernels.linear``'s few rows takes the numba loop only with a column-major weight, so a
        forward's numbers would depend on whether the process had decoded before (and a resumed or
        distributed run, which skips some work, would not give the uninterrupted run's bytes). Off
        the CPU weights are row-major, as when loaded straight to their device."""
        for m in self.modules():
            w = m.weight if isinstance(m, nn.Linear) else None
            if w is None or w.dim() != 2:
                continue
            # the new layout is an inference tensor only where the weight is one (a model built under
            # inference mode): one made under a caller's inference mode could not enter autograd later
            with torch.inference_mode(w.is_inference()), torch.no_grad():
                # off the CPU row-major, as loaded there (.to() of a CPU model keeps its strides)
                column_major = w.device.type == "cpu" and self.column_major(w.shape)
                if column_major and not w.t().is_contiguous():
                    w.data = w.data.t().contiguous().t()
                elif not column_major and not w.is_contiguous():
                    w.data = w.data.contiguous()

    def column_major(self, shape) -> bool:
        """Whether a CPU ``nn.Linear`` weight of ``shape`` [out, in] is stored column-major (see
        ``_cpu_gemv_layout``)."""
        # not resolve_backend: it raises for a backend this CPU cannot run (say triton), and a model
        # loaded for a GPU, or switched before its error is due, must not fail here
        numba = self.kernels in ("auto", "numba") and K.numba_available()
        return numba or shape[0] > shape[1]

    def forward(self, input_ids, state: InferenceState | None = None, *, return_logits: bool = True,
                last_block: int | None = None):
        """input_ids: [B, L] int64 -> logits [B, L, vocab] float32 (None with ``return_logits=False``,
        which still runs the final norm so that hooks on ``norm`` fire).

        last_block: run blocks ``0..last_block`` only (-1: none) and return None (feature extraction, where the
        later blocks are not needed); with a state, the states of the skipped blocks are not updated.

        Without a state, an input longer than ``self.forward_chunk`` tokens runs in chunks of that
        size with a carried state (``_forward_in_chunks``), unless a forward hook is registered.
        """
        input_ids = self.check_input_ids(input_ids)
        if state is None and input_ids.shape[1] > self.forward_chunk and not self._hooked():
            return self._forward_in_chunks(input_ids, return_logits, last_block)
        n = self.blocks_to_run(last_block)
        if state is not None:
            self._check_state(state, input_ids.shape[0], n)
        pos = 0 if state is None else state.seqlen
        if state is not None and pos + input_ids.shape[1] > state.max_seqlen:
            raise ValueError(f"state holds {state.max_seqlen} positions; {pos} used, {input_ids.shape[1]} more asked")
        x = self.embedding_layer(input_ids)
        for i, block in enumerate(self.blocks[:n]):
            x = self._run_block(i, block, x, None if state is None else state.layers[i], pos)
        if state is not None:
            state.seqlen = pos + input_ids.shape[1]
        return self._head(x, return_logits, last_block is None)

    def check_input_ids(self, input_ids) -> torch.Tensor:
        """``input_ids`` as the forward takes it: an integer tensor [B, L] of token ids in
        ``0..vocab_size - 1``, returned as int64 (any integer dtype is accepted). Anything else is one
        ``InputError`` saying what is wrong, before a kernel sees it (``nn.Embedding`` would fail deep
        inside, or on a GPU with a device-side assert). Also checks that the kernel backend can run on
        the model's device (it may have been moved with ``.to()`` after ``set_kernels``)."""
        if not isinstance(input_ids, torch.Tensor):
            raise InputError(f"input_ids must be a torch.Tensor [batch, length] of token ids, not a "
                             f"{type(input_ids).__name__} (e.g. torch.tensor([list(b'ACGT')]))")
        if input_ids.dim() != 2:
            hint = " (add a batch dimension: ids[None])" if input_ids.dim() == 1 else ""
            raise InputError(f"input_ids must be 2-D [batch, length], not of shape {list(input_ids.shape)}{hint}")
        if input_ids.dtype == torch.bool or input_ids.is_floating_point() or input_ids.is_complex():
            raise InputError(f"input_ids must hold integer token ids (torch.long), not "
                             f"{str(input_ids.dtype).removeprefix('torch.')} values")
        if input_ids.device != self.device:
            raise InputError(f"input_ids are on {input_ids.device}, the model (its embedding) on {self.device}: "
                             "move them with ids.to(model.device)")
        vocab = self.config.vocab_size
        if input_ids.numel() and not input_ids.is_meta:  # empty: [B, 0] gives [B, 0, vocab] logits
            lo, hi = torch.stack(torch.aminmax(input_ids)).tolist()  # one host sync, cheaper than a bad index
            if lo < 0 or hi >= vocab:
                bad = lo if lo < 0 else hi
                at = [int(i) for i in (input_ids == bad).nonzero()[0]]
                raise InputError(f"input_ids holds token id {bad} at {at}, outside the vocabulary 0..{vocab - 1} "
                                 "(tokens are UTF-8 bytes)")
        try:
            K.resolve_backend(self.kernels, self.device)
        except RuntimeError as err:
            raise InputError(f"{err} (the model is on {self.device}; choose another with model.set_kernels)") from None
        return input_ids.long()

    def _check_state(self, state, batch: int, n: int) -> None:
        """One ``InputError`` where ``state`` cannot continue this forward: not an ``InferenceState``, another
        batch size, or made by a model of another shape or dtype (``new_state`` of this model gives one that
        fits; a state made before ``.to(dtype)`` does not)."""
        if not isinstance(state, InferenceState):
            raise InputError(f"state must be an InferenceState from model.new_state(...), not a {type(state).__name__}")
        if len(state.layers) < n:
            raise ValueError(f"the state holds blocks 0..{len(state.layers) - 1}; this forward runs blocks 0..{n - 1}")
        layouts = self._state_layouts.get(self.dtype)
        if layouts is None:
            layouts = self._state_layouts[self.dtype] = [_layout(self._block_state_meta(i)) for i in range(len(self.blocks))]
        for i in range(n):
            got = _layout(state.layers[i])
            if got[1] != batch:
                raise InputError(f"the state holds {got[1]} sequence(s); input_ids has {batch} row(s) "
                                 f"(make one with model.new_state(batch_size={batch}, ...))")
            if got[0] != layouts[i][0] or got[2:] != layouts[i][2:]:
                raise InputError(f"the state does not fit this model: block {i} state is {_describe(got)}, this "
                                 f"model's is {_describe(layouts[i])} (a state made by another model, or before "
                                 "the model's .to(dtype)); make one with model.new_state(...)")
            layer = state.layers[i]
            where = (layer.k if isinstance(layer, AttentionState) else layer.fir).device
            if where != self.block_device(i):
                raise InputError(f"the state of block {i} is on {where}, the block on {self.block_device(i)} (a state "
                                 "made before the model's .to(device)); make one with model.new_state(...)")

    def _block_state_meta(self, i: int):
        """Block ``i``'s state for one sequence on the meta device: its layout, nothing allocated."""
        block, meta = self.blocks[i], torch.device("meta")
        return block.new_state(1, meta, 1, self.dtype) if block.kind == "attn" else block.new_state(1, meta)

    def blocks_to_run(self, last_block: int | None) -> int:
        """How many blocks a call with ``last_block`` runs: all for None, else blocks ``0..last_block``
        (-1: none, the embedding only)."""
        n = len(self.blocks)
        if last_block is None:
            return n
        try:
            i = None if isinstance(last_block, bool) else operator.index(last_block)
        except TypeError:
            i = None
        if i is None or not -1 <= i < n:
            raise ValueError(f"last_block must be a block index from 0 to {n - 1}, or -1 for none (the embedding "
                             f"only), not {last_block!r}")
        return i + 1

    def _hooked(self) -> bool:
        """Whether a forward hook or pre-hook is registered on any submodule: a caller that hooks a
        layer expects one call with the whole sequence, so such a forward is never split."""
        return any(m._forward_hooks or m._forward_pre_hooks for m in self.modules())

    def _forward_in_chunks(self, input_ids, return_logits: bool, last_block: int | None):
        """``forward`` without a state, run as ``forward_chunked`` (the same numbers within float32
        rounding; test_decode.py) so that activations are bounded by ``forward_chunk`` tokens. The
        logits [B, L, vocab] and the KV cache of the attention blocks still grow with L."""
        B, L = input_ids.shape
        return_logits = return_logits and last_block is None
        logits = torch.empty(B, L, self.config.vocab_size, device=self.device) if return_logits else None
        for start, out in self.forward_chunked(input_ids, self.forward_chunk, return_logits=return_logits,
                                               last_block=last_block):
            if logits is not None:
                logits[:, start : start + out.shape[1]] = out
        return logits

    def forward_chunked(self, input_ids, chunk_size: int, *, return_logits: bool = True, last_block: int | None = None,
                        progress: Callable[[int], None] | None = None):
        """Run over ``input_ids`` [B, L] in chunks of ``chunk_size`` tokens with a carried state.

        Yields ``(start, logits)`` per chunk (logits [B, n, vocab] or None), the slices the full
        forward would give within float32 rounding, with activation memory bounded by the chunk (plus
        the KV cache of the attention layers, which grows with L). Forward hooks fire once per chunk.
        ``last_block`` as in ``forward``. ``progress(n)``: called with the positions of each chunk run
        (they sum to L). Bad arguments raise ``InputError`` when the first chunk is asked for.
        """
        input_ids = self.check_input_ids(input_ids)
        chunk_size = _chunk_size(chunk_size)
        state = self.new_state(input_ids.shape[0], input_ids.shape[1], last_block)
        for start in range(0, input_ids.shape[1], chunk_size):
            out = self(input_ids[:, start : start + chunk_size], state, return_logits=return_logits,
                       last_block=last_block)
            if progress is not None:
                progress(min(chunk_size, input_ids.shape[1] - start))
            yield start, out

    def forward_layerwise(self, input_ids, chunk_size: int, *, return_logits: bool = True,
                          last_block: int | None = None, progress: Callable[[int], None] | None = None):
        """``forward_chunked``'s results, computed one block at a time: each block runs over the whole
        sequence in chunks of ``chunk_size`` (its state carried) before the next block starts, so only
        one attention block's KV cache is alive. The residual stream of the whole sequence, [B, L, D]
        in the model dtype, is kept (and overwritten in place) instead. Yields ``(start, logits)`` per
        chunk while the last block runs, so forward hooks on the last block (and on ``norm``) have seen
        exactly that chunk at each yield; hooks on earlier blocks fire for every chunk before the first
        yield. See ``long_forward_bytes`` for the memory of both modes. ``progress(n)``: called after
        every chunk of every block with the positions' share of the work done (n blocks over L positions:
        the calls sum to L), so that a long run shows its progress before its last block.
        """
        input_ids = self.check_input_ids(input_ids)
        chunk_size = _chunk_size(chunk_size)
        n = self.blocks_to_run(last_block)
        if n == 0:  # no block to run (only the embedding is wanted)
            yield from self.forward_chunked(input_ids, chunk_size, return_logits=return_logits, last_block=last_block,
                                            progress=progress)
            return
        B, L = input_ids.shape
        reported = 0
        x = self.embedding_layer(input_ids)
        for i, block in enumerate(self.blocks[:n]):
            x = x.to(self.block_device(i))  # split over devices: the hidden states follow the blocks
            state = self._block_state(i, B, L)
            for start in range(0, L, chunk_size):
                end = min(L, start + chunk_size)
                x[:, start:end] = self._run_block(i, block, x[:, start:end], state, start)
                if progress is not None:  # the integer share of L done: (blocks done + this one's part) / n
                    done = (i * L + end) // n
                    if done > reported:
                        progress(done - reported)
                    reported = done
                if i == n - 1:
                    yield start, self._head(x[:, start:end], return_logits and last_block is None,
                                            last_block is None)
            del state  # frees this block's KV cache before the next block allocates its own

    def _block_state(self, i: int, batch: int, length: int):
        """Zeroed state of block ``i`` on its device (an attention block's KV cache holds ``length``)."""
        block, dev = self.blocks[i], self.block_device(i)
        return block.new_state(batch, dev, length, self.dtype) if block.kind == "attn" else block.new_state(batch, dev)

    def _run_block(self, i: int, block, x, state, pos: int):
        # split over devices: the activations follow the blocks
        return block(x, state, pos) if self.placement is None else self.placement.run_block(i, block, x, state, pos)

    def _head(self, x, return_logits: bool, run_norm: bool):
        """Final norm and tied unembedding of x [B, n, D] -> logits [B, n, vocab] float32 or None.
        Both live on the first device of a split model."""
        if not run_norm:
            return None
        x = self.norm(x.to(self.device))
        # tied unembedding, in float32 so that scores keep full precision under bf16 weights
        return K.linear(x.float(), self.embedding_layer.weight.float(), backend=self.kernels) if return_logits else None

    def long_forward_bytes(self, batch: int, length: int, chunk_size: int, last_block: int | None = None) -> dict:
        """Estimated peak bytes of ``forward_chunked`` and ``forward_layerwise`` (keys ``chunked``,
        ``layerwise``) beyond the weights: the KV caches (2 B L Hkv hd bytes-per-element per
        attention block: all of them at once chunked, the largest one layer by layer), the residual
        stream B L D (layer by layer only), and the activations of one chunk (about 16 B chunk D
        float32 values plus the chunk's logits)."""
        c = self.config
        n = self.blocks_to_run(last_block)
        item = self.dtype.itemsize
        kv = 2 * batch * length * c.num_kv_heads * c.head_dim * item
        n_attn = sum(1 for i in c.layers_of("attn") if i < n)
        chunk = min(chunk_size, length)
        act = 4 * batch * chunk * (16 * max(c.hidden_size, c.inner_mlp_size // 3) + c.vocab_size)
        return {"chunked": n_attn * kv + act,
                "layerwise": batch * length * c.hidden_size * item + min(n_attn, 1) * kv + act}

    def forward_long(self, input_ids, chunk_size: int, *, free_bytes: int | None = None, return_logits: bool = True,
                     last_block: int | None = None, progress: Callable[[int], None] | None = None):
        """``forward_chunked``, or ``forward_layerwise`` when the chunked path's memory
        (``long_forward_bytes``) would exceed ``free_bytes`` and layer by layer needs less: same
        yields, same numbers. ``free_bytes=None``: always chunked. ``progress(n)`` as in both: calls
        that sum to L as the work goes."""
        input_ids = self.check_input_ids(input_ids)
        need = self.long_forward_bytes(input_ids.shape[0], input_ids.shape[1], chunk_size, last_block)
        layerwise = free_bytes is not None and need["chunked"] > free_bytes and need["layerwise"] < need["chunked"]
        run = self.forward_layerwise if layerwise else self.forward_chunked
        return run(input_ids, chunk_size, return_logits=return_logits, last_block=last_block, progress=progress)


def _chunk_size(value) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value < 1:
        raise ValueError("chunk_size must be at least 1")  # the message callers have matched since it was written
    return whole_number(value, "chunk_size", 1)


def _layout(layer_state) -> tuple:
    """(kind, batch, per-tensor (shape without batch, dtype)) of one block's state; an attention
    block's capacity (the KV cache's length) is left out, as it varies with ``max_seqlen``."""
    attn = isinstance(layer_state, AttentionState)
    tensors = [layer_state.k, layer_state.v] if attn else [layer_state.fir, layer_state.inner]
    rest = tuple((tuple(t.shape[1:2]) + tuple(t.shape[3:]) if attn else tuple(t.shape[1:]), t.dtype) for t in tensors)
    return ("attention" if attn else "hyena", tensors[0].shape[0], *rest)


def _describe(layout: tuple) -> str:
    parts = ", ".join(f"{list(shape)} {str(dtype).removeprefix('torch.')}" for shape, dtype in layout[2:])
    return f"{layout[0]} ({parts})"
