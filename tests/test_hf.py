"""The transformers route: from_pretrained(quantization_config=QKernelsConfig) quantizes while
loading, save_pretrained / from_pretrained round-trip the packed layers (in a fresh process
too), torch.compile, the memory report and the `qkernels quantize` command. The model is the
tiny Llama of test_model.py (hidden 96, intermediate 200: not multiples of 128), saved in fp32."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from torch import nn

import qkernels as qk

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from qkernels import hf  # noqa: E402  (after the skips: it imports transformers)
from test_model import cosine, logits, sample_ids, tiny_model  # noqa: E402

# (fmt, group_size, least cosine of the logits vs fp32), as in test_model.py.
FORMAT_CASES = [("int8", None, 0.9999), ("int4", 64, 0.98), ("nf4", 64, 0.98)]
LAYERS_PER_BLOCK = 7


@pytest.fixture(scope="module")
def fp32_dir(tmp_path_factory):
    """An untied tiny Llama saved by save_pretrained in fp32, and the model itself."""
    path = tmp_path_factory.mktemp("fp32")
    model = tiny_model(tie=False)
    model.save_pretrained(path)
    return path, model


def load(path, **kwargs):
    return transformers.AutoModelForCausalLM.from_pretrained(path, **kwargs).eval()


@pytest.mark.parametrize("fmt, group_size, least_cosine", FORMAT_CASES)
def test_from_pretrained_quantizes_like_quantize_model(fp32_dir, fmt, group_size, least_cosine):
    path, original = fp32_dir
    config = qk.QKernelsConfig(fmt=fmt, group_size=group_size, modules_to_not_convert=["lm_head"])
    model = load(path, quantization_config=config)
    layers = [m for m in model.modules() if isinstance(m, qk.QuantLinear)]
    assert len(layers) == 2 * LAYERS_PER_BLOCK and {m.fmt for m in layers} == {fmt}
    assert type(model.lm_head) is nn.Linear
    # The same round-to-nearest on the same weights: bit-identical packed tensors.
    expected = qk.quantize_model(tiny_model(tie=False), config)
    for name, tensor in expected.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    ids = sample_ids()
    assert cosine(logits(model, ids), logits(original, ids)) >= least_cosine
    assert model.config.quantization_config.checkpoint["layers"].keys() == {
        name for name, m in model.named_modules() if isinstance(m, qk.QuantLinear)}


def test_loading_never_holds_two_full_precision_weights(fp32_dir):
    """Each weight goes from the checkpoint straight into its packed layer: while a layer is
    quantized, every layer still to come is empty (meta)."""
    path, _ = fp32_dir
    seen = []

    def check(model, name, done, total):
        waiting = [n for n, m in model.named_modules()
                   if type(m) is nn.Linear and n != "lm_head" and not m.weight.is_meta]
        seen.append((done, total, waiting))

    with hf.reporting_quantized_layers(check):
        load(path, quantization_config=qk.QKernelsConfig(modules_to_not_convert=["lm_head"]))
    assert [(done, total) for done, total, _ in seen] == [(i, 14) for i in range(1, 15)]
    assert all(waiting == [] for _, _, waiting in seen)


def test_save_pretrained_round_trip(fp32_dir, tmp_path):
    path, _ = fp32_dir
    config = qk.QKernelsConfig(fmt="int4", group_size=32, module_overrides={
        "*.down_proj": {"fmt": "int8"}, "model.layers.1.*": {"fmt": "nf4", "group_size": 64},
        "model.layers.0.*.v_proj": {"symmetric": True}},
        modules_to_not_convert=["model.layers.0.mlp.up_proj"])
    model = load(path, quantization_config=config)
    ids = sample_ids()
    expected = logits(model, ids)
    model.save_pretrained(tmp_path / "q")

    # One file format: the same tensors and metadata as save_quantized.
    qk.save_quantized(model, tmp_path / "q.safetensors")
    with safe_open(tmp_path / "q" / "model.safetensors", "pt") as saved, \
            safe_open(tmp_path / "q.safetensors", "pt") as reference:
        if hf.WRITES_FILE_METADATA:
            assert saved.metadata()["qkernels"] == reference.metadata()["qkernels"]
        assert sorted(saved.keys()) == sorted(reference.keys())
        assert all(torch.equal(saved.get_tensor(k), reference.get_tensor(k))
                   for k in reference.keys())
    stored = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert stored["quant_method"] == "qkernels" and stored["fmt"] == "int4"
    assert stored["checkpoint"]["format_version"] == qk.serialization.FORMAT_VERSION

    loaded = load(tmp_path / "q")
    assert str(loaded) == str(model)
    assert torch.equal(logits(loaded, ids), expected)
    assert type(loaded.model.layers[0].mlp.up_proj) is nn.Linear
    if not hf.WRITES_FILE_METADATA:
        return
    # load_quantized reads the same file.
    again = qk.load_quantized(loaded.config, tmp_path / "q" / "model.safetensors").eval()
    assert torch.equal(logits(again, ids), expected)


def test_fresh_process_reload_with_no_full_precision_copy(fp32_dir, tmp_path):
    path, _ = fp32_dir
    model = load(path, quantization_config=qk.QKernelsConfig(fmt="nf4", group_size=64))
    model.save_pretrained(tmp_path / "q")
    ids = sample_ids()
    torch.save({"ids": ids, "logits": logits(model, ids)}, tmp_path / "expected.pt")
    script = f"""
