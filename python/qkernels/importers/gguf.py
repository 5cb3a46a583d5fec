"""GGUF (llama.cpp) weights into the canonical formats, block for block, with no dequantization.

The three block types read here hold 32 consecutive weights of a row (along K) each:

=====  ==================================  ==================  =================================
type   bytes per block                      value of weight i   canonical form (group_size 32)
=====  ==================================  ==================  =================================
Q8_0   d fp16, q int8 x 32                  d * q               int8: scales = d
Q4_0   d fp16, 16 bytes of nibbles          d * (q - 8)         int4 symmetric: scales = d
Q4_1   d fp16, m fp16, 16 bytes of nibbles  d * q + m           int4: scales = d, zeros = -m / d
=====  ==================================  ==================  =================================

fp16 -> fp32 is exact, so Q8_0 and Q4_0 import bit-exactly. Q4_1's zero point -m / d is
rounded to fp32 (relative error <= 2^-24), which moves a dequantized weight by at most a few
fp32 ulps of its block's range; no representation of the form scale * (q - zero) holds it
exactly. A Q4_1 block with d = 0 (all weights equal to m) is stored exactly as scale m, zero -1
and codes 0.

Nibble order differs: a GGUF 4-bit block stores weight i in the low nibble of byte i and
weight i + 16 in the high nibble (i < 16); the canonical byte j holds k = 2j (low) and 2j + 1
(high). The codes are unpacked and repacked.

``load_gguf`` builds a transformers model from a GGUF file's config and puts these tensors into
QuantLinear layers; every other tensor is dequantized by the ``gguf`` package, as transformers
does. Needs the optional packages gguf, transformers and accelerate.
"""

from __future__ import annotations

import os
import warnings
from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from .. import formats
from ..formats import QuantizedWeight
from ..nn import QuantLinear

BLOCK_SIZE = 32
# Bytes of one block of 32 weights, per GGML type name.
BLOCK_BYTES = {"Q8_0": 2 + 32, "Q4_0": 2 + 16, "Q4_1": 2 + 2 + 16}
IMPORTED_TYPES = tuple(BLOCK_BYTES)
GGUF_Q4_0_ZERO = 8


