"""Save and load quantized models: one safetensors file holding the model's state_dict (the
canonical tensors of each QuantLinear plus every other parameter and persistent buffer) and,
in its metadata under "qkernels", a JSON description of the quantized layers:

    {"format_version": 1,
     "layers": {"model.layers.0.mlp.up_proj": {"fmt": "int4", "group_size": 128,
                "symmetric": false, "in_features": 576, "out_features": 1536, "bias": false,
                "activations": null}, ...},
     "tied": {"lm_head.weight": "model.embed_tokens.weight"}}

The file is a pure function of the model's tensors: they are written from the CPU, contiguous,
under sorted names, so a model saved from a GPU or a CPU gives the same bytes. Tied weights are
stored once, under the first name that holds them.
"""

from __future__ import annotations

import json
import os
from typing import Optional, Union

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from . import formats
from .formats import QuantizedWeight
from .nn import QuantLinear

FORMAT_VERSION = 1
METADATA_KEY = "qkernels"


def save_quantized(model: nn.Module, path: Union[str, os.PathLike]) -> None:
    """Write ``model`` (quantized by quantize_model or built of QuantLinear layers) to ``path``."""
    head = header(model)
    tensors, seen_storages = {}, set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if name in head["tied"]:   # stored once, under the first name that holds it
            continue
        if tensor.is_meta:
            raise ValueError(f"model: {name} is on the meta device; expected materialized tensors")
        cpu = tensor.detach().to("cpu").contiguous()
        # safetensors refuses tensors sharing storage (views of one buffer): store copies.
        if cpu.untyped_storage().data_ptr() in seen_storages:
            cpu = cpu.clone()
        seen_storages.add(cpu.untyped_storage().data_ptr())
        tensors[name] = cpu
    save_file(dict(sorted(tensors.items())), os.fspath(path),
              metadata={METADATA_KEY: json.dumps(head, sort_keys=True)})


