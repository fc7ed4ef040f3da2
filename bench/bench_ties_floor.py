"""Per-entry cost of a TIES combine against a weighted sum: merge_core's compiled kernels beside hand-written AVX2 ones.

One 1B-shape MLP matrix (2^24 bf16 entries; a base and two base+noise sources). Four kernels, each timed as the
best of --repeats calls, alternated round by round in one process:
  - `wsum compiled`: methods/blend.py's weighted sum (what every task_arithmetic build runs);
  - `ties compiled`: methods/fused.py's combine pass for two sources with a magnitude trim, TIES sign election and
    normalisation (what every ties trial runs, per piece);
  - `wsum hand` / `ties hand`: bench/floor_kernels.c, the same arithmetic written with AVX2 intrinsics and software
    prefetch: the best floor we can write for each. The bench checks that each hand kernel gives the compiled one's
    bits, so they compute the same thing.
The ratio `ties / wsum` of the hand kernels is what issue #17's "ties <= 2x task_arithmetic" asks of the
arithmetic itself on this machine. Needs an x86-64 CPU with AVX2 and a C compiler with OpenMP ($CC, default cc).

Command (the lead's quiet-machine run):
    python bench/bench_ties_floor.py
"""

from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from _common import print_table  # noqa: F401  (puts the repository on sys.path)

from merge_core.methods import blend, fused

HERE = Path(__file__).resolve().parent
N = 1 << 24


def build(folder: Path) -> ctypes.CDLL:
    """bench/floor_kernels.c compiled into folder and loaded."""
    lib = folder / "floor_kernels.so"
    cmd = [os.environ.get("CC", "cc"), "-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC",
           str(HERE / "floor_kernels.c"), "-o", str(lib)]
    subprocess.run(cmd, check=True)
    dll = ctypes.CDLL(str(lib))
    f, p, i64 = ctypes.c_float, ctypes.c_void_p, ctypes.c_int64
    dll.floor_wsum3.argtypes = [p, p, p, i64, f, f, f, p]
    dll.floor_ties2.argtypes = [p, p, p, i64] + [f] * 7 + [p]
    return dll


def best(fn, repeats: int) -> list[float]:
    """One untimed call, then `repeats` timed ones."""
    fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> int:
    """Build the hand kernels, check their bits against the compiled ones, time all four alternated."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=0, help="torch and OpenMP threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(torch.get_num_threads())  # read by libgomp when the library loads
    if "avx2" not in Path("/proc/cpuinfo").read_text():
        print("needs an x86-64 CPU with AVX2")
        return 0
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(N, generator=gen)
    b = base.bfloat16()
    x0 = (base + 0.002 * torch.randn(N, generator=gen)).bfloat16()
    x1 = (base + 0.002 * torch.randn(N, generator=gen)).bfloat16()
    # trims at densities 0.5 and 0.6: keep |delta| >= the k-th largest magnitude
    kth = [float(torch.kthvalue((x.float() - b.float()).abs(), int((1 - d) * N)).values) for x, d in ((x0, 0.5), (x1, 0.6))]
    w = [0.45, 0.55]
    w01 = float(torch.tensor(w[0]) + torch.tensor(w[1]))
    outs = {k: torch.empty(N, dtype=torch.bfloat16) for k in ("wc", "wh", "tc", "th")}
    ptr = lambda t: t.data_ptr()  # noqa: E731
    coef3 = [0.2, 0.35, 0.45]
    wsum_k, combine = blend._kernel(), fused._kernel("combine")
    scalars = dict(lim=torch.zeros(2), thr=torch.tensor(kth), coef=torch.tensor(w), w=torch.tensor(w),
                   div=torch.tensor(1.0), lam=torch.tensor(1.0), consensus=True, normalize=True, scale_lam=False)
    with tempfile.TemporaryDirectory() as tmp:
        dll = build(Path(tmp))
        runs = {
            "wsum compiled": lambda: wsum_k([b, x0, x1], torch.tensor(coef3), outs["wc"]),
            "wsum hand": lambda: dll.floor_wsum3(ptr(b), ptr(x0), ptr(x1), N, *coef3, ptr(outs["wh"])),
            "ties compiled": lambda: combine(b, [x0, x1], [None, None], out=outs["tc"], **scalars),
            "ties hand": lambda: dll.floor_ties2(ptr(b), ptr(x0), ptr(x1), N, *kth, *w, *w, w01, ptr(outs["th"])),
        }
        for fn in runs.values():
            fn()
        same_w = torch.equal(outs["wc"].view(torch.int16), outs["wh"].view(torch.int16))
        same_t = torch.equal(outs["tc"].view(torch.int16), outs["th"].view(torch.int16))
        print(f"bits: wsum hand == compiled: {same_w}; ties hand == compiled: {same_t}")
        times = {k: [] for k in runs}
        for _ in range(args.repeats):  # alternated: a drift of the machine's speed reaches every kernel alike
            for k, fn in runs.items():
                times[k] += best(fn, 1)
    ms = {k: min(v) * 1e3 for k, v in times.items()}
    gbps = 4 * N * 2 / 1e9  # three bf16 inputs read, one bf16 output written
    rows = [[k, f"{v:.2f}", f"{gbps / (v / 1e3):.1f}"] for k, v in ms.items()]
    print_table(["kernel (2^24 bf16 entries)", "best ms", "GB/s moved"], rows)
    print(f"ties / wsum: compiled {ms['ties compiled'] / ms['wsum compiled']:.2f}x, hand {ms['ties hand'] / ms['wsum hand']:.2f}x; "
          f"hand ties / compiled wsum {ms['ties hand'] / ms['wsum compiled']:.2f}x; torch threads {torch.get_num_threads()}")
    return 0 if same_w and same_t else 1


if __name__ == "__main__":
    raise SystemExit(main())