def from_gguf_blocks(data: Union[np.ndarray, torch.Tensor], ggml_type: str,
                     shape: tuple) -> QuantizedWeight:
    """One GGUF tensor's raw blocks -> QuantizedWeight with group_size 32.

    data: uint8 [N, K / 32 * bytes per block] (the layout of gguf's ReaderTensor.data for these
    types), ggml_type: "Q8_0", "Q4_0" or "Q4_1", shape: (N, K) = (out_features, in_features).
    """
    if ggml_type not in BLOCK_BYTES:
        raise ValueError(f"ggml_type: expected one of {IMPORTED_TYPES}, got {ggml_type!r}")
    if len(shape) != 2:
        raise ValueError(f"shape: expected (N, K), got {tuple(shape)}")
    n, k = int(shape[0]), int(shape[1])
    if n < 1 or k < 1 or k % BLOCK_SIZE:
        raise ValueError(f"shape: expected N >= 1 and K a positive multiple of {BLOCK_SIZE}, "
                         f"got {(n, k)}")
    # A copy: gguf's arrays are read-only views of the memory-mapped file.
    blocks = torch.from_numpy(np.array(data)) if isinstance(data, np.ndarray) else data
    row_bytes = k // BLOCK_SIZE * BLOCK_BYTES[ggml_type]
    if blocks.dtype != torch.uint8 or tuple(blocks.shape) != (n, row_bytes):
        raise ValueError(f"data: expected uint8 of shape {(n, row_bytes)} for {ggml_type} "
                         f"{(n, k)}, got {blocks.dtype} of shape {tuple(blocks.shape)}")
    blocks = blocks.reshape(n, k // BLOCK_SIZE, BLOCK_BYTES[ggml_type])
    d = _fp16_field(blocks, 0)

    if ggml_type == "Q8_0":
        codes = blocks[..., 2:].contiguous().view(torch.int8).reshape(n, k)
        if bool((codes == -128).any()):
            raise ValueError("data: Q8_0 code -128 found; the int8 format holds codes in "
                             f"[-{formats.INT8_MAX_CODE}, {formats.INT8_MAX_CODE}]")
        return QuantizedWeight("int8", (n, k), BLOCK_SIZE, formats.pack_codes(codes, "int8"),
                               scales=d)

    nibbles = blocks[..., 2:] if ggml_type == "Q4_0" else blocks[..., 4:]
    # GGUF order within a block: the 16 low nibbles are weights 0-15, the high ones 16-31.
    codes = torch.cat((nibbles & 0xF, nibbles >> 4), dim=-1)   # [N, K / 32, 32]
    if ggml_type == "Q4_0":
        return QuantizedWeight("int4", (n, k), BLOCK_SIZE,
                               formats.pack_codes(codes.reshape(n, k), "int4"), scales=d)

    m = _fp16_field(blocks, 2)
    constant = d == 0   # every weight of the block is m: scale m, zero -1, codes 0
    codes = torch.where(constant[..., None], torch.zeros_like(codes), codes)
    scales = torch.where(constant, torch.where(m == 0, torch.ones_like(m), m), d)
    zeros = torch.where(constant, torch.where(m == 0, torch.zeros_like(m), -torch.ones_like(m)),
                        -m / torch.where(constant, torch.ones_like(d), d))
    return QuantizedWeight("int4", (n, k), BLOCK_SIZE,
                           formats.pack_codes(codes.reshape(n, k), "int4"),
                           scales=scales.contiguous(), zeros=zeros.contiguous())


def _fp16_field(blocks: torch.Tensor, offset: int) -> torch.Tensor:
    """The little-endian fp16 at byte ``offset`` of each block, as fp32 [N, blocks per row]."""
    return blocks[..., offset:offset + 2].contiguous().view(torch.float16).squeeze(-1).float()


def from_gguf_tensor(tensor) -> QuantizedWeight:
    """A gguf.ReaderTensor of type Q8_0, Q4_0 or Q4_1 holding a 2-D weight -> QuantizedWeight."""
    ggml_type = tensor.tensor_type.name
    if ggml_type not in BLOCK_BYTES:
        raise ValueError(f"tensor: expected a GGML type in {IMPORTED_TYPES}, got {ggml_type} "
                         f"for {tensor.name!r}")
    if len(tensor.shape) != 2:
        raise ValueError(f"tensor: expected 2 dims, got shape {tuple(tensor.shape)} for "
                         f"{tensor.name!r}")
    k, n = (int(size) for size in tensor.shape)   # GGUF lists dims innermost first
    return from_gguf_blocks(tensor.data, ggml_type, (n, k))


def permute_rows(qw: QuantizedWeight, rows: torch.Tensor) -> QuantizedWeight:
    """qw with its output rows reordered (row i of the result = row rows[i] of qw): lossless,
    because every canonical tensor is indexed by row first."""
    return QuantizedWeight(qw.fmt, qw.shape, qw.group_size,
                           **{name: t[rows].contiguous() for name, t in qw.tensors().items()})


# --- a transformers model from a GGUF file ------------------------------------------------------

def load_gguf(path: Union[str, os.PathLike], dtype: torch.dtype = torch.float32,
              device: Optional[Union[str, torch.device]] = None,
              backend: Optional[str] = None) -> nn.Module:
    """A transformers causal LM built from a GGUF file, with every linear weight stored as
    Q8_0, Q4_0 or Q4_1 imported into a QuantLinear (int8 or int4, group 32) without being
    dequantized. Every other tensor (embeddings, norms, biases, linear weights of other GGML
    types) is dequantized by gguf and loaded in ``dtype``, as transformers would.

    The model is built from the config transformers reads out of the file, and GGUF tensor
    names map to the model's as transformers maps them, including its per-architecture
    reordering of rows (llama's q/k projections), which is applied to the packed rows.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: expected a GGUF file, got {path!r}")
    try:
        import gguf
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM
        from transformers import modeling_gguf_pytorch_utils as hf_gguf
    except ImportError as error:
        raise ImportError(f"load_gguf needs the packages gguf, transformers and accelerate "
                          f"({error})") from error
    directory, file_name = os.path.split(os.path.abspath(path))
    config = AutoConfig.from_pretrained(directory, gguf_file=file_name)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)

    reader = gguf.GGUFReader(path)
    architecture = hf_gguf.read_field(reader, "general.architecture")[0]
    parsed = hf_gguf.load_gguf_checkpoint(path, return_tensors=False)
    processor = hf_gguf.TENSOR_PROCESSORS.get(architecture, hf_gguf.TensorProcessor)(
        config=parsed["config"])
    name_map = hf_gguf.get_gguf_hf_weights_map(model, processor)

    quantized, dense = {}, {}
    for tensor in reader.tensors:
        if tensor.name not in name_map:
            continue
        hf_name = name_map[tensor.name]
        module_name, _, attribute = hf_name.rpartition(".")
        target = model.get_submodule(module_name) if module_name else model
        if (type(target) is nn.Linear and attribute == "weight"
                and tensor.tensor_type.name in IMPORTED_TYPES):
            quantized[module_name] = _import_linear(tensor, processor, name_map)
            continue
        if type(target) is nn.Linear and attribute == "weight":
            warnings.warn(f"load_gguf: {hf_name} is {tensor.tensor_type.name}, which qkernels "
                          f"does not import; it stays a dequantized nn.Linear", stacklevel=2)
        values = gguf.dequantize(tensor.data, tensor.tensor_type)
        result = processor.process(weights=values, name=tensor.name, tensor_key_mapping=name_map,
                                   parsed_parameters=parsed)
        if result.name in name_map:
            dense[name_map[result.name]] = torch.from_numpy(np.copy(result.weights)).to(dtype)

    for module_name, qw in quantized.items():
        bias = dense.pop(f"{module_name}.bias", None)
        linear = model.get_submodule(module_name)
        if (bias is None) != (linear.bias is None):
            raise ValueError(f"path: {module_name} has {'no ' if bias is None else ''}bias in "
                             f"the file, but the model's layer "
                             f"{'has' if linear.bias is not None else 'has none'}")
        parent_name, _, child_name = module_name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child_name, QuantLinear.from_quantized(qw, bias, backend=backend))

    model.load_state_dict(dense, strict=False, assign=True)
    model.tie_weights()
    still_empty = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if still_empty:
        raise ValueError(f"path: the file holds no tensor for {still_empty[:8]}"
                         f"{'...' if len(still_empty) > 8 else ''}")
    return model.to(device) if device is not None else model


def _import_linear(tensor, processor, name_map) -> QuantizedWeight:
    """A GGUF linear weight -> QuantizedWeight, with transformers' processing of that tensor
    applied to the packed rows. The processor is asked what it does by running it on the row
    indices ([N, 1]); anything other than a reordering of rows cannot be done on packed data."""
    qw = from_gguf_tensor(tensor)
    n = qw.shape[0]
    row_ids = np.arange(n, dtype=np.float64).reshape(n, 1)
    result = processor.process(weights=row_ids, name=tensor.name, tensor_key_mapping=name_map,
                               parsed_parameters={})
    if result.name != tensor.name or result.weights.shape != (n, 1):
        raise ValueError(f"tensor: transformers renames or reshapes {tensor.name!r} on load; "
                         f"qkernels imports only tensors it keeps whole")
    rows = torch.from_numpy(np.rint(result.weights[:, 0]).astype(np.int64))
    if not torch.equal(torch.sort(rows).values, torch.arange(n)):
        raise ValueError(f"tensor: transformers transforms the values of {tensor.name!r} on "
                         f"load, not just the order of its rows; qkernels cannot do that on "
                         f"packed weights")
    if torch.equal(rows, torch.arange(n)):
        return qw
    return permute_rows(qw, rows)
