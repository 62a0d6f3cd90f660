"""Ahead-of-time compile of every shipped kernel configuration for real GPUs, on a machine without one.

``python -m idir_fast.kernels.aot [--arch 80 90]`` compiles each configuration of
:func:`idir_fast.kernels.siren_streams.shipped_configs` with ``triton.compile`` for ``sm_<arch>``, reads the shared
memory from the compiled metadata and runs the ``ptxas`` shipped with Triton on the PTX for registers and spill
bytes. Prints one line per configuration and a JSON summary; exits non-zero if any configuration needs more shared
memory than the GPU offers or spills registers. Must run without ``TRITON_INTERPRET``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}  # bytes per block: A100, H100

_PARAMS = {
    "_siren_first_fwd_kernel": {"x_ptr": "*fp32", "w_ptr": "*fp32", "b_ptr": "*fp32", "a_ptr": "*fp32",
                                "z_ptr": "*fp32", "N": "i32", "M": "i32", "omega": "fp32"},
    "_siren_hidden_fwd_kernel": {"h_ptr": "*fp32", "w_ptr": "*fp32", "b_ptr": "*fp32", "a_ptr": "*fp32",
                                 "z_ptr": "*fp32", "N": "i32", "K": "i32", "M": "i32", "omega": "fp32"},
    "_siren_sine_bwd_kernel": {"ga_ptr": "*fp32", "z_ptr": "*fp32", "w0_ptr": "*fp32", "gz_ptr": "*fp32",
                               "N": "i32", "M": "i32", "omega": "fp32"},
}


def _ptxas_candidates():
    """The ptxas binaries Triton ships (the newer one reads the newer PTX versions Triton may emit)."""
    import triton

    d = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    return [p for p in (os.path.join(d, "ptxas"), os.path.join(d, "ptxas-blackwell")) if os.path.isfile(p)]


def compile_one(name: str, constexprs: dict, options: dict, arch: int) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import siren_streams as mod

    fn = getattr(mod, name)
    signature = dict(_PARAMS[name])
    signature.update({k: "constexpr" for k in constexprs})
    src = ASTSource(fn=fn, signature=signature, constexprs=dict(constexprs))
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(options))
    ptx = compiled.asm["ptx"]
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.ptx")
        with open(path, "w") as fh:
            fh.write(ptx)
        arch_flag = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
        for ptxas in _ptxas_candidates():
            proc = subprocess.run([ptxas, f"-arch={arch_flag}", "-v", path, "-o", os.path.join(d, "k.cubin")],
                                  capture_output=True, text=True)
            if proc.returncode == 0 or "Unsupported .version" not in proc.stderr:
                break
    report = proc.stdout + proc.stderr
    regs = [int(x) for x in re.findall(r"Used (\d+) registers", report)]
    spills = [int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", report)]
    return {"kernel": name, "arch": arch, **{k: v for k, v in constexprs.items()}, **options,
            "shared_bytes": int(compiled.metadata.shared), "registers": max(regs) if regs else None,
            "spill_bytes": max(spills) if spills else None, "ptxas_ok": proc.returncode == 0}


def main(argv=None) -> int:
    if os.environ.get("TRITON_INTERPRET"):
        print("unset TRITON_INTERPRET: the AOT check needs real compilation", file=sys.stderr)
        return 2
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    ap.add_argument("--json", default=None, help="write the rows to this file")
    a = ap.parse_args(argv)
    from .siren_streams import shipped_configs

    rows, bad = [], 0
    for arch in a.arch:
        for name, constexprs, options in shipped_configs():
            r = compile_one(name, constexprs, options, arch)
            ok = r["ptxas_ok"] and r["spill_bytes"] == 0 and r["shared_bytes"] <= SMEM_LIMIT[arch]
            bad += not ok
            rows.append(r)
            cfg = " ".join(f"{k}={v}" for k, v in constexprs.items())
            print(f"sm_{arch} {name} {cfg} warps={options.get('num_warps')}: regs {r['registers']}, "
                  f"smem {r['shared_bytes']} B, spills {r['spill_bytes']} B {'OK' if ok else 'FAIL'}", flush=True)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    print(json.dumps({"configurations": len(rows), "failed": bad}))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
