"""Development benchmark of the Triton backend on one GPU: the Triton matmul against fp16
F.linear on 14336 x 4096 (Llama-3-8B MLP), each format, M = 1 ... 4096. Not the qkernels-bench
harness: a quick check while tuning the kernels.

    python bench/triton_dev.py              # the table
    python bench/triton_dev.py --threshold  # GEMV vs GEMM at M = 1..16 (sets GEMV_MAX_M)
    python bench/triton_dev.py --crossover  # fused GEMM vs dequantize + cuBLAS (FUSED_GEMM_MAX_M)
    python bench/triton_dev.py --gemv       # the GEMV at M = 1 (int4): word path against byte path
    python bench/triton_dev.py --gemv-tiles # the GEMV at M = 1 (nf4, int4): tiles against default
    python bench/triton_dev.py --gemv-mma   # the GEMV at M = 1 (int4, nf4): tensor cores or not
    python bench/triton_dev.py --sass       # no GPU needed: SASS of each kernel's main loop
    python bench/triton_dev.py --baseline DIR   # this tree's kernels against DIR's (an older
                                            # python/qkernels/triton), fp16 and bf16, M <= 64

Timing: CUDA events around replays of a CUDA graph that calls the op once per weight copy,
rotating through enough copies to exceed the L2 cache four times (cold weights); median of
the replays. With QKERNELS_TRITON_AUTOTUNE=1 the autotuned configs found are printed at the end
(candidates for DEFAULT_CONFIGS; time them against the defaults before adopting them).
"""

import argparse
import collections
import importlib.machinery
import importlib.util
import os
import re
import statistics
import subprocess
import sys
import tempfile

import torch
import torch.nn.functional as F
import triton

import qkernels as qk
from qkernels import formats, ops
from qkernels.triton import common, dequant, gemm, gemv

N, K = 14336, 4096
BATCH_SIZES = (1, 16, 64, 256, 1024, 4096)
THRESHOLD_BATCH_SIZES = (1, 2, 3, 4, 6, 8, 12, 16)
THRESHOLD_SHAPES = ((14336, 4096), (4096, 14336), (4096, 4096))
CROSSOVER_BATCH_SIZES = (32, 64, 128, 192, 256, 512, 1024)
SASS_CAPABILITY = 90
FORMATS = (("int4", 128, False), ("int4", 128, True), ("nf4", 64, False), ("int8", None, False))
L2_FLUSH_FACTOR = 4
REPLAYS = 20


