"""Shape suites: (N, K) = (out_features, in_features) of real LLM linear layers, and batch sizes.

A suite is a list of named shapes and the batch sizes (M, rows of x) to time them at. Where the
CPU needs fewer batch sizes, the suite says so per device: a 2-core CPU takes ~5 s for one fp32
F.linear of 14336x4096 at M=1024, so the GPU's upper batch sizes would make a run last hours.
`custom` takes its shapes and batches from the command line or a file (`parse_custom`).
"""

from __future__ import annotations

from pathlib import Path

# shared/DESIGN.md section 6: decode (1 ... 16), mid (32 ... 256) and prefill (1024, 4096).
GPU_BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096]
CPU_BATCHES = [1, 2, 4, 8, 16, 32, 64, 256]

SUITES = {
    # Finishes in under 3 minutes on a 2-core CPU; a first look on a GPU.
    "quick": {
        "cpu": {"shapes": {"4096x4096": (4096, 4096)}, "batches": [1, 16, 256]},
        "cuda": {"shapes": {"4096x4096": (4096, 4096), "14336x4096": (14336, 4096)},
                 "batches": [1, 16, 256, 4096]},
    },
    # Llama-3-8B (hidden 4096, intermediate 14336, 32 query and 8 key/value heads of 128):
    # q/o alone, the fused qkv projection (4096 + 2 x 1024), gate or up alone, gate+up fused
    # into one matmul, and down.
    "llama3-8b": {
        "shapes": {"q_proj/o_proj": (4096, 4096), "qkv_proj, fused": (6144, 4096),
                   "gate_proj/up_proj": (14336, 4096), "gate_up_proj, fused": (28672, 4096),
                   "down_proj": (4096, 14336)},
        "batches": {"cuda": GPU_BATCHES, "cpu": CPU_BATCHES},
    },
    # Llama-3-70B (hidden 8192, intermediate 28672, 64 query and 8 key/value heads of 128).
    "llama3-70b": {
        "shapes": {"q_proj/o_proj": (8192, 8192), "qkv_proj, fused": (10240, 8192),
                   "gate_proj/up_proj": (28672, 8192), "gate_up_proj, fused": (57344, 8192),
                   "down_proj": (8192, 28672)},
        "batches": {"cuda": GPU_BATCHES, "cpu": [1, 4, 16, 64]},
    },
    # SmolLM2-135M (hidden 576, intermediate 1536, 9 query and 3 key/value heads of 64):
    # K = 576 is not a multiple of 128, so int4 g128 has a ragged last group.
    "smollm": {
        "shapes": {"q_proj/o_proj": (576, 576), "k_proj/v_proj": (192, 576),
                   "qkv_proj, fused": (960, 576), "gate_proj/up_proj": (1536, 576),
                   "gate_up_proj, fused": (3072, 576), "down_proj": (576, 1536)},
        "batches": {"cuda": GPU_BATCHES, "cpu": CPU_BATCHES},
    },
    # The shapes and batches each issue's goals are stated on.
    "cpu-goals": {
        "shapes": {"4096x4096": (4096, 4096), "14336x4096": (14336, 4096),
                   "4096x14336": (4096, 14336)},
        "batches": [1, 4, 16, 64, 256],
    },
    "gpu-goals": {
        "shapes": {"4096x4096": (4096, 4096), "14336x4096": (14336, 4096),
                   "4096x14336": (4096, 14336), "28672x8192": (28672, 8192)},
        "batches": [1, 8, 16, 64, 256, 1024, 4096],
    },
    # Shapes and batches from --shapes / --batch or --custom-file.
    "custom": {"shapes": {}, "batches": []},
}


def suite_for(name: str, device_type: str) -> dict:
    """{"shapes": {label: (N, K)}, "batches": [M, ...]} of suite `name` on `device_type`."""
    if name not in SUITES:
        raise ValueError(f"--suite: expected one of {sorted(SUITES)}, got {name!r}")
    suite = SUITES[name].get(device_type, SUITES[name])
    batches = suite["batches"]
    if isinstance(batches, dict):
        batches = batches[device_type]
    return {"shapes": dict(suite["shapes"]), "batches": list(batches)}


def parse_shapes(text: str, argument: str = "--shapes") -> dict:
    """'NxK[,NxK...]' (or one per line, '#' starting a comment) -> {"NxK": (N, K)}."""
    shapes = {}
    for item in text.replace("\n", ",").split(","):
        item = item.split("#", 1)[0].strip()
        if not item:
            continue
        parts = item.lower().split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"{argument}: expected NxK with positive integers "
                             f"(out x in features), got {item!r}")
        n, k = (int(p) for p in parts)
        shapes[f"{n}x{k}"] = (n, k)
    if not shapes:
        raise ValueError(f"{argument}: expected at least one NxK shape, got {text!r}")
    return shapes


def parse_batches(text: str, argument: str = "--batch") -> list:
    """'M[,M...]' -> [M, ...], each a positive integer."""
    items = [item.strip() for item in text.replace("\n", ",").split(",") if item.strip()]
    if not items or not all(item.isdigit() and int(item) > 0 for item in items):
        raise ValueError(f"{argument}: expected positive integers M[,M...], got {text!r}")
    return [int(item) for item in items]


def parse_custom_file(path: Path) -> dict:
    """A custom suite file: lines 'shapes: NxK, NxK ...' and 'batches: M, M, ...'
    ('#' starts a comment) -> {"shapes": ..., "batches": ...}."""
    fields = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        key, sep, value = line.partition(":")
        key = key.strip().lower()
        if not sep or key not in ("shapes", "batches"):
            raise ValueError(f"--custom-file: {path}:{number}: expected 'shapes: NxK, ...' or "
                             f"'batches: M, ...', got {line!r}")
        fields[key] = fields.get(key, "") + "," + value
    missing = [key for key in ("shapes", "batches") if key not in fields]
    if missing:
        raise ValueError(f"--custom-file: {path}: expected a line for each of "
                         f"'shapes:' and 'batches:', missing {missing}")
    return {"shapes": parse_shapes(fields["shapes"], f"--custom-file {path}: shapes"),
            "batches": parse_batches(fields["batches"], f"--custom-file {path}: batches")}
