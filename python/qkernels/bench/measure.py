"""Timing and roofline (shared/DESIGN.md section 6).

- Cold caches: every timed call reads a different copy of the weights, and the copies together
  exceed the last-level cache several times over, so no call finds its weight in cache.
- GPU: the calls over all copies are captured in one CUDA graph (no launch overhead) and timed
  with CUDA events; the time per call is the replay time over the number of calls; median of
  replays.
- CPU: each call timed with perf_counter after a warm-up pass; median of calls.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence

import torch

CPU_LAST_LEVEL_CACHE_BYTES = 32 << 20    # the Zen 3 CCX L3 of our machines; a safe upper end
COLD_CACHE_FACTOR = 4                    # copies together >= 4x the last-level cache


def last_level_cache_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return int(getattr(props, "L2_cache_size", 50 << 20))
    return CPU_LAST_LEVEL_CACHE_BYTES


def copies_for_cold_cache(weight_bytes: int, device: torch.device, max_copies: int = 64) -> int:
    needed = COLD_CACHE_FACTOR * last_level_cache_bytes(device)
    return max(2, min(max_copies, -(-needed // max(weight_bytes, 1))))


def time_calls(calls: Sequence[Callable[[], object]], device: torch.device,
               budget_s: float = 1.0, min_samples: int = 5, max_samples: int = 200) -> float:
    """Median seconds of one call, each call reading its own copy of the weights."""
    if device.type == "cuda":
        return _time_cuda_graph(calls, budget_s, min_samples, max_samples)
    return _time_cpu(calls, budget_s, min_samples, max_samples)


def _time_cpu(calls, budget_s, min_samples, max_samples) -> float:
    for call in calls[:2]:  # warm-up: thread pools, lazy init (the copies are already paged in)
        call()
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


def _time_cuda_graph(calls, budget_s, min_samples, max_samples) -> float:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside the graph (autotuning, lazy init)
        for _ in range(2):
            for call in calls:
                call()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
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
        samples.append(begin.elapsed_time(end) / 1e3 / len(calls))
        if len(samples) >= min_samples and time.perf_counter() - started > budget_s:
            break
    return statistics.median(samples)


def measure_roofline(device: torch.device) -> dict:
    """Measured copy bandwidth (bytes read + written per second) and dense matmul peak
    (fp16 on GPU, fp32 on CPU) of this device, the denominators of '% of roofline'."""
    if device.type == "cuda":
        size, dtype, mm = 1 << 30, torch.float16, 8192
    else:
        size, dtype, mm = 256 << 20, torch.float32, 2048
    src = torch.empty(size // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    copy_s = time_calls([lambda: dst.copy_(src)], device, budget_s=0.5)
    a = torch.randn(mm, mm, device=device, dtype=dtype)
    b = torch.randn(mm, mm, device=device, dtype=dtype)
    matmul_s = time_calls([lambda: a @ b], device, budget_s=0.5)
    return {"bandwidth_gbps": 2 * size / copy_s / 1e9,
            "peak_tflops": 2 * mm ** 3 / matmul_s / 1e12,
            "peak_dtype": str(dtype).replace("torch.", "")}
