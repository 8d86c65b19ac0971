"""Every fused op on inputs whose elements lie 2^31 or more elements from their base pointer.

At evo2_7b / evo2_40b sizes the activations hold more than 2^31 elements (1 x 1,048,576 x 12,288 for
the featurizer's input), so a kernel that computes ``t * stride`` in int32 reads the wrong address. The
inputs here are views into one 2^31 + 64-element bf16 buffer (4 GiB of address space, of which only the
few pages the views touch are ever written): 3 rows 2^30 elements apart, or channels about
2^31 / (channels - 1) apart, so that the last row or channel starts at offset 2^31 or just past it
while every stride still fits in int32 (Triton passes it as i32). The Triton interpreter computes addresses with the kernel's integer types, so an int32 product
wraps to a negative offset there as on a GPU: the process dies of a segmentation fault (an illegal
address on a GPU) or the values differ from the reference. Run as a subprocess by
``tests/test_kernels_fused.py::test_offsets_past_2_31_elements``; prints one line per op.
"""

from __future__ import annotations

import os
import sys

import torch

from evo_cli import kernels as K
from evo_cli.kernels.featurize.fused import hyena_featurize
from evo_cli.kernels.fir.fused import hyena_fir
from evo_cli.kernels.modal.fused import hyena_modal
from evo_cli.kernels.norm.fused import rms_norm

FAR = 1 << 31
L, C = 3, 5  # 3 tokens (row 2 is the far one), 5 channels (the 128-tap FIR needs >= 4 per group)


def far(buf, channels, layout, offset=0):
    """A [1, L, channels] bf16 view of ``buf`` with random values whose last row (``rows``: token
    stride 2^30) or last channel (``cols``: channel stride about 2^31 / (channels - 1), a multiple of
    16) starts at 2^31 or just past it; ``offset`` interleaves several views in the same pages."""
    col = -(-FAR // (channels - 1) // 16) * 16
    strides = (0, FAR // (L - 1), 1) if layout == "rows" else (0, 1, col)
    v = buf.as_strided((1, L, channels), strides, offset)
    v.copy_(torch.randn(1, L, channels))
    return v


def check(name, out, ref):
    err = ((out.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1)).item()
    print(f"{name}: relative error {err:.2e}", flush=True)
    return err <= 1.6e-2  # the bf16 tolerance of test_kernels_fused.py


def main() -> int:
    torch.manual_seed(0)
    device = torch.device(os.environ.get("EVO_TEST_DEVICE", "cpu"))
    torch.set_default_device(device)
    # never touched as a whole: the views below write a few pages of it
    buf = torch.empty(FAR + 64, dtype=torch.bfloat16)
    ok = True
    for layout in ("rows", "cols"):
        # featurize: z [1, L, 3D], D = 2
        z = far(buf, 6, layout)
        w = torch.randn(6, 3)
        s = torch.randn(1, 2, 6)
        got, want = hyena_featurize(z, w, None, s.clone()), K.hyena_featurize_ref(z, w, None, s)
        ok &= check(f"featurize {layout}", torch.cat(got, -1), torch.cat(want, -1))
        # both FIR kernels and the modal recurrence: x1v and x2 interleaved in the same pages
        x1v = far(buf, C, layout)
        x2 = far(buf, C, layout, offset=C if layout == "rows" else L)
        for name, G, taps in (("fir taps", C, 7), ("fir toeplitz", 1, 128)):
            h, D = torch.randn(G, taps), torch.randn(C)
            s = torch.randn(1, taps - 1, C)
            ok &= check(f"{name} {layout}", hyena_fir(x1v, x2, h, D, s.clone()), K.hyena_fir_ref(x1v, x2, h, D, s))
        lp, r, D = -torch.rand(C, 4) - 0.01, torch.randn(C, 4), torch.randn(C)
        s = torch.randn(1, C, 4)
        ok &= check(f"modal {layout}", hyena_modal(x1v, x2, lp, r, D, s.clone()), K.hyena_modal_ref(x1v, x2, lp, r, D, s))
    x = buf.as_strided((L, 16), (FAR // (L - 1), 1))
    x.copy_(torch.randn(L, 16))
    scale = torch.randn(16)
    ok &= check("rms_norm rows", rms_norm(x, scale, 1e-6), K.rms_norm_ref(x, scale, 1e-6))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
