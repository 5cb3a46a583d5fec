"""qkernels: INT8 / INT4 / NF4 weights for LLM linear layers, multiplied by dequantize-fused
kernels (CUDA, Triton, AVX2/NEON CPU) behind real torch ops and drop-in nn.Linear layers.

    import qkernels as qk
    qw = qk.quantize(w, "int4", group_size=128)
    y = qk.matmul(x, qw)                       # x @ dequantize(qw).T
    qk.quantize_model(model, "nf4", group_size=64)
    qk.save_quantized(model, "model.safetensors"); qk.load_quantized(empty_model, "model.safetensors")
    model = qk.load_gguf("model.Q4_1.gguf")    # GGUF Q8_0 / Q4_0 / Q4_1 weights, not dequantized
"""

from .formats import FORMATS, QuantizedWeight, dequantize, quantize
from .importers import load_gguf
from .memory import MemoryReport, memory_report
from .nn import QKernelsConfig, QuantLinear, quantize_model
from .ops import available_backends, matmul
from .serialization import load_quantized, save_quantized
from . import _transformers_hook

# QKernelsConfig becomes a transformers quantization_config once transformers is imported.
_transformers_hook.install()

__version__ = "0.1.0"

__all__ = [
    "FORMATS", "QuantizedWeight", "quantize", "dequantize", "matmul", "available_backends",
    "QuantLinear", "quantize_model", "QKernelsConfig", "save_quantized", "load_quantized",
    "memory_report", "MemoryReport", "load_gguf", "__version__",
]