import sys, torch
import qkernels as qk
assert "transformers" not in sys.modules, "import qkernels imported transformers"
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained({str(tmp_path / "q")!r}).eval()
expected = torch.load({str(tmp_path / "expected.pt")!r})
with torch.no_grad():
    assert torch.equal(model(expected["ids"], use_cache=False).logits, expected["logits"])
report = qk.memory_report(model)
assert len(report.quantized) == 15 and report.dense_linear == {{}}, report
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def test_tied_head_stays_and_round_trips(tmp_path):
    tiny_model(tie=True).save_pretrained(tmp_path / "fp")
    model = load(tmp_path / "fp", quantization_config=qk.QKernelsConfig(fmt="int4"))
    assert type(model.lm_head) is nn.Linear
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.hf_quantizer.kept == {"lm_head": "tied weight"}
    model.save_pretrained(tmp_path / "q")
    loaded = load(tmp_path / "q")
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    ids = sample_ids()
    assert torch.equal(logits(loaded, ids), logits(model, ids))


def test_bfloat16_load_keeps_float32_scales(fp32_dir, tmp_path):
    path, _ = fp32_dir
    model = load(path, quantization_config=qk.QKernelsConfig(fmt="int4", group_size=64))
    model.save_pretrained(tmp_path / "q")
    bfloat16 = {hf.DTYPE_ARGUMENT: torch.bfloat16}
    if hf.TRANSFORMERS_VERSION < (5, 0):   # 4.x rounds every float tensor it loads
        with pytest.raises(ValueError, match="expected the packed layers' scales in float32"):
            load(tmp_path / "q", **bfloat16)
        return
    loaded = load(tmp_path / "q", **bfloat16)
    assert loaded.model.norm.weight.dtype == torch.bfloat16
    packed = {name: tensor for name, tensor in model.state_dict().items()
              if name.rpartition(".")[2] in ("qweight", "scales", "zeros")}
    assert packed and all(torch.equal(loaded.state_dict()[n], t) for n, t in packed.items())
    ids = sample_ids()
    assert cosine(logits(loaded, ids), logits(model, ids)) > 0.999


def test_compile_fullgraph_on_loaded_model(tmp_path):
    tiny_model(tie=False, layers=1).save_pretrained(tmp_path / "fp")
    load(tmp_path / "fp", quantization_config=qk.QKernelsConfig(
        fmt="int4", group_size=32)).save_pretrained(tmp_path / "q")
    model = load(tmp_path / "q")
    assert model.hf_quantizer.is_compileable
    ids = sample_ids()
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(ids, use_cache=False).logits, logits(model, ids),
                                   rtol=1e-5, atol=1e-5)


def test_memory_report_parts_and_before(fp32_dir):
    path, original = fp32_dir
    model = load(path, quantization_config=qk.QKernelsConfig(
        fmt="int4", group_size=64, modules_to_not_convert=["lm_head"]))
    report = qk.memory_report(model)
    data = report.to_dict()
    assert sum(data["quantized_parts"].values()) == report.quantized_bytes
    assert data["quantized_parts"]["zeros"] == data["quantized_parts"]["scales"] > 0
    assert report.dense_linear.keys() == {"lm_head"}
    assert data["by_type"]["QuantLinear"]["modules"] == 14
    # "before" prices the packed layers as the fp32 nn.Linear they replaced.
    assert report.before_bytes == qk.memory_report(original).total_bytes
    assert report.total_bytes < report.before_bytes
    json.dumps(data)


