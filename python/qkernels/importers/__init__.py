"""Quantized checkpoints of other tools into the canonical formats, without dequantizing:
GGUF Q8_0 / Q4_0 / Q4_1 (gguf.py) and GPTQ / AWQ int32-packed 4-bit layers (gptq.py)."""

from .gguf import from_gguf_blocks, from_gguf_tensor, load_gguf
from .gptq import from_awq, from_gptq, replace_packed_linears

__all__ = ["load_gguf", "from_gguf_blocks", "from_gguf_tensor", "from_gptq", "from_awq",
           "replace_packed_linears"]
