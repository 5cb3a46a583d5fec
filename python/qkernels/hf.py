"""transformers integration: ``from_pretrained(path, quantization_config=qk.QKernelsConfig(...))``
quantizes while loading, ``save_pretrained`` writes the canonical tensors with the same
"qkernels" metadata as qk.save_quantized, and ``from_pretrained`` of that directory rebuilds the
packed layers empty and fills them from the file, with no full-precision copy.

Importing this module imports transformers and registers the config and the quantizer under
"qkernels"; ``import qkernels`` does that only once transformers itself is imported (see
_transformers_hook.py), so importing qkernels alone stays fast.

Hooks used, per transformers version (the quantizer implements all of them):
- 4.50 - 4.5x: check_quantized_param / create_quantized_param get each full-precision weight of
  a layer to convert as it is read from the checkpoint.
- 4.57: the same, with param_needs_quantization replacing check_quantized_param;
  get_state_dict_and_metadata adds the metadata to the saved safetensors.
- 5.x: param_needs_quantization marks the weights, get_quantize_ops returns the op that gets
  each one (WeightConverter pipeline).
In each, one weight is in full precision at a time: the peak is the packed model plus one layer.

A checkpoint written by save_pretrained carries the header of qk.serialization (format
version, quantized layers with their shapes, tied weights) twice: in the safetensors metadata
(where the transformers version can write it: 4.57 and newer) and in config.json as
``quantization_config["checkpoint"]``, which is what loading reads, since transformers 4.x
shows a quantizer the model before the checkpoint files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from typing import Callable, Optional

import torch
from torch import nn
from transformers.quantizers.auto import register_quantization_config, register_quantizer
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from . import formats, serialization
from ._transformers_hook import transformers_version
from .nn import QKernelsConfig, QuantLinear, plan_quantization

TRANSFORMERS_VERSION = transformers_version()
# Whether save_pretrained asks the quantizer for safetensors metadata (4.57 and newer); before,
# the header is in config.json only, and qk.load_quantized cannot read the file alone.
WRITES_FILE_METADATA = hasattr(HfQuantizer, "get_state_dict_and_metadata")
# from_pretrained's name for the dtype of the model (torch_dtype until 4.56).
DTYPE_ARGUMENT = "dtype" if TRANSFORMERS_VERSION >= (4, 56) else "torch_dtype"

# Called as callback(model, name, done, total) after each layer from_pretrained quantizes.
_layer_callbacks = []


@contextlib.contextmanager
def reporting_quantized_layers(callback: Callable[[nn.Module, str, int, int], None]):
    """Within the block, from_pretrained calls ``callback(model, name, done, total)`` after it
    quantizes each layer of ``model`` (the `qkernels quantize` progress bar)."""
    _layer_callbacks.append(callback)
    try:
        yield
    finally:
        _layer_callbacks.remove(callback)


@register_quantization_config(QKernelsConfig.quant_method)
@dataclasses.dataclass
class HfQKernelsConfig(QKernelsConfig, QuantizationConfigMixin):
    """QKernelsConfig as transformers stores it in config.json: the settings plus, once a model
    is quantized, ``checkpoint``, the qkernels header describing its quantized layers."""

    checkpoint: Optional[dict] = None

    @classmethod
    def from_config(cls, config: QKernelsConfig) -> "HfQKernelsConfig":
        return config if isinstance(config, cls) else cls.from_dict(config.to_dict())

    @classmethod
    def from_dict(cls, data: dict, return_unused_kwargs: bool = False, **kwargs):
        # transformers passes loading kwargs; a qkernels config takes none of them.
        config = super().from_dict(data)
        return (config, kwargs) if return_unused_kwargs else config

    def to_json_string(self, use_diff: bool = True) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def to_diff_dict(self) -> dict:
        return self.to_dict()


@register_quantizer(QKernelsConfig.quant_method)
class QKernelsHfQuantizer(HfQuantizer):
    """Converts the nn.Linear layers that the config selects into QuantLinear while
    from_pretrained loads them (or, for a qkernels checkpoint, before it fills them)."""

    requires_calibration = False
    requires_parameters_quantization = True   # transformers 4.x: route weights through us

    def __init__(self, quantization_config, **kwargs):
        super().__init__(HfQKernelsConfig.from_config(quantization_config), **kwargs)
        self.targets = {}    # name -> settings of each nn.Linear to quantize while loading
        self.kept = {}       # name -> why that nn.Linear stays in full precision
        self.quantized_count = 0

    def validate_environment(self, *args, **kwargs):
        device_map = kwargs.get("device_map")
        if isinstance(device_map, dict) and "disk" in device_map.values():
            raise ValueError("device_map: qkernels layers cannot be offloaded to disk; expected "
                             "devices only (cpu, cuda)")

    # -- before the weights: shape the model --------------------------------------------------

    def _process_model_before_weight_loading(self, model, keep_in_fp32_modules=None, **kwargs):
        if self.pre_quantized:
            self._build_empty_quantized_layers(model)
            return model
        config = self.quantization_config
        keep = set(keep_in_fp32_modules or getattr(model, "_keep_in_fp32_modules", None) or ())
        targets, self.kept = plan_quantization(model, config, tied=_declared_tied_linears(model))
        for name, _, settings in targets:
            if any(name == k or name.startswith(k + ".") or name.endswith("." + k) for k in keep):
                self.kept[name] = "kept in fp32 by the model"
            else:
                self.targets[name] = settings
        return model

    def _build_empty_quantized_layers(self, model):
        header = self.quantization_config.checkpoint
        if not header:
            raise ValueError("quantization_config: a qkernels checkpoint needs the 'checkpoint' "
                             "entry that save_pretrained writes into config.json; got none")
        serialization.check_format_version(header.get("format_version"),
                                           "config.json's quantization_config")
        for name, layer in header["layers"].items():
            module = _get_linear(model, name)
            shape = (module.out_features, module.in_features)
            if shape != (layer["out_features"], layer["in_features"]):
                raise ValueError(f"checkpoint: expected {name!r} of (out_features, in_features) "
                                 f"= {shape} as in the model, got "
                                 f"{(layer['out_features'], layer['in_features'])}")
            layer_dtype = module.weight.dtype if module.weight.is_floating_point() else None
            # A stored group size equal to K was clamped (or per channel): -1 asks for that.
            group_size = -1 if layer["group_size"] == layer["in_features"] else layer["group_size"]
            replacement = QuantLinear(layer["in_features"], layer["out_features"],
                                      bias=layer["bias"], fmt=layer["fmt"], group_size=group_size,
                                      symmetric=layer["symmetric"], device="meta",
                                      dtype=layer_dtype, backend=self.quantization_config.backend,
                                      activations=layer.get("activations"))
            model.set_submodule(name, replacement)

    # -- while loading: one full-precision weight at a time ----------------------------------

    def param_needs_quantization(self, model, param_name: str, **kwargs) -> bool:
        module_name, _, tensor_name = param_name.rpartition(".")
        return (not self.pre_quantized and tensor_name == "weight"
                and module_name in self.targets)

    def check_quantized_param(self, model, param_value, param_name, state_dict, **kwargs) -> bool:
        # transformers 4.50 - 4.56 ask this; later 4.x forward it to param_needs_quantization.
        return self.param_needs_quantization(model, param_name)

    def create_quantized_param(self, model, param_value, param_name, target_device, *args,
                               **kwargs):
        self.quantize_layer(model, param_name.rpartition(".")[0], param_value, target_device)

    def get_quantize_ops(self):   # transformers 5.x
        return _QuantizeOnLoad(self)

    def quantize_layer(self, model, name: str, weight: torch.Tensor, device) -> None:
        """Replace the nn.Linear ``name`` by a QuantLinear of ``weight`` on ``device``."""
        linear = model.get_submodule(name)
        settings = self.targets[name]
        qw = formats.quantize(weight.to(device), settings["fmt"], settings["group_size"],
                              symmetric=settings["symmetric"])
        # A bias not read yet stays on the meta device: transformers fills it in later.
        replacement = QuantLinear.from_quantized(qw, linear.bias,
                                                 backend=self.quantization_config.backend,
                                                 activations=settings["activations"])
        replacement._is_hf_initialized = True
        model.set_submodule(name, replacement)
        self.quantized_count += 1
        for callback in _layer_callbacks:
            callback(model, name, self.quantized_count, len(self.targets))

    # -- after loading --------------------------------------------------------------------------

    def _process_model_after_weight_loading(self, model, **kwargs):
        left = [name for name in self.targets
                if not isinstance(model.get_submodule(name), QuantLinear)]
        if left:
            raise ValueError(f"checkpoint: expected a weight for each layer to quantize, got none "
                             f"for {left[:8]}")
        rounded = [f"{name}.{key}" for name, module in model.named_modules()
                   if isinstance(module, QuantLinear)
                   for key in module._canonical_names[1:]
                   if getattr(module, key).dtype != torch.float32]
        if rounded:
            # transformers 4.x casts every float tensor of a quantized checkpoint to the
            # requested dtype; scales rounded to 16 bits would give silently different outputs.
            raise ValueError(f"dtype: expected the packed layers' scales in float32, got "
                             f"{rounded[:4]} rounded to {model.get_buffer(rounded[0]).dtype} by "
                             f"this transformers version; load with dtype=torch.float32, then "
                             f"model.to(dtype) (which keeps the scales in float32)")
        self.quantization_config.checkpoint = serialization.header(model)
        model.config.quantization_config = self.quantization_config
        return model

    def get_state_dict_and_metadata(self, model, safe_serialization: bool = True):
        # Refreshed at each save: config.json is written after this call.
        header = serialization.header(model)
        self.quantization_config.checkpoint = header
        return None, {serialization.METADATA_KEY: json.dumps(header, sort_keys=True)}

    def is_serializable(self, safe_serialization=None) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        # The packed weights are frozen, gradients reach the inputs: adapters (LoRA) train.
        return True

    @property
    def is_compileable(self) -> bool:
        return True


if TRANSFORMERS_VERSION >= (5, 0):
    from transformers.core_model_loading import ConversionOps

    class _QuantizeOnLoad(ConversionOps):
        """The conversion step transformers 5.x runs on each weight that
        param_needs_quantization marked: quantize it into its layer, hand nothing back."""

        def __init__(self, quantizer: QKernelsHfQuantizer):
            self.quantizer = quantizer

        def convert(self, input_dict, model=None, full_layer_name=None, missing_keys=None,
                    **kwargs):
            (value,) = input_dict.values()
            weight = value[0] if isinstance(value, list) else value
            self.quantizer.quantize_layer(model, full_layer_name.rpartition(".")[0], weight,
                                          weight.device)
            if missing_keys is not None:
                missing_keys.discard(full_layer_name)
            return {}


def _declared_tied_linears(model) -> set:
    """Names of the modules whose weight transformers ties to another (the output embedding of
    a model with tie_word_embeddings), known before the tie is made on the empty model."""
    declared = getattr(model, "all_tied_weights_keys", None)   # transformers 5.x
    if declared:
        names = set(declared) | set(declared.values())
        return {name.rpartition(".")[0] for name in names}
    text_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") \
        else model.config
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is None or not getattr(text_config, "tie_word_embeddings", False):
        return set()
    return {name for name, module in model.named_modules() if module is output}


def _get_linear(model, name: str) -> nn.Module:
    try:
        module = model.get_submodule(name)
    except AttributeError as error:
        raise ValueError(f"checkpoint: expected the model to have a module {name!r} (quantized "
                         f"in the checkpoint), got none ({error})") from error
    if not isinstance(module, nn.Linear):
        raise ValueError(f"checkpoint: expected an nn.Linear at {name!r} (quantized in the "
                         f"checkpoint), got {type(module).__name__}")
    return module
