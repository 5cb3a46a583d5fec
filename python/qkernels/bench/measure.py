"""Timing and roofline (shared/DESIGN.md section 6).

- Cold caches: every timed call reads a different copy of the weights, and the copies together
  exceed the last-level cache several times over, so no call finds its weight in cache.
- GPU: the calls over all copies, repeated to at least GRAPH_MIN_CALLS calls, are captured in
  one CUDA graph (no launch overhead) and timed with CUDA events; the time per call is the
  replay time over the number of calls; median of replays. A replay has a fixed cost of its
  own (~11 us on an H100, a graph of one tiny kernel), which one pass over a large weight's 2-7
  copies spread over too few calls: up to ~3 us a call on fp16 14336x4096.
- CPU: each call timed with perf_counter after a warm-up pass; median of calls.
"""

from __future__ import annotations

import itertools
import os
import platform
import statistics
import time
from typing import Callable, Sequence

import torch

CPU_LAST_LEVEL_CACHE_BYTES = 32 << 20    # the Zen 3 CCX L3 of our machines; a safe upper end
COLD_CACHE_FACTOR = 4                    # copies together >= 4x the last-level cache
GRAPH_MIN_CALLS = 40                     # calls a CUDA graph holds (the pass over the copies
GRAPH_MAX_REPLAY_S = 0.05                # repeated), unless a replay would outlast this


def last_level_cache_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return int(getattr(props, "L2_cache_size", 50 << 20))
    return CPU_LAST_LEVEL_CACHE_BYTES


def prepare_device(device_name: str, threads=None, dtype_name=None):
    """(device, activation dtype) of a run: checks that a GPU is visible, sets the CPU thread
    count, and defaults the dtype to the baselines' (fp16 on GPU, fp32 on CPU)."""
    device = torch.device(device_name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is visible")
    if threads:
        torch.set_num_threads(threads)
    if dtype_name:
        return device, getattr(torch, dtype_name)
    return device, torch.float16 if device.type == "cuda" else torch.float32


def load_average():
    """The 1, 5 and 15 minute load averages as text (CPU timings are quoted with it)."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            name = next(l.split(":", 1)[1].strip() for l in cpuinfo if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return name


def copies_for_cold_cache(weight_bytes: int, device: torch.device, max_copies: int = 256) -> int:
    needed = COLD_CACHE_FACTOR * last_level_cache_bytes(device)
    return max(2, min(max_copies, -(-needed // max(weight_bytes, 1))))


def time_calls(calls: Sequence[Callable[[], object]], device: torch.device,
               budget_s: float = 1.0, min_samples: int = 5, max_samples: int = 200,
               warmup_s: float = 0.0) -> float:
    """Median seconds of one call, each call reading its own copy of the weights. The calls
    first run untimed (a warm-up), for at least `warmup_s` seconds."""
    if device.type == "cuda":
        return _time_cuda_graph(calls, budget_s, min_samples, max_samples, warmup_s)
    return _time_cpu(calls, budget_s, min_samples, max_samples, warmup_s)


def _time_cpu(calls, budget_s, min_samples, max_samples, warmup_s) -> float:
    # warm-up: thread pools, lazy init (the copies are already paged in)
    started = time.perf_counter()
    for i in itertools.count():
        calls[i % len(calls)]()
        if i >= 1 and time.perf_counter() - started >= warmup_s:
            break
    samples = []
    started = time.perf_counter()
    while len(samples) < max_samples:
        call = calls[len(samples) % len(calls)]  # cycle: each copy is cold when its turn comes
        t0 = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t0)
        if len(samples) >= min_samples and time.perf_counter() - started > budget_s:
            break
    return statistics.median(samples)


def _time_cuda_graph(calls, budget_s, min_samples, max_samples, warmup_s) -> float:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside the graph (autotuning, lazy init)
        for _ in range(2):
            pass_started = time.perf_counter()
            for call in calls:
                call()
            torch.cuda.synchronize()
            pass_s = time.perf_counter() - pass_started  # an upper bound on the pass's GPU time
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    # Each copy is still cold at its turn: the pass over all copies is repeated whole.
    passes = max(1, min(-(-GRAPH_MIN_CALLS // len(calls)), int(GRAPH_MAX_REPLAY_S / pass_s)))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(passes):
            for call in calls:
                call()
    started = time.perf_counter()
    graph.replay()
    torch.cuda.synchronize()
    while time.perf_counter() - started < warmup_s:
        graph.replay()
        torch.cuda.synchronize()
    samples = []
    started = time.perf_counter()
    while len(samples) < max_samples:
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        graph.replay()
        end.record()
        end.synchronize()
        samples.append(begin.elapsed_time(end) / 1e3 / (passes * len(calls)))
        if len(samples) >= min_samples and time.perf_counter() - started > budget_s:
            break
    return statistics.median(samples)


def measure_roofline(device: torch.device, nbytes: int = 0, matmul_size: int = 0) -> dict:
    """The denominators of '% of roofline': memory bandwidth and dense matmul peak (fp16 on
    GPU, fp32 on CPU) of this device, measured the way the kernels are timed (CUDA graph,
    median after a warm-up).

    Two bandwidth probes over buffers far beyond the last-level cache: a copy (bytes read +
    bytes written) and a read-only sum (bytes read). A weight-only GEMV reads almost all of its
    bytes, so the faster of the two is the ceiling it is held to. On the H100 (1 GiB, CUDA
    graph, median): copy 2437 GB/s with or without 0.5 s of warm-up and with 1 or 4 copies
    per graph, so the copy kernel itself is the limit; the sum reads 3046 GB/s. `nbytes` and `matmul_size`
    override the probe sizes (tests)."""
    if device.type == "cuda":
        dtype, mm, nbytes = torch.float16, matmul_size or 8192, nbytes or 1 << 30
    else:
        dtype, mm, nbytes = torch.float32, matmul_size or 2048, nbytes or 256 << 20
    copy_gbps, read_gbps = _bandwidth_gbps(device, nbytes)
    a = torch.randn(mm, mm, device=device, dtype=dtype)
    b = torch.randn(mm, mm, device=device, dtype=dtype)
    matmul_s = time_calls([lambda: a @ b], device, budget_s=0.5, warmup_s=0.1)
    return {"bandwidth_gbps": max(copy_gbps, read_gbps), "copy_gbps": copy_gbps,
            "read_gbps": read_gbps, "peak_tflops": 2 * mm ** 3 / matmul_s / 1e12,
            "peak_dtype": str(dtype).replace("torch.", "")}


def _bandwidth_gbps(device: torch.device, nbytes: int):
    """(copy GB/s counting bytes read + written, read-only sum GB/s) over `nbytes` buffers."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    total = torch.empty((), dtype=torch.float32, device=device)
    copy_s = time_calls([lambda: dst.copy_(src)] * 4, device, budget_s=0.5, warmup_s=0.3)
    read_s = time_calls([lambda: torch.sum(src, 0, out=total)] * 4, device, budget_s=0.5,
                        warmup_s=0.1)
    return 2 * nbytes / copy_s / 1e9, nbytes / read_s / 1e9
