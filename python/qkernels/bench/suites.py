"""Shape suites: (N, K) = (out_features, in_features) of real LLM linear layers, and batch sizes."""

SUITES = {
    # Finishes in under 3 minutes on a 2-core CPU; a first look on a GPU.
    "quick": {
        "cpu": {"shapes": [(4096, 4096)], "batches": [1, 16, 256]},
        "cuda": {"shapes": [(4096, 4096), (14336, 4096)], "batches": [1, 16, 256, 4096]},
    },
    # Llama-3-8B: q/o (4096x4096), fused qkv (6144x4096), gate/up (14336x4096), fused gate+up
    # (28672x4096), down (4096x14336).
    "llama3-8b": {
        "shapes": [(4096, 4096), (6144, 4096), (14336, 4096), (28672, 4096), (4096, 14336)],
        "batches": [1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096],
    },
    # Llama-3-70B: q/o (8192x8192), fused gate+up (57344x8192 split as 28672x8192), down.
    "llama3-70b": {
        "shapes": [(8192, 8192), (10240, 8192), (28672, 8192), (8192, 28672)],
        "batches": [1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096],
    },
    # SmolLM2-135M: hidden 576 (not a multiple of 128), intermediate 1536.
    "smollm": {
        "shapes": [(576, 576), (192, 576), (1536, 576), (576, 1536)],
        "batches": [1, 4, 16, 64, 256],
    },
}

# The shapes and batches each issue's goals are stated on.
SUITES["cpu-goals"] = {
    "shapes": [(4096, 4096), (14336, 4096), (4096, 14336)],
    "batches": [1, 4, 16, 64, 256],
}
SUITES["gpu-goals"] = {
    "shapes": [(4096, 4096), (14336, 4096), (4096, 14336), (28672, 8192)],
    "batches": [1, 8, 16, 64, 256, 1024, 4096],
}


def suite_for(name: str, device_type: str) -> dict:
    if name not in SUITES:
        raise ValueError(f"--suite: expected one of {sorted(SUITES)}, got {name!r}")
    suite = SUITES[name]
    return suite[device_type] if device_type in suite else suite
