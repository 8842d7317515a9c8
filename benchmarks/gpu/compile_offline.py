"""Compile the Triton scan kernels for a Hopper GPU without one, and count what they run.

Run with the device's Triton (its layouts differ between versions), e.g. in a venv over
the project's Python: ``python -m venv --system-site-packages /tmp/t36 &&
/tmp/t36/bin/pip install triton==3.6.0``, then
``/tmp/t36/bin/python benchmarks/gpu/compile_offline.py [--dump DIR] [kernel ...]``.

For each kernel: registers, spills, SASS instructions by kind (shuffles, MUFU, FP32, loads,
stores, ...) and the layouts of its TTGIR. Needs no GPU: Triton's own ptxas and cuobjdump.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from napari_lightm.model.ops.launch import Scan as launch  # noqa: E402
from napari_lightm.model.scan.triton import backward, backward_walk, chunk_scan  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
E, L, N, BT = 64, 2_097_152, 16, 2


def _sig(fn, values: dict, constexprs: dict):
    """Signature and divisibility attributes as a real launch at E=64, L=2M would give."""
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            sig[name] = "constexpr"
            continue
        v = values.get(name, "ptr")
        if v == "ptr":
            sig[name] = "*fp32"
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            sig[name] = "i64" if abs(v) >= 2**31 else "i32"
            if v % 16 == 0 and name not in getattr(fn, "do_not_specialize_names", ()):
                attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, attrs


def kernels():
    k16 = L // 16
    strides = dict(su_b=L * 2 * E, su_t=2 * E, sd_b=L * E, sd_t=E, sb_b=L * 48, sb_t=48,
                   sc_b=L * 48, sc_t=48, sz_b=L * 2 * E, sz_t=2 * E, sdy_b=L * E, sdy_t=E,
                   sy_b=L * E, sy_t=E)
    flags = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True)
    ks_w = k16 // launch.WALK_MAX_SUB
    yield ("walk_bwd", backward_walk._walk_bwd_kernel,
           dict(L=L, E=E, N=N, K=k16, KS=ks_w, SUB=launch.WALK_MAX_SUB, Bt=BT, se=0, sn=1,
                **strides),
           dict(flags, T=16, BE=launch.WALK_BLOCK_E, BN=16), launch.WALK_WARPS, ("se", "sn"))
    yield ("chunk_bwd", backward._chunk_bwd_kernel,
           dict(L=L, E=E, N=N, K=k16, KS=k16, SUB=1, Bt=BT, **strides),
           dict(flags, FLIP=False, T=16, BE=launch.BWD_BLOCK_E, BN=16, BLOCKS_PER_PROG=32),
           launch.BWD_WARPS, ())
    yield ("chunk_adj", backward._chunk_adj_kernel,
           dict(L=L, E=E, N=N, K=k16, KS=ks_w, SUB=launch.WALK_MAX_SUB, **strides),
           dict(HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, FLIP=False, T=16, BE=launch.ADJ_BLOCK_E,
                BN=16), launch.ADJ_WARPS, ())
    k8 = L // 8
    yield ("chunk_out", chunk_scan._chunk_out_kernel,
           dict(L=L, E=E, N=N, K=k8, KS=k8 // 64, SUB=64, **strides),
           dict(flags, STORE_STATES=False, T=8, BE=launch.FWD_BLOCK_E, BN=16), launch.FWD_WARPS, ())
    for name in ("walk_out", "walk_end", "walk_adj"):
        fn = getattr(backward_walk, f"_{name}_kernel", None)
        if fn is not None:
            yield from backward_walk._offline_kernel_specs(name, fn, strides, flags)


def sass_counts(cubin: bytes, tools: Path) -> collections.Counter:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "k.cubin"
        path.write_bytes(cubin)
        sass = subprocess.run([str(tools / "cuobjdump"), "--dump-sass", str(path)],
                              capture_output=True, text=True, check=True).stdout
    counts = collections.Counter()
    for line in sass.splitlines():
        m = re.match(r"\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_]+)(\.[\w.]+)?", line)
        if m:
            counts[m.group(1)] += 1
    return counts


def ptxas_report(ptx: str, tools: Path) -> tuple[str, str]:
    """Registers and spill stores (bytes) from ``ptxas -v`` on the kernel's PTX."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "k.ptx"
        path.write_text(ptx)
        out = subprocess.run([str(tools / "ptxas"), "-arch=sm_90a", "-v", str(path), "-o",
                              str(Path(d) / "k.o")], capture_output=True, text=True).stderr
    regs = re.search(r"Used (\d+) registers", out)
    spill = re.search(r"(\d+) bytes spill stores", out)
    return (regs.group(1) if regs else "?"), (spill.group(1) if spill else "?")


KINDS = {
    "shfl": ("SHFL",), "mufu": ("MUFU",), "fp32": ("FADD", "FMUL", "FFMA", "FMNMX", "FSEL",
                                                    "FSETP", "FCHK"),
    "ldg": ("LDG",), "stg": ("STG",), "lds/sts": ("LDS", "STS"), "local": ("LDL", "STL"),
    "bar": ("BAR",), "int/addr": ("IMAD", "IADD3", "LEA", "ISETP", "SHF", "LOP3", "SEL", "MOV",
                                  "IMNMX", "IABS", "I2F", "F2I"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="kernels to compile (default: all)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="override a scan launch constant (ops/launch.py's Scan) first, "
                         "e.g. WALK_BLOCK_E=32")
    ap.add_argument("--dump", type=Path, help="write each kernel's TTGIR, PTX and SASS here")
    args = ap.parse_args()
    for item in args.set:
        key, value = item.split("=")
        setattr(launch, key, int(value))
    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    os.environ.setdefault("TRITON_PTXAS_PATH", str(tools / "ptxas"))
    print(f"triton {triton.__version__}, target sm_90")
    print("| kernel | warps | regs | spill B | " + " | ".join(KINDS) + " | total |")
    print("|---" * (len(KINDS) + 5) + "|")
    for name, fn, values, constexprs, warps, nospec in kernels():
        if args.names and name not in args.names:
            continue
        fn.do_not_specialize_names = nospec
        sig, attrs = _sig(fn, values, constexprs)
        src = ASTSource(fn, sig, constexprs=constexprs, attrs=attrs)
        k = triton.compile(src, target=TARGET, options=dict(num_warps=warps, num_stages=1))
        c = sass_counts(k.asm["cubin"], tools)
        regs, spills = ptxas_report(k.asm["ptx"], tools)
        cells = [str(sum(c[op] for op in ops)) for ops in KINDS.values()]
        print(f"| {name} | {warps} | {regs} | {spills} | " + " | ".join(cells)
              + f" | {sum(c.values())} |")
        if args.dump:
            args.dump.mkdir(parents=True, exist_ok=True)
            for ext in ("ttgir", "ptx"):
                (args.dump / f"{name}.{ext}").write_text(k.asm[ext])
            (args.dump / f"{name}.cubin").write_bytes(k.asm["cubin"])


if __name__ == "__main__":
    main()