def weight_copies(qw, nbytes_l2):
    copies = max(2, -(-L2_FLUSH_FACTOR * nbytes_l2 // qw.nbytes))
    return [qk.QuantizedWeight(qw.fmt, qw.shape, qw.group_size,
                               **{k: t.clone() for k, t in qw.tensors().items()})
            for _ in range(copies)]


def time_per_call(calls):
    """Median microseconds per call of a CUDA graph that makes every call in ``calls`` once."""
    for call in calls:  # warm-up outside the graph: compiles, autotunes
        call()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(REPLAYS):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / len(calls))
    return statistics.median(times)


def interleaved_medians(variants, rounds):
    """{name: median us per call} of each variant's calls, the variants timed in turn in each of
    ``rounds`` rounds (so a drift of the machine touches them all alike)."""
    times = collections.defaultdict(list)
    for _ in range(rounds):
        for name, calls in variants.items():
            times[name].append(time_per_call(calls))
    return {name: statistics.median(v) for name, v in times.items()}


def triton_calls(x, copies, kernel=None):
    def call(qw):
        if kernel is None:
            return lambda: ops.matmul_triton_op(x, qw.fmt, qw.qweight, qw.scale_tensor, qw.zeros,
                                                qw.group_size, None)
        y = torch.empty(x.shape[0], qw.shape[0], dtype=x.dtype, device=x.device)
        return lambda: kernel.matmul(x, qw.fmt, qw.qweight, qw.scale_tensor, qw.zeros,
                                     qw.group_size, None, y)
    return [call(qw) for qw in copies]


def linear_calls(x, n, k, nbytes_l2):
    """F.linear with weights in x's dtype, rotating through copies that exceed the L2."""
    copies = max(2, -(-L2_FLUSH_FACTOR * nbytes_l2 // (n * k * 2)))
    weights = [torch.randn(n, k, device="cuda", dtype=x.dtype) for _ in range(copies)]
    return [lambda w=w: F.linear(x, w) for w in weights]


def quantized(fmt, group_size, symmetric, n, k):
    w = torch.randn(n, k, device="cuda") * 0.02
    return qk.quantize(w, fmt, group_size, symmetric=symmetric)


def table(nbytes_l2):
    print(f"{N}x{K}, fp16 x, cold L2; us per call (speedup over fp16 F.linear), weight GB/s")
    header = f"{'M':>6} {'fp16':>9}" + "".join(f" {_name(f):>26}" for f in FORMATS)
    print(header)
    weights = {f: weight_copies(quantized(*f, N, K), nbytes_l2) for f in FORMATS}
    for m in BATCH_SIZES:
        x = torch.randn(m, K, device="cuda", dtype=torch.float16)
        base = time_per_call(linear_calls(x, N, K, nbytes_l2))
        row = f"{m:>6} {base:>9.1f}"
        for f in FORMATS:
            t = time_per_call(triton_calls(x, weights[f]))
            gbs = weights[f][0].nbytes / t / 1e3
            row += f" {t:>9.1f} ({base / t:>5.2f}x) {gbs:>6.0f}GB/s"
        print(row, flush=True)


def threshold(nbytes_l2):
    print("GEMV vs GEMM kernel, int4 g128, us per call; GEMV_MAX_M = the largest M where GEMV wins")
    for n, k in THRESHOLD_SHAPES:
        copies = weight_copies(quantized("int4", 128, False, n, k), nbytes_l2)
        for m in THRESHOLD_BATCH_SIZES:
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            t_gemv = time_per_call(triton_calls(x, copies, gemv))
            t_gemm = time_per_call(triton_calls(x, copies, gemm))
            print(f"{n}x{k} M={m:>2}: gemv {t_gemv:7.1f}  gemm {t_gemm:7.1f}  "
                  f"{'gemv' if t_gemv < t_gemm else 'gemm'}", flush=True)


GEMV_SHAPES = ((14336, 4096), (4096, 14336), (4096, 4096), (576, 576))
GEMV_FORMATS = (("int4", 128, False), ("int4", 128, True))  # the word path's format
# Word-path tiles timed beside the default one: (BLOCK_N, BLOCK_K, num_warps, split-K or None
# for the heuristic's).
GEMV_WORD_TILES = ((64, 128, 4, 16), (64, 128, 4, 32), (32, 128, 4, 16), (128, 128, 4, 32),
                   (64, 128, 2, 32))
GEMV_ROUNDS = 3


def gemv_versions(nbytes_l2):
    """The GEMV at M = 1, autotune off: the word path at its default tile and at
    GEMV_WORD_TILES against the byte path it replaced (its sm_90 default, 64 x 128), the CUDA
    backend and fp16 F.linear, interleaved over GEMV_ROUNDS rounds in one process; medians."""
    byte_config = triton.Config({"BLOCK_N": 64, "BLOCK_K": 128}, num_warps=4, num_stages=2)
    tiles = [f"{n}x{k}w{w}" + (f"s{split}" if split else "")
             for n, k, w, split in GEMV_WORD_TILES]
    print("GEMV M=1, us per call (median of rounds): fp16 | cuda | triton bytes (before) | "
          "triton words, default tile (now) | now vs before, vs fp16, vs cuda | words at "
          + ", ".join(tiles))
    for n, k in GEMV_SHAPES:
        x = torch.randn(1, k, device="cuda", dtype=torch.float16)
        for f in GEMV_FORMATS:
            copies = weight_copies(quantized(*f, n, k), nbytes_l2)

            def gemv_calls(words, config=None, split_k=None):
                def call(qw):
                    y = torch.empty(1, n, dtype=x.dtype, device=x.device)
                    return lambda: gemv.matmul(x, qw.fmt, qw.qweight, qw.scale_tensor, qw.zeros,
                                               qw.group_size, None, y, config=config,
                                               split_k=split_k, words=words)
                return [call(qw) for qw in copies]

            variants = {
                "fp16": linear_calls(x, n, k, nbytes_l2),
                "cuda": [lambda qw=qw: qk.matmul(x, qw, backend="cuda") for qw in copies],
                "bytes": gemv_calls(False, gemv._adapt(byte_config, 1, 128, k // 128)),
                "words": gemv_calls(True),
            }
            for tile, (block_n, block_k, warps, split) in zip(tiles, GEMV_WORD_TILES):
                variants[tile] = gemv_calls(True, triton.Config(
                    {"BLOCK_N": block_n, "BLOCK_K": block_k}, num_warps=warps, num_stages=2),
                    split)
            t = interleaved_medians(variants, GEMV_ROUNDS)
            print(f"{n}x{k} {_name(f):>14}: {t['fp16']:6.1f} | {t['cuda']:6.1f} | "
                  f"{t['bytes']:6.1f} | {t['words']:6.1f} | {t['bytes'] / t['words']:.2f}x, "
                  f"{t['fp16'] / t['words']:.2f}x, {t['cuda'] / t['words']:.2f}x | "
                  + ", ".join(f"{t[tile]:6.1f}" for tile in tiles), flush=True)


# GEMV tiles timed by --gemv-tiles: (BLOCK_N, BLOCK_K, num_warps, num_stages, split-K or None
# for the heuristic's) per format, beside the default config.
GEMV_SWEEP = {
    ("nf4", 64, False): ((64, 64, 4, 2, None), (256, 64, 8, 2, None), (128, 64, 8, 2, None),
                         (128, 64, 4, 3, None), (128, 64, 4, 2, 16), (64, 64, 2, 2, None),
                         (128, 32, 4, 2, None)),
    ("int4", 128, False): ((64, 128, 4, 3, None), (64, 128, 4, 4, None), (128, 128, 8, 2, None),
                           (32, 128, 2, 2, None), (64, 64, 4, 2, None), (64, 256, 8, 2, None),
                           (64, 128, 4, 2, 16)),
}


def gemv_tiles(nbytes_l2):
    """The GEMV at M = 1 (fp16 x, autotune off) at its default config and at each GEMV_SWEEP
    tile, with the CUDA backend; interleaved over GEMV_ROUNDS rounds, medians in us."""
    for f, tiles in GEMV_SWEEP.items():
        names = [f"{n}x{k}w{w}s{st}" + (f"k{split}" if split else "")
                 for n, k, w, st, split in tiles]
        print(f"{_name(f)} M=1, us: cuda | default | " + " | ".join(names))
        for n, k in VERSION_SHAPES:
            x = torch.randn(1, k, device="cuda", dtype=torch.float16)
            copies = weight_copies(quantized(*f, n, k), nbytes_l2)

            def calls(config=None, split_k=None):
                def call(qw):
                    y = torch.empty(1, n, dtype=x.dtype, device=x.device)
                    return lambda: gemv.matmul(x, qw.fmt, qw.qweight, qw.scale_tensor, qw.zeros,
                                               qw.group_size, None, y, config=config,
                                               split_k=split_k)
                return [call(qw) for qw in copies]

            variants = {"cuda": [lambda qw=qw: qk.matmul(x, qw, backend="cuda") for qw in copies],
                        "default": calls()}
            for name, (block_n, block_k, warps, stages, split) in zip(names, tiles):
                variants[name] = calls(triton.Config({"BLOCK_N": block_n, "BLOCK_K": block_k},
                                                     num_warps=warps, num_stages=stages), split)
            t = interleaved_medians(variants, GEMV_ROUNDS)
            print(f"{n}x{k}: {t['cuda']:6.1f} | {t['default']:6.1f} | "
                  + " | ".join(f"{t[name]:6.1f}" for name in names), flush=True)


MMA_SHAPES = ((14336, 4096), (4096, 14336), (4096, 4096), (28672, 8192))
MMA_FORMATS = (("int4", 128, False), ("int4", 128, True), ("nf4", 64, False))


def gemv_mma(nbytes_l2):
    """The word path at M = 1 by tensor cores (_rows_dot_mma) against the same path on CUDA
    cores, with fp16 F.linear and the CUDA backend; int4 g128 and symmetric, nf4 g64; fp16 and
    bf16 x; interleaved over GEMV_ROUNDS rounds, medians in us."""
    print("GEMV M=1, us: F.linear | cuda | triton words | triton mma | mma vs words, "
          "vs F.linear, vs cuda")
    for n, k in MMA_SHAPES:
        for dtype in (torch.float16, torch.bfloat16):
            x = torch.randn(1, k, device="cuda", dtype=dtype)
            for f in MMA_FORMATS:
                copies = weight_copies(quantized(*f, n, k), nbytes_l2)

                def calls(mma):
                    def call(qw):
                        y = torch.empty(1, n, dtype=x.dtype, device=x.device)
                        return lambda: gemv.matmul(x, qw.fmt, qw.qweight, qw.scale_tensor,
                                                   qw.zeros, qw.group_size, None, y, mma=mma)
                    return [call(qw) for qw in copies]

                t = interleaved_medians({
                    "linear": linear_calls(x, n, k, nbytes_l2),
                    "cuda": [lambda qw=qw: qk.matmul(x, qw, backend="cuda") for qw in copies],
                    "words": calls(False), "mma": calls(None)}, GEMV_ROUNDS)
                print(f"{n}x{k} {str(dtype)[6:]:>8} {_name(f):>14}: {t['linear']:6.1f} | "
                      f"{t['cuda']:6.1f} | {t['words']:6.1f} | {t['mma']:6.1f} | "
                      f"{t['words'] / t['mma']:.2f}x, {t['linear'] / t['mma']:.2f}x, "
                      f"{t['cuda'] / t['mma']:.2f}x", flush=True)


VERSION_SHAPES = ((14336, 4096), (4096, 14336), (4096, 4096))
VERSION_BATCH_SIZES = (1, 16, 64)
VERSION_FORMATS = (("nf4", 64, False), ("int4", 128, False))
VERSION_ROUNDS = 3


def load_kernels(directory):
    """gemv and gemm of another copy of python/qkernels/triton, imported as a subpackage of this
    qkernels (its relative imports resolve here) without its __init__ (which would register the
    ops a second time)."""
    name = "qkernels._triton_baseline"
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    package = importlib.util.module_from_spec(spec)
    package.__path__ = [os.path.abspath(directory)]
    sys.modules[name] = package
    return {kernel: importlib.import_module(f"{name}.{kernel}") for kernel in ("gemv", "gemm")}


def versions(nbytes_l2, baseline_dir):
    """The Triton kernels of this tree ("new") against those of ``baseline_dir`` ("old"), the CUDA
    backend and F.linear in x's dtype, autotune off, each kernel as the op picks it (GEMV at one
    row, GEMM above); interleaved over VERSION_ROUNDS rounds in one process, medians."""
    old = load_kernels(baseline_dir)
    new = {"gemv": gemv, "gemm": gemm}
    print("us per call (median of rounds): F.linear | cuda | triton old | triton new | "
          "new vs old, new vs F.linear, new vs cuda, old vs cuda")
    for dtype in (torch.float16, torch.bfloat16):
        for n, k in VERSION_SHAPES:
            for f in VERSION_FORMATS:
                copies = weight_copies(quantized(*f, n, k), nbytes_l2)
                for m in VERSION_BATCH_SIZES:
                    x = torch.randn(m, k, device="cuda", dtype=dtype)
                    kernel = "gemv" if m == 1 else "gemm"
                    variants = {
                        "linear": linear_calls(x, n, k, nbytes_l2),
                        "cuda": [lambda qw=qw: qk.matmul(x, qw, backend="cuda") for qw in copies],
                        "old": triton_calls(x, copies, old[kernel]),
                        "new": triton_calls(x, copies, new[kernel]),
                    }
                    t = interleaved_medians(variants, VERSION_ROUNDS)
                    print(f"{str(dtype)[6:]:>8} {n}x{k} {_name(f):>9} M={m:<3}: "
                          f"{t['linear']:6.1f} | {t['cuda']:6.1f} | {t['old']:6.1f} | "
                          f"{t['new']:6.1f} | {t['old'] / t['new']:.2f}x, "
                          f"{t['linear'] / t['new']:.2f}x, {t['cuda'] / t['new']:.2f}, "
                          f"{t['cuda'] / t['old']:.2f}", flush=True)


def dequant_calls(x, copies):
    def call(qw):
        return lambda: F.linear(x, dequant.dequantize(qw.fmt, qw.qweight, qw.scale_tensor,
                                                      qw.zeros, qw.group_size, x.shape[1],
                                                      x.dtype))
    return [call(qw) for qw in copies]


def crossover(nbytes_l2):
    print(f"fused GEMM vs dequantize + cuBLAS, {N}x{K}, us per call; FUSED_GEMM_MAX_M = the "
          "largest M where the fused GEMM wins")
    for f in FORMATS:
        copies = weight_copies(quantized(*f, N, K), nbytes_l2)
        for m in CROSSOVER_BATCH_SIZES:
            x = torch.randn(m, K, device="cuda", dtype=torch.float16)
            t_fused = time_per_call(triton_calls(x, copies, gemm))
            t_dequant = time_per_call(dequant_calls(x, copies))
            print(f"{_name(f)} M={m:>4}: fused {t_fused:7.1f}  dequant {t_dequant:7.1f}  "
                  f"{'fused' if t_fused < t_dequant else 'dequant'}", flush=True)


# --- SASS of the main loops, compiled for an sm_90 target without a GPU ------------------------

def _compile(kernel, pointer_types, constexprs, num_warps, num_stages):
    """The cubin of ``kernel`` for SASS_CAPABILITY, specialized as a launch on 14336 x 4096 would
    be: 16-divisible sizes and strides; a unit stride (x's k stride), which Triton compiles as
    the constant 1, is the caller's to pass in ``constexprs``."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature, attrs = {}, {}
    for index, name in enumerate(kernel.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = pointer_types.get(name, "*fp32")
            attrs[(index,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "i32"
            attrs[(index,)] = [["tt.divisibility", 16]]
    source = ASTSource(kernel, signature, constexprs, attrs)
    target = GPUTarget("cuda", SASS_CAPABILITY, 32)
    return triton.compile(source, target=target,
                          options={"num_warps": num_warps, "num_stages": num_stages})


def _sass(cubin: bytes) -> list:
    """(address, opcode, operands) of each SASS instruction, by the cuobjdump Triton ships."""
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                             "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([cuobjdump, "-sass", f.name], capture_output=True, text=True,
                              check=True).stdout
    lines = re.findall(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);",
                       text)
    return [(int(address, 16), opcode.split(".")[0], operands)
            for address, opcode, operands in lines]


def _opcodes(cubin: bytes, main_loop: bool) -> collections.Counter:
    """Opcode counts of the whole kernel, or of its longest loop (a backward branch and its
    target)."""
    code = _sass(cubin)
    start, end = 0, code[-1][0]
    if main_loop:
        loops = [(int(target.group(1), 16), address) for address, opcode, operands in code
                 if opcode == "BRA" and (target := re.search(r"0x([0-9a-f]+)", operands))
                 and int(target.group(1), 16) < address]
        start, end = max(loops, key=lambda loop: loop[1] - loop[0])
    return collections.Counter(op for address, op, _ in code if start <= address <= end)


def sass():
    """Per format: the instructions of each kernel's main loop per weight a thread dequantizes
    per iteration, at the default sm_90 configs (gemv M=1, gemm M=16, dequant)."""
    groups = {"int8": 4096, "int4": 128, "nf4": 64}
    print(f"triton {triton.__version__}, sm_{SASS_CAPABILITY}, main loop of each "
          "kernel: SASS instructions per weight per thread (selected opcodes per weight)")
    for fmt in ("int8", "int4", "nf4"):
        group_size = groups[fmt]
        num_groups = K // group_size
        qweight_type = "*i8" if fmt == "int8" else "*u8"
        base = dict(FORMAT=formats.FORMAT_IDS[fmt], HAS_ZEROS=fmt == "int4", ABSMAX_DQ=False)
        words = fmt != "int8"  # the word path's formats (nf4 through the permute decode)
        gemv_config = gemv.default_config((SASS_CAPABILITY // 10, 0), 1, group_size, num_groups,
                                          words)
        gemm_config = gemm.default_config((SASS_CAPABILITY // 10, 0), 16, fmt, torch.float16,
                                          group_size, num_groups, N * K)
        kernels = {
            "gemv M=1": (gemv.gemv_kernel, gemv_config, dict(
                stride_xk=1, HAS_BIAS=False, BLOCK_M=1, SPLIT_K=1,
                NF4_FROM_TABLE=gemv.NF4_FROM_TABLE, PTX_DECODE=True, DEPENDENT_LAUNCH=True,
                MMA=False, MMA_GROUPS_PER_TILE=1, MMA_ASM="", MMA_CONSTRAINTS="",
                WORDS=words, ROW_SCALE=num_groups == 1,
                SCALE_PER_TILE=common.scale_per_tile(group_size, num_groups,
                                                     gemv_config.kwargs["BLOCK_K"]))),
            "gemm M=16": (gemm.gemm_kernel, gemm_config, dict(
                stride_xk=1, HAS_BIAS=False, DOT_IN_FP32=False, SPLIT_K=1, PTX_DECODE=True,
                DEPENDENT_LAUNCH=True, SCALES_AHEAD=False,
                SCALE_PER_TILE=common.scale_per_tile(group_size, num_groups,
                                                     gemm_config.kwargs["BLOCK_K"]))),
        }
        if fmt in ("int4", "nf4"):
            kernel, config, meta = kernels["gemv M=1"]
            asm, constraints = gemv.mma_asm(fmt, torch.float16, fmt == "int4", True)
            kernels["gemv M=1, mma"] = (kernel, gemv.MMA_CONFIG, {
                **meta, "MMA": True, "MMA_GROUPS_PER_TILE": max(128 // group_size, 1),
                "MMA_ASM": asm, "MMA_CONSTRAINTS": constraints})
        if fmt == "nf4":  # the decode the GEMV does not use, for comparison
            kernel, config, meta = kernels["gemv M=1"]
            byte_config = gemv.default_config((SASS_CAPABILITY // 10, 0), 1, group_size,
                                              num_groups)
            kernels["gemv M=1, byte path"] = (gemv.gemv_kernel, byte_config,
                                              {**meta, "WORDS": False})
            kernels["gemv M=1, table load"] = (gemv.gemv_kernel, byte_config,
                                               {**meta, "WORDS": False, "PTX_DECODE": False})
            kernel, config, meta = kernels["gemm M=16"]
            kernels["gemm M=16, select tree"] = (kernel, config, {**meta, "PTX_DECODE": False})
        for name, (kernel, config, meta) in kernels.items():
            codes_type = "*i32" if meta.get("WORDS") else qweight_type
            compiled = _compile(kernel, {"x_ptr": "*fp16", "qweight_ptr": codes_type,
                                         "bias_ptr": "*fp16", "y_ptr": "*fp16",
                                         "tile_counters_ptr": "*i32"},
                                {**base, **meta, **config.kwargs}, config.num_warps,
                                config.num_stages)
            block_n, block_k = config.kwargs["BLOCK_N"], config.kwargs["BLOCK_K"]
            per_thread = block_n * block_k / (32 * config.num_warps)
            _print_loop(f"{fmt:>5} {name:<10} {config.kwargs}", compiled, per_thread)
        block_n, block_k = common.fit_tile(dequant.BLOCK_N, dequant.BLOCK_K, group_size,
                                           num_groups, dequant.MIN_BLOCK_K, dequant.MAX_BLOCK_N)
        compiled = _compile(dequant.dequantize_kernel,
                            {"qweight_ptr": qweight_type, "w_ptr": "*fp16"},
                            {**base, "BLOCK_N": block_n, "BLOCK_K": block_k, "PTX_DECODE": True,
                             "SCALE_PER_TILE": common.scale_per_tile(group_size, num_groups,
                                                                     block_k)},
                            dequant.NUM_WARPS, 1)
        _print_loop(f"{fmt:>5} dequant    {block_n}x{block_k}", compiled,
                    block_n * block_k / (32 * dequant.NUM_WARPS), main_loop=False)


def _print_loop(label, compiled, weights_per_thread, main_loop=True):
    ops = _opcodes(compiled.asm["cubin"], main_loop)
    selected = ("SEL", "FSEL", "LOP3", "SHF", "IMAD", "FFMA", "FMUL", "FADD", "F2FP", "HMMA",
                "LDG", "LDGSTS", "LDS", "STS", "LDSM", "STG")
    detail = " ".join(f"{op} {ops[op] / weights_per_thread:.2f}" for op in selected if ops[op])
    print(f"{label}: {sum(ops.values()) / weights_per_thread:.2f} per weight "
          f"({weights_per_thread:.0f} weights/thread; {detail}); "
          f"{compiled.metadata.shared} B shared", flush=True)


def print_tuned_configs():
    for name, kernel in (("gemv", gemv), ("gemm", gemm)):
        for key, config in kernel._autotuned_kernel.cache.items():
            print(f"{name} {key}: {config}")


def _name(f):
    fmt, group_size, symmetric = f
    return f"{fmt}{'-sym' if symmetric else ''} g{group_size or 'K'}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threshold", action="store_true", help="GEMV vs GEMM at M = 1..16")
    parser.add_argument("--crossover", action="store_true",
                        help="fused GEMM vs dequantize + cuBLAS at M = 32..1024")
    parser.add_argument("--gemv-tiles", action="store_true",
                        help="GEMV at M = 1, nf4 and int4: default config against other tiles")
    parser.add_argument("--gemv-mma", action="store_true",
                        help="the GEMV at M = 1 (int4, nf4): tensor cores against CUDA cores")
    parser.add_argument("--gemv", action="store_true",
                        help="GEMV at M = 1, int4: word path against the byte path, CUDA, fp16")
    parser.add_argument("--baseline", metavar="DIR",
                        help="time this tree's kernels against DIR's (another python/qkernels/"
                             "triton) at M = 1, 16, 64, fp16 and bf16")
    parser.add_argument("--sass", action="store_true",
                        help="SASS instructions per weight of each kernel's main loop (no GPU)")
    args = parser.parse_args()
    if args.sass:
        sass()
        return
    props = torch.cuda.get_device_properties(0)
    print(f"{props.name}, torch {torch.__version__}, triton {triton.__version__}")
    nbytes_l2 = getattr(props, "L2_cache_size", 50 * 2**20)
    if args.baseline:
        versions(nbytes_l2, args.baseline)
    elif args.gemv_tiles:
        gemv_tiles(nbytes_l2)
    elif args.gemv_mma:
        gemv_mma(nbytes_l2)
    elif args.gemv:
        gemv_versions(nbytes_l2)
    elif args.threshold:
        threshold(nbytes_l2)
    elif args.crossover:
        crossover(nbytes_l2)
    else:
        table(nbytes_l2)
    print_tuned_configs()


if __name__ == "__main__":
    main()