def test_bad_configs_and_checkpoints_are_rejected(fp32_dir, tmp_path):
    path, _ = fp32_dir
    with pytest.raises(ValueError, match="fmt: expected one of"):
        qk.QKernelsConfig(fmt="int3")
    with pytest.raises(ValueError, match="group_size: expected one of"):
        qk.QKernelsConfig.from_dict({"quant_method": "qkernels", "fmt": "int4", "group_size": 100})
    with pytest.raises(ValueError, match="quant_method: expected 'qkernels'"):
        qk.QKernelsConfig.from_dict({"quant_method": "bitsandbytes"})
    # A bad combination is refused before any weight is read, naming the layer.
    with pytest.raises(ValueError, match="model.layers.0.mlp.up_proj: symmetric"):
        load(path, quantization_config=qk.QKernelsConfig(
            fmt="nf4", module_overrides={"model.layers.0.mlp.up_proj": {"symmetric": True}}))

    load(path, quantization_config=qk.QKernelsConfig()).save_pretrained(tmp_path / "q")
    config_file = tmp_path / "q" / "config.json"
    saved = json.loads(config_file.read_text())
    newer = json.loads(json.dumps(saved))
    newer["quantization_config"]["checkpoint"]["format_version"] += 1
    config_file.write_text(json.dumps(newer))
    with pytest.raises(ValueError, match="format_version 2.*upgrade qkernels"):
        load(tmp_path / "q")
    wrong_shape = json.loads(json.dumps(saved))
    wrong_shape["quantization_config"]["checkpoint"]["layers"][
        "model.layers.0.mlp.up_proj"]["in_features"] = 95
    config_file.write_text(json.dumps(wrong_shape))
    with pytest.raises(ValueError, match=r"model.layers.0.mlp.up_proj.*\(out_features"):
        load(tmp_path / "q")
    with pytest.raises(ValueError, match="device_map: qkernels layers cannot be offloaded"):
        hf.QKernelsHfQuantizer(qk.QKernelsConfig()).validate_environment(
            device_map={"model": "cpu", "lm_head": "disk"})
    no_table = json.loads(json.dumps(saved))
    del no_table["quantization_config"]["checkpoint"]
    config_file.write_text(json.dumps(no_table))
    with pytest.raises(ValueError, match="'checkpoint' entry"):
        load(tmp_path / "q")


def test_cli_quantize(fp32_dir, tmp_path, capsys):
    from qkernels import cli

    path, _ = fp32_dir
    (path / "tokenizer_config.json").write_text("{}")   # non-weight files travel along
    dst = tmp_path / "q"
    assert cli.main(["quantize", str(path), str(dst), "--format", "nf4", "--group-size", "64",
                     "--skip", "lm_head"]) == 0
    err = capsys.readouterr().err
    assert "14 layers quantized" in err and "lm_head (skipped)" in err
    assert (dst / "tokenizer_config.json").exists()
    expected = load(path, quantization_config=qk.QKernelsConfig(
        fmt="nf4", group_size=64, modules_to_not_convert=["lm_head"]))
    ids = sample_ids()
    assert torch.equal(logits(load(dst), ids), logits(expected, ids))

    with pytest.raises(SystemExit, match="a GGUF file cannot be written as a transformers checkpoint yet"):
        cli.main(["quantize", str(tmp_path / "model.gguf"), str(tmp_path / "x")])
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(SystemExit, match="a GGUF file cannot be written as a transformers checkpoint yet"):
        cli.main(["quantize", str(tmp_path / "model.gguf"), str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="src: expected a transformers model directory"):
        cli.main(["quantize", str(tmp_path), str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="dst: expected a new or empty directory"):
        cli.main(["quantize", str(path), str(dst)])
    with pytest.raises(SystemExit, match="group_size: expected one of"):
        cli.main(["quantize", str(path), str(tmp_path / "y"), "--group-size", "100"])


@pytest.mark.cuda
@pytest.mark.parametrize("quantize_on", ["cpu", "cuda"])
def test_cuda_device_map_round_trip(fp32_dir, tmp_path, quantize_on):
    """Quantized on one device, saved, loaded on the other: the same packed tensors, outputs
    equal up to the backends' rounding."""
    path, _ = fp32_dir
    config = qk.QKernelsConfig(fmt="int4", group_size=64)
    model = load(path, quantization_config=config, device_map=quantize_on)
    model.save_pretrained(tmp_path / "q")
    load_on = "cpu" if quantize_on == "cuda" else "cuda"
    loaded = load(tmp_path / "q", device_map=load_on)
    assert loaded.model.layers[0].mlp.up_proj.qweight.device.type == load_on
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name].cpu(), tensor.cpu()), name
    ids = sample_ids()
    torch.testing.assert_close(logits(loaded, ids.to(load_on)).cpu(),
                               logits(model, ids.to(quantize_on)).cpu(), rtol=1e-3, atol=1e-3)
