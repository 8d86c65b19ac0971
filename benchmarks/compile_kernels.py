"""Compile every Triton kernel, in every autotune config, for a GPU target, without a GPU.

    python benchmarks/compile_kernels.py                 # sm_90 (H100), the evo2_7b shapes
    python benchmarks/compile_kernels.py --arch 80       # A100

The Triton interpreter checks the kernels' arithmetic on CPU but not that they compile; this runs the
real compiler (Triton -> PTX -> ptxas) for the target and prints, per kernel and config, the registers
per thread, spilled bytes and shared memory, so a config that spills or cannot compile is seen before
anyone runs it on a GPU. Then, in each kernel's first config: every on/off combination of the optional
inputs, and the specialisations real inputs bring (batch strides of 2^31 elements or more, passed as
i64; a one-token call, L = 1 made a constant). Needs the triton package with its bundled ptxas; no driver.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402

from evo_cli.kernels.featurize.fused import featurize_fwd_kernel  # noqa: E402
from evo_cli.kernels.fir.fused import fir_taps_fwd_kernel, fir_toeplitz_fwd_kernel  # noqa: E402
from evo_cli.kernels.modal.fused import modal_fwd_kernel  # noqa: E402
from evo_cli.kernels.norm.fused import launch_shape as norm_launch_shape  # noqa: E402
from evo_cli.kernels.norm.fused import rms_norm_fwd_kernel  # noqa: E402
from evo_cli.kernels.step.fused import hyena_step_kernel  # noqa: E402


def _strides(prefix, names, ones=1):
    """Stride arguments as a contiguous tensor gives them: the last ``ones`` are 1 (Triton specializes
    an integer argument equal to 1 into a constant), the others multiples of 16."""
    return {f"stride_{prefix}{s}": (1 if i >= len(names) - ones else "i32/16") for i, s in enumerate(names)}


def _runtime(v) -> bool:
    """Argument types are strings like ``*bf16``, ``i32`` or ``i32/16`` (a multiple of 16, as Triton
    marks such integers); anything else is a constexpr value."""
    return isinstance(v, str) and (v.startswith("*") or v.split("/")[0] in ("i32", "i64", "fp32"))


def cases(act: str):
    """(name, kernel, {arg: type string or constexpr value}) for the evo2_7b shapes in dtype ``act``."""
    p, f = f"*{act}", "*fp32"
    blc = ("b", "l", "c")
    fir = {"x_ptr": p, "g_ptr": p, "h_ptr": f, "d_ptr": f, "s_ptr": f, "y_ptr": p, "L": "i32", "C": "i32/16",
           "GS": "i32/16", "TOKENS": "i32/16", **_strides("x", blc), **_strides("g", blc), **_strides("h", ("g", "k")),
           **_strides("s", blc), **_strides("y", blc)}
    yield "featurize K=3", featurize_fwd_kernel, {
        "z_ptr": p, "w_ptr": f, "b_ptr": f, "s_ptr": f, "x2_ptr": p, "x1v_ptr": p, "L": "i32", "D": "i32/16", "TOKENS": "i32/16",
        **_strides("z", blc), **_strides("w", ("c", "k")), **_strides("s", blc), **_strides("o", blc),
        "K": 3, "HAS_BIAS": False, "HAS_STATE": True}
    yield "fir taps K=7 (Hyena-SE)", fir_taps_fwd_kernel, {**fir, "K": 7, "HAS_D": False, "HAS_STATE": True}
    yield "fir Toeplitz K=128 (Hyena-MR)", fir_toeplitz_fwd_kernel, {
        **fir, "K": 128, "HAS_D": True, "HAS_STATE": True, "PREC": "tf32" if act != "fp32" else "tf32x3"}
    modal = {"x_ptr": p, "g_ptr": p, "y_ptr": p, "lp_ptr": f, "r_ptr": f, "d_ptr": f, "s_ptr": f,
             "L": "i32", "C": "i32/16", "S": "i32/16", "ROWS": "i32/16", "LENGTH": "i32/16", **_strides("x", blc), **_strides("g", blc),
             **_strides("y", blc), "HAS_STATE": True}
    # real poles come as [C, S, 1] views (unit mode and re/im strides), complex as [C, S, 2]
    real = {**_strides("p", ("c", "n", "i"), 2), **_strides("r", ("c", "n", "i"), 2),
            **_strides("s", ("b", "c", "n", "i"), 2)}
    cplx = {"stride_pc": "i32/16", "stride_pn": "i32", "stride_pi": 1, "stride_rc": "i32/16", "stride_rn": "i32",
            "stride_ri": 1, "stride_sb": "i32/16", "stride_sc": "i32/16", "stride_sn": "i32", "stride_si": 1}
    yield "modal S=16 real (Hyena-LR)", modal_fwd_kernel, {**modal, **real, "IS_COMPLEX": False, "SP": 16}
    yield "modal S=8 complex (Evo 1)", modal_fwd_kernel, {**modal, **cplx, "IS_COMPLEX": True, "SP": 8}
    step = {"z_ptr": p, "fw_ptr": f, "fb_ptr": f, "fs_ptr": f, "h_ptr": f, "lp_ptr": f, "r_ptr": f, "d_ptr": f,
            "is_ptr": f, "y_ptr": p, "C": "i32/16", "GS": "i32/16", "S": "i32/16", **_strides("z", ("b", "c")),
            **_strides("fw", ("c", "k")), **_strides("fs", blc), **_strides("y", ("b", "c")),
            "KF": 3, "KFP": 4, "HAS_BIAS": False, "HAS_D": True}
    yield "step Hyena-MR", hyena_step_kernel, {
        **step, **_strides("h", ("g", "k")), "stride_pc": 0, "stride_pn": 0, "stride_pi": 0, "stride_rc": 0,
        "stride_rn": 0, "stride_ri": 0, "stride_ib": "i32/16", "stride_i1": "i32/16", "stride_i2": 1, "stride_i3": 0,
        "KI": 128, "KIP": 128, "MODAL": False, "IS_COMPLEX": False, "SP": 1}
    yield "step Hyena-LR", hyena_step_kernel, {
        **step, "stride_hg": 0, "stride_hk": 0, "stride_pc": "i32/16", "stride_pn": 1, "stride_pi": 1,
        "stride_rc": "i32/16", "stride_rn": 1, "stride_ri": 1, "stride_ib": "i32/16", "stride_i1": "i32/16",
        "stride_i2": 1, "stride_i3": 1, "KI": 1, "KIP": 1, "MODAL": True, "IS_COMPLEX": False, "SP": 16}
    yield "step Evo 1 (complex)", hyena_step_kernel, {
        **step, "stride_pc": "i32/16", "stride_pn": "i32", "stride_pi": 1, "stride_rc": "i32/16", "stride_rn": "i32",
        "stride_ri": 1, "stride_hg": 0, "stride_hk": 0, "stride_ib": "i32/16", "stride_i1": "i32/16",
        "stride_i2": "i32", "stride_i3": 1, "KI": 1, "KIP": 1, "MODAL": True, "IS_COMPLEX": True, "SP": 8,
        "HAS_BIAS": True}
    for d in (4096, 8192, 1920):  # evo2_7b, evo2_40b, evo2_1b
        rows, block, warps = norm_launch_shape(d)
        yield f"rms_norm D={d}", rms_norm_fwd_kernel, {
            "x_ptr": p, "w_ptr": f, "y_ptr": p, "R": "i32", "D": "i32/16", "eps": "fp32",
            "stride_xr": "i32/16", "stride_yr": "i32/16", "BR": rows, "BLOCK": block, "num_warps": warps}


# batch strides of the activations: from 2^31 elements on (evo2_7b: 174,763 tokens of the 12,288-wide
# projection; 1M tokens x 4,096 channels of the gate) Triton passes them as i64
_BATCH_STRIDES = ("stride_zb", "stride_ob", "stride_xb", "stride_gb", "stride_yb")


def real_size_variants(spec):
    """``spec`` as a long sequence and as a single token launch it: (label, spec) for batch strides of
    2^31 elements or more (i64) and for L = 1 (Triton makes an integer argument equal to 1 a constant).
    Only kernels with a sequence length L."""
    if "L" not in spec:
        return
    yield "i64 batch strides", {**spec, **{k: "i64/16" for k in _BATCH_STRIDES if k in spec}}
    yield "L=1", {**spec, "L": 1}


def _ptxas(ptx: str, arch: int) -> dict:
    """Registers, spill bytes and static shared memory that ptxas reports for the kernel."""
    from triton.backends.nvidia.compiler import get_ptxas

    # the ptxas Triton itself compiles with (a bundled one may be too old for the PTX version)
    ptxas = get_ptxas(arch).path if "arch" in inspect.signature(get_ptxas).parameters else get_ptxas().path
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as fh:
        fh.write(ptx)
    sm = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    out = subprocess.run([ptxas, f"-arch={sm}", "-v", fh.name, "-o", os.devnull], capture_output=True, text=True)
    os.unlink(fh.name)
    text = out.stderr + out.stdout
    get = lambda pat: int(m.group(1)) if (m := re.search(pat, text)) else 0  # noqa: E731
    return {"regs": get(r"Used (\d+) registers"), "spill": get(r"(\d+) bytes spill stores")}


def _compile(kernel, spec, cfg, target):
    """Compile ``kernel`` (jit or autotuned) for ``spec`` in config ``cfg``."""
    jit = kernel.fn if isinstance(kernel, Autotuner) else kernel
    consts = {k: v for k, v in {**spec, **cfg.kwargs}.items() if not _runtime(v) and k in jit.arg_names}
    sig = {a: ("constexpr" if a in consts else spec[a].split("/")[0]) for a in jit.arg_names}
    # pointers from torch allocations and integers marked /16 are multiples of 16, as at launch
    attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(jit.arg_names)
             if a not in consts and (spec[a].startswith("*") or spec[a].endswith("/16"))}
    return triton.compile(ASTSource(jit, sig, consts, attrs), target=target,
                          options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})


def _configs(kernel, spec):
    """The autotune configs of ``kernel``, or the one launch config a plain kernel gets."""
    return getattr(kernel, "configs", None) or [triton.Config({}, num_warps=spec.get("num_warps", 4))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", type=int, default=90, help="compute capability x10 (default 90: H100)")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="activation dtype")
    ap.add_argument("--only", default="", help="compile only kernels whose name contains this")
    args = ap.parse_args()
    target = GPUTarget("cuda", args.arch, 32)
    print("| kernel | config | registers | spill bytes | shared memory |\n|---|---|---|---|---|")
    failed = 0
    for name, kernel, spec in cases(args.dtype):
        if args.only not in name:
            continue
        for cfg in _configs(kernel, spec):
            label = ", ".join(f"{k}={v}" for k, v in cfg.kwargs.items()) + f", warps={cfg.num_warps}"
            try:
                compiled = _compile(kernel, spec, cfg, target)
            except Exception as e:  # report every failure, then exit non-zero
                failed += 1
                print(f"| {name} | {label} | FAILED: {str(e).splitlines()[0][:120]} | | |")
                continue
            info = _ptxas(compiled.asm["ptx"], args.arch)
            print(f"| {name} | {label} | {info['regs']} | {info['spill']} | {compiled.metadata.shared} B |", flush=True)
    # every on/off combination of the optional inputs, and the real-size specialisations, in the first config
    for name, kernel, spec in cases(args.dtype):
        if args.only not in name:
            continue
        cfg = _configs(kernel, spec)[0]
        flags = [k for k in ("HAS_STATE", "HAS_BIAS", "HAS_D") if k in spec]
        variants = [(str(dict(zip(flags, bits))), {**spec, **dict(zip(flags, bits))})
                    for bits in itertools.product((False, True), repeat=len(flags)) if flags]
        for label, variant in variants + list(real_size_variants(spec)):
            try:
                compiled = _compile(kernel, variant, cfg, target)
            except Exception as e:
                failed += 1
                print(f"{name} {label}: FAILED: {str(e).splitlines()[0][:160]}")
                continue
            if label in ("i64 batch strides", "L=1"):
                info = _ptxas(compiled.asm["ptx"], args.arch)
                print(f"{name} {label}: {info['regs']} registers, {info['spill']} spill bytes", flush=True)
    print(f"\n{'all kernels, configs and flag variants compile' if not failed else f'{failed} failures'} "
          f"for sm_{args.arch} ({args.dtype} activations)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