def header(model: nn.Module) -> dict:
    """The "qkernels" metadata of ``model``'s file: format version, quantized layers (name ->
    what rebuilds that QuantLinear empty) and tied weights (alias -> the first name holding it)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    layers = {name: {"fmt": module.fmt, "group_size": module.group_size,
                     "symmetric": module.symmetric, "in_features": module.in_features,
                     "out_features": module.out_features, "bias": module.bias is not None,
                     "activations": module.activations}
              for name, module in model.named_modules() if isinstance(module, QuantLinear)}
    tied, first_name = {}, {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in first_name:
            tied[name] = first_name[id(tensor)]
        else:
            first_name[id(tensor)] = name
    return {"format_version": FORMAT_VERSION, "layers": layers, "tied": tied}


def check_format_version(version, source: str) -> None:
    """Raise if ``version`` (from ``source``) is not one this qkernels reads."""
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{source} has format_version {version!r}; this qkernels reads versions "
                         f"<= {FORMAT_VERSION}: upgrade qkernels to load it")


def read_header(path: Union[str, os.PathLike]) -> dict:
    """The "qkernels" metadata of a file written by save_quantized, format version checked."""
    with safe_open(os.fspath(path), framework="pt") as file:
        metadata = file.metadata() or {}
    if METADATA_KEY not in metadata:
        raise ValueError(f"path: {os.fspath(path)!r} has no {METADATA_KEY!r} metadata; expected a "
                         f"file written by qkernels.save_quantized")
    header = json.loads(metadata[METADATA_KEY])
    check_format_version(header.get("format_version"), f"path: {os.fspath(path)!r}")
    return header


def load_quantized(model_or_config, path: Union[str, os.PathLike],
                   device: Optional[Union[str, torch.device]] = None) -> nn.Module:
    """Load a file written by save_quantized into a model and return the model.

    ``model_or_config``: the nn.Module the file was saved from, rebuilt with full-precision or
    empty (meta) weights, e.g. under ``accelerate.init_empty_weights()`` (non-persistent buffers
    such as rotary tables must be real); or a transformers config, from which
    AutoModelForCausalLM builds that module with empty weights. The quantized layers become
    QuantLinear, every tensor takes its dtype from the file, and all of them go to ``device``
    (default: the device of the model's parameters, or the CPU for an empty model).
    """
    header = read_header(path)
    model = model_or_config if isinstance(model_or_config, nn.Module) else _empty_model(
        model_or_config)
    device = torch.device(device) if device is not None else _model_device(model)

    with safe_open(os.fspath(path), framework="pt", device=str(device)) as file:
        stored = {name: file.get_tensor(name) for name in file.keys()}
    for name, layer in header["layers"].items():
        _replace_with_quantized(model, name, layer, stored)
    # Every tensor, the quantized layers' included, goes through load_state_dict: one check of
    # the file's names against the model's.
    missing, unexpected = model.load_state_dict(stored, strict=False, assign=True)
    # assign=True put new Parameter objects in place: tie each alias of the file to its source.
    tied = header.get("tied", {})
    for alias, source in tied.items():
        module_name, _, attr = alias.rpartition(".")
        setattr(model.get_submodule(module_name), attr, model.get_parameter(source))
    missing = [n for n in missing if n not in tied]
    if missing or unexpected:
        raise ValueError(f"path: {os.fspath(path)!r} does not match the model: missing "
                         f"{missing[:8]}{'...' if len(missing) > 8 else ''}, unexpected "
                         f"{unexpected[:8]}{'...' if len(unexpected) > 8 else ''}")
    still_empty = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if still_empty:
        raise ValueError(f"model: {still_empty[:8]} are still on the meta device after loading; "
                         f"expected them in the file or built real (non-persistent buffers)")
    return model.to(device)


def _replace_with_quantized(model: nn.Module, name: str, layer: dict, stored: dict) -> None:
    try:
        module = model.get_submodule(name)
    except AttributeError as error:
        raise ValueError(f"model: expected a module {name!r} (quantized in the file), got none "
                         f"({error})") from error
    if not isinstance(module, (nn.Linear, QuantLinear)):
        raise ValueError(f"model: expected an nn.Linear at {name!r} (quantized in the file), got "
                         f"{type(module).__name__}")
    shape = (module.out_features, module.in_features)
    if shape != (layer["out_features"], layer["in_features"]):
        raise ValueError(f"model: expected {name!r} of (out_features, in_features) = "
                         f"{(layer['out_features'], layer['in_features'])} as in the file, got "
                         f"{shape}")
    canonical = {key: stored[f"{name}.{key}"] for key in formats.CANONICAL_NAMES
                 if f"{name}.{key}" in stored}
    qw = QuantizedWeight(layer["fmt"], shape, layer["group_size"], **canonical)
    bias = stored[f"{name}.bias"] if layer["bias"] else None
    backend = module.backend if isinstance(module, QuantLinear) else None
    # Files written before int8 activations existed have no "activations": weight-only.
    replacement = QuantLinear.from_quantized(qw, bias, backend=backend,
                                             input_perm=stored.get(f"{name}.input_perm"),
                                             activations=layer.get("activations"))
    model.set_submodule(name, replacement)


def _model_device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        if not tensor.is_meta:
            return tensor.device
    return torch.device("cpu")


def _empty_model(config) -> nn.Module:
    try:
        from accelerate import init_empty_weights
        from transformers import AutoModelForCausalLM, PretrainedConfig
    except ImportError as error:
        raise TypeError(f"model_or_config: expected an nn.Module, or a transformers config with "
                        f"transformers and accelerate installed ({error})") from error
    if not isinstance(config, PretrainedConfig):
        raise TypeError(f"model_or_config: expected an nn.Module or a transformers "
                        f"PretrainedConfig, got {type(config).__name__}")
    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config)
