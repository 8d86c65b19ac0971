"""Time of each Hyena op, naive (PyTorch) against fused (Triton), with achieved bandwidth and FLOP rate.

    python benchmarks/bench_kernels.py                          # GPU: D = 4096, L = 8192, bf16, both paths
    python benchmarks/bench_kernels.py --length 65536 --ops modal mr
    python benchmarks/bench_kernels.py --device cpu --length 2048   # CPU: the naive path only

Shapes are one evo2_7b layer's: hidden D, Hyena-SE / Hyena-MR groups of 16 channels, 16 modal states.
Bandwidth counts the bytes an op must move at least (its inputs and outputs once, filters, states);
FLOP rates count the op's direct arithmetic (2 per tap per output for the FIR filters; 4 per state per
output for the modal recurrence, the form the fused kernel runs; the naive path computes the same
convolution by FFT). Decode rows time one token of a whole Hyena operator (featurizer, inner filter,
gates) at batch 1. With both backends, "error" is the fused output's largest difference from the
naive one, relative to the naive output's largest magnitude (inputs drawn afresh for each). Under
``TRITON_INTERPRET=1`` the fused path runs on CPU, which checks that it works and says nothing about
its speed.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from common import machine, timed  # noqa: E402

from evo_cli import kernels as K  # noqa: E402

OPS = ("norm", "featurize", "se", "mr", "modal", "step_se", "step_mr", "step_modal")


def _inputs(op, B, L, D, S, dtype, device):
    """(callable(backend), bytes moved, flops) for one op at [B, L, D]."""
    # drawn on the device: a CPU draw of the L = 131,072 inputs (3 x 1.6e9 values for the featurizer
    # alone, each op's inputs drawn three times) costs over a minute of the GPU's time
    g = torch.Generator(device=device).manual_seed(0)
    rnd = lambda *shape, dt=dtype: torch.randn(*shape, generator=g, device=device, dtype=dt)  # noqa: E731
    es = torch.finfo(dtype).bits // 8
    G = max(1, D // 16)
    if op == "norm":
        x, w = rnd(B, L, D), rnd(D, dt=torch.float32)
        return (lambda be: K.rms_norm(x, w, 1e-6, backend=be)), 2 * B * L * D * es, 4 * B * L * D
    if op == "featurize":
        z, w = rnd(B, L, 3 * D), rnd(3 * D, 3, dt=torch.float32)
        return (lambda be: K.hyena_featurize(z, w, backend=be)), 5 * B * L * D * es, (3 * 6 + 1) * B * L * D
    x1v, x2 = rnd(B, L, D), rnd(B, L, D)
    Dskip = rnd(D, dt=torch.float32)
    if op in ("se", "mr"):
        k = 7 if op == "se" else 128
        h = rnd(G, k, dt=torch.float32) / k
        d = Dskip if op == "mr" else None
        return (lambda be: K.hyena_fir(x1v, x2, h, d, backend=be)), 3 * B * L * D * es, (2 * k + 3) * B * L * D
    if op == "modal":
        lp = -torch.rand(D, S, generator=g, device=device) * 0.5
        r = rnd(D, S, dt=torch.float32)
        fn = lambda be: K.hyena_modal(x1v, x2, lp, r, Dskip, backend=be)  # noqa: E731
        return fn, 3 * B * L * D * es, (4 * S + 3) * B * L * D
    # one decoding step: z [1, 1, 3D], both states read and written
    z, w = rnd(1, 1, 3 * D), rnd(3 * D, 3, dt=torch.float32)
    fir = torch.zeros(1, 2, 3 * D, device=device)
    if op == "step_modal":
        lp = -torch.rand(D, S, generator=g, device=device) * 0.5
        r, inner = rnd(D, S, dt=torch.float32), torch.zeros(1, D, S, device=device)
        kw = dict(log_poles=lp, residues=r, D=Dskip)
        flops = (4 * S + 9) * D
    else:
        k = 7 if op == "step_se" else 128
        inner = torch.zeros(1, k - 1, D, device=device)
        kw = dict(h=rnd(G, k, dt=torch.float32) / k, D=Dskip if op == "step_mr" else None)
        flops = (2 * k + 9) * D
    moved = 4 * D * es + 2 * (fir.numel() + inner.numel()) * 4
    return (lambda be: K.hyena_step(z, w, None, fir, inner, **kw, backend=be)), moved, flops


def _flat(out):
    return torch.cat([t.flatten().double() for t in out]) if isinstance(out, tuple) else out.flatten().double()


def _error(op, shape, dtype, device) -> str:
    """Fused against naive on the same freshly drawn inputs (a decode step mutates its states)."""
    ref = _flat(_inputs(op, *shape, dtype, device)[0]("torch"))
    out = _flat(_inputs(op, *shape, dtype, device)[0]("triton"))
    return f"{((out - ref).abs().max() / ref.abs().max().clamp_min(1)).item():.1e}"


def _time(fn, device, repeats):
    if str(device).startswith("cuda"):
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=100) / 1e3
    return timed(fn, device, repeats)[0]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--length", type=int, default=8192)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--state-size", type=int, default=16)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    p.add_argument("--backends", nargs="+", choices=["torch", "triton"], default=None,
                   help="default: both on CUDA (or under TRITON_INTERPRET=1), torch elsewhere")
    p.add_argument("--repeats", type=int, default=3, help="CPU timing: best of this many after a warm-up")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    interp = os.environ.get("TRITON_INTERPRET") == "1"
    backends = args.backends or (["torch", "triton"] if device.type == "cuda" or interp else ["torch"])
    B, L, D, S = args.batch, args.length, args.hidden, args.state_size
    print(f"{machine()}; B={B} L={L:,} D={D} S={S} {str(dtype).removeprefix('torch.')}"
          + ("; TRITON_INTERPRET=1: fused timings are the CPU interpreter's, not performance" if interp else ""))
    print("\n| op | backend | time | GB/s | GFLOP/s | speed-up | error |\n|---|---|---|---|---|---|---|")
    with torch.inference_mode():
        for op in args.ops:
            fn, moved, flops = _inputs(op, B, L, D, S, dtype, device)
            base = None
            error = _error(op, (B, L, D, S), dtype, device) if len(backends) == 2 else ""
            for be in backends:
                t = _time(lambda: fn(be), device, args.repeats)
                base = base or t
                unit = f"{t * 1e6:,.1f} us" if t < 1e-3 else f"{t * 1e3:,.2f} ms"
                print(f"| {op} | {be} | {unit} | {moved / t / 1e9:,.3g} | {flops / t / 1e9:,.3g} | {base / t:.2f}x | {error if be == 'triton' else ''} |",
                      flush=True)


if __name__ == "__main__":
    main()
