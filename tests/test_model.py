"""quantize_model, save_quantized / load_quantized, torch.compile, CUDA graphs and backward on a
tiny transformers Llama whose sizes are not multiples of 128 (hidden 96, intermediate 200)."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

import qkernels as qk

transformers = pytest.importorskip("transformers")

# (fmt, group_size, least cosine of the logits vs fp32). Random-init weights are close to
# uniform, the worst case for 4-bit grids; a trained model loses less.
FORMAT_CASES = [("int8", None, 0.9999), ("int4", 32, 0.99), ("int4", 128, 0.98),
                ("nf4", 64, 0.98)]
VOCAB = 300

needs_cuda_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def tiny_config(tie=True, layers=2):
    return transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=96, intermediate_size=200, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=24, max_position_embeddings=128,
        tie_word_embeddings=tie)


def tiny_model(tie=True, layers=2, seed=0):
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(tiny_config(tie, layers)).eval()


def sample_ids(batch=2, length=13, seed=1):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def logits(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def cosine(a, b):
    return float(F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def quantized_names(model):
    return {name for name, m in model.named_modules() if isinstance(m, qk.QuantLinear)}


def linear_names(model):
    return {name for name, m in model.named_modules() if type(m) is nn.Linear}


@pytest.mark.parametrize("fmt, group_size, least_cosine", FORMAT_CASES)
def test_quantized_logits_close_to_fp32_and_generate_works(fmt, group_size, least_cosine):
    model = tiny_model()
    ids = sample_ids()
    expected = logits(model, ids)
    assert qk.quantize_model(model, fmt, group_size=group_size) is model
    layers = [m for m in model.modules() if isinstance(m, qk.QuantLinear)]
    assert len(layers) == 2 * 7 and {m.fmt for m in layers} == {fmt}
    assert cosine(logits(model, ids), expected) >= least_cosine

    out = model.generate(ids[:1, :5], max_new_tokens=6, do_sample=False,
                         attention_mask=torch.ones(1, 5, dtype=torch.long))
    assert out.shape == (1, 11) and torch.equal(out[:, :5], ids[:1, :5])
    # Greedy decoding with the KV cache picks what a full forward of the prefix picks.
    assert torch.equal(out[0, 5:], logits(model, out[:, :-1])[0, 4:].argmax(-1))


def test_tied_embeddings_left_alone_untied_head_follows_skip():
    tied = qk.quantize_model(tiny_model(tie=True), "int4", skip=())
    assert type(tied.lm_head) is nn.Linear
    assert tied.lm_head.weight is tied.model.embed_tokens.weight

    untied = tiny_model(tie=False)
    assert type(qk.quantize_model(copy.deepcopy(untied), "int4").lm_head) is nn.Linear
    assert isinstance(qk.quantize_model(untied, "int4", skip=()).lm_head, qk.QuantLinear)


def test_quantize_tied_gives_the_head_its_own_packed_copy():
    model = tiny_model(tie=True)
    embedding = model.model.embed_tokens.weight
    before = embedding.detach().clone()
    ids = sample_ids()
    expected = logits(model, ids)
    qk.quantize_model(model, "int8", skip=(), quantize_tied=True)
    assert isinstance(model.lm_head, qk.QuantLinear)
    assert model.model.embed_tokens.weight is embedding and torch.equal(embedding, before)
    assert cosine(logits(model, ids), expected) >= 0.9999
    # The default skip still names lm_head.
    kept = qk.quantize_model(tiny_model(tie=True), "int8", quantize_tied=True)
    assert type(kept.lm_head) is nn.Linear


def test_skip_patterns():
    model = qk.quantize_model(tiny_model(), "nf4", skip=("*.mlp.*", "o_proj",
                                                         "model.layers.1.self_attn.q_proj"))
    assert linear_names(model) == {
        "lm_head", "model.layers.1.self_attn.q_proj",
        *(f"model.layers.{i}.{part}" for i in range(2) for part in
          ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "self_attn.o_proj"))}
    assert quantized_names(model) == {"model.layers.0.self_attn.q_proj",
                                      *(f"model.layers.{i}.self_attn.{p}" for i in range(2)
                                        for p in ("k_proj", "v_proj"))}


def test_module_overrides_from_config():
    config = qk.QKernelsConfig(
        fmt="int4", group_size=32, modules_to_not_convert=["lm_head"],
        module_overrides={"*.down_proj": {"fmt": "int8"},
                          "model.layers.0.*": {"fmt": "nf4", "group_size": 64},
                          "model.layers.1.*.v_proj": {"symmetric": True}})
    config = qk.QKernelsConfig.from_dict(json.loads(config.to_json_string()))
    model = qk.quantize_model(tiny_model(), config)
    settings = {name: (m.fmt, m.group_size, m.symmetric) for name, m in model.named_modules()
                if isinstance(m, qk.QuantLinear)}
    # Overrides apply in order, later ones over earlier ones; group sizes clamp to K = 96.
    assert settings["model.layers.1.mlp.down_proj"] == ("int8", 32, False)
    assert settings["model.layers.0.mlp.down_proj"] == ("nf4", 64, False)
    assert settings["model.layers.0.self_attn.q_proj"] == ("nf4", 64, False)
    assert settings["model.layers.1.self_attn.v_proj"] == ("int4", 32, True)
    assert settings["model.layers.1.mlp.up_proj"] == ("int4", 32, False)

    clash = qk.QKernelsConfig(fmt="int4", module_overrides={"model.layers.0.*": {"fmt": "nf4"},
                                                            "v_proj": {"symmetric": True}})
    with pytest.raises(ValueError, match="model.layers.0.self_attn.v_proj: symmetric"):
        qk.quantize_model(tiny_model(), clash)


def test_summary_only_when_asked(capsys):
    model = tiny_model()
    dense_bytes = qk.memory_report(model).dense_linear_bytes
    qk.quantize_model(model, "int4")   # not a terminal, 14 layers: silent
    assert capsys.readouterr().err == ""
    report = qk.memory_report(model)
    assert len(report.quantized) == 14 and report.dense_linear == {}
    assert 0 < report.quantized_bytes < dense_bytes / 4

    qk.quantize_model(tiny_model(), "int4", verbose=True)
    err = capsys.readouterr().err
    assert "quantized 14 linear layers" in err and "lm_head (tied weight)" in err


@pytest.mark.parametrize("fmt, group_size", [("int8", None), ("int4", 32), ("nf4", 64)])
def test_save_load_round_trip_identical_logits_and_bytes(fmt, group_size, tmp_path):
    model = qk.quantize_model(tiny_model(), qk.QKernelsConfig(
        fmt=fmt, group_size=group_size, module_overrides={"v_proj": {"fmt": "int4",
                                                                     "symmetric": True}}))
    ids = sample_ids()
    expected = logits(model, ids)
    qk.save_quantized(model, tmp_path / "a.safetensors")
    qk.save_quantized(copy.deepcopy(model), tmp_path / "b.safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()

    loaded = qk.load_quantized(tiny_model(seed=5), tmp_path / "a.safetensors")
    assert torch.equal(logits(loaded, ids), expected)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert str(loaded) == str(model)
    qk.save_quantized(loaded, tmp_path / "c.safetensors")
    assert (tmp_path / "c.safetensors").read_bytes() == (tmp_path / "a.safetensors").read_bytes()


def test_load_from_transformers_config_builds_empty_model(tmp_path):
    pytest.importorskip("accelerate")   # init_empty_weights builds the model without memory
    model = qk.quantize_model(tiny_model(), "nf4", group_size=32)
    qk.save_quantized(model, tmp_path / "model.safetensors")
    loaded = qk.load_quantized(tiny_config(), tmp_path / "model.safetensors").eval()
    ids = sample_ids()
    assert torch.equal(logits(loaded, ids), logits(model, ids))
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert not any(t.is_meta for t in (*loaded.parameters(), *loaded.buffers()))


def test_load_rejects_newer_version_foreign_files_and_other_models(tmp_path):
    model = qk.quantize_model(tiny_model(), "int4")
    qk.save_quantized(model, tmp_path / "model.safetensors")
    header = qk.serialization.read_header(tmp_path / "model.safetensors")
    tensors = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}

    newer = dict(header, format_version=qk.serialization.FORMAT_VERSION + 1)
    save_file(tensors, tmp_path / "newer.safetensors", metadata={"qkernels": json.dumps(newer)})
    with pytest.raises(ValueError, match="format_version 2.*upgrade qkernels"):
        qk.load_quantized(tiny_model(), tmp_path / "newer.safetensors")

    save_file(tensors, tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="no 'qkernels' metadata"):
        qk.load_quantized(tiny_model(), tmp_path / "plain.safetensors")

    with pytest.raises(ValueError, match=r"\(out_features, in_features\)"):
        qk.load_quantized(transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=200, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)),
            tmp_path / "model.safetensors")
    qk.save_quantized(qk.quantize_model(tiny_model(layers=3), "int4"),
                      tmp_path / "deeper.safetensors")
    with pytest.raises(ValueError, match=r"expected a module 'model.layers.2\."):
        qk.load_quantized(tiny_model(layers=2), tmp_path / "deeper.safetensors")


def test_compile_fullgraph_matches_eager():
    model = qk.quantize_model(tiny_model(layers=1), "int4", group_size=32)
    ids = sample_ids()
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(ids, use_cache=False).logits, logits(model, ids),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt", ["int8", "int4", "nf4"])
def test_backward_input_gradient_matches_fp64_dequantized_model(fmt):
    model = qk.quantize_model(tiny_model(), fmt, group_size=32)
    # The reference: the same model in fp64 with each QuantLinear's dequantized weight.
    reference = copy.deepcopy(model)
    for name, layer in list(reference.named_modules()):
        if isinstance(layer, qk.QuantLinear):
            dense = nn.Linear(layer.in_features, layer.out_features, bias=False)
            dense.weight = nn.Parameter(qk.dequantize(layer.quantized_weight))
            parent, _, child = name.rpartition(".")
            setattr(reference.get_submodule(parent), child, dense)
    reference.double()

    ids = sample_ids()
    embeds = model.model.embed_tokens(ids).detach().requires_grad_(True)
    embeds_ref = embeds.detach().double().requires_grad_(True)
    dy = torch.randn(*ids.shape, VOCAB, generator=torch.Generator().manual_seed(7))
    model(inputs_embeds=embeds, use_cache=False).logits.backward(dy)
    reference(inputs_embeds=embeds_ref, use_cache=False).logits.backward(dy.double())
    assert cosine(embeds.grad, embeds_ref.grad) > 0.99999
    torch.testing.assert_close(embeds.grad.double(), embeds_ref.grad, rtol=1e-3, atol=1e-4)
    # Frozen weights: nothing of a QuantLinear is trainable; the rest of the model still is.
    quantized = [m for m in model.modules() if isinstance(m, qk.QuantLinear)]
    assert not any(p.requires_grad for m in quantized for p in m.parameters())
    assert model.model.norm.weight.grad is not None


def capture(fn, static_input):
    """A CUDA graph of fn(static_input), warmed up on a side stream as capture requires."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn(static_input)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_output = fn(static_input)
    return graph, static_output


@pytest.mark.cuda
@needs_cuda_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 7, 300])   # GEMV and GEMM kernel shapes
def test_cuda_graph_capture_of_quantized_layers(rows, dtype):
    torch.manual_seed(0)
    stack = nn.Sequential(nn.Linear(576, 200), nn.SiLU(), nn.Linear(200, 577), nn.SiLU(),
                          nn.Linear(577, 96))
    stack = qk.quantize_model(stack, qk.QKernelsConfig(
        fmt="int4", group_size=128, module_overrides={"2": {"fmt": "nf4", "group_size": 64},
                                                      "4": {"fmt": "int8"}})).to("cuda", dtype)
    static_x = torch.randn(rows, 576, device="cuda", dtype=dtype)
    with torch.no_grad():
        graph, static_y = capture(stack, static_x)
        fresh = torch.randn(rows, 576, device="cuda", dtype=dtype)
        static_x.copy_(fresh)
        graph.replay()
        torch.testing.assert_close(static_y, stack(fresh))


@pytest.mark.cuda
@needs_cuda_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fmt, group_size", [("int8", None), ("int4", 128), ("nf4", 64)])
def test_cuda_graph_capture_replays_forward(fmt, group_size, dtype):
    model = qk.quantize_model(tiny_model(), fmt, group_size=group_size).to("cuda", dtype)
    static_ids = sample_ids().cuda()
    expected = logits(model, static_ids)
    with torch.no_grad():
        graph, static_logits = capture(lambda ids: model(ids, use_cache=False).logits,
                                       static_ids)
        fresh = sample_ids(seed=9).cuda()
        static_ids.copy_(fresh)
        graph.replay()
    torch.testing.assert_close(static_logits, logits(model, fresh))
    assert not torch.equal(static_logits, expected)


@pytest.mark.cuda
@needs_cuda_gpu
def test_cuda_saved_file_identical_to_cpu(tmp_path):
    model = qk.quantize_model(tiny_model(), "nf4")
    qk.save_quantized(model, tmp_path / "cpu.safetensors")
    qk.save_quantized(copy.deepcopy(model).cuda(), tmp_path / "cuda.safetensors")
    assert (tmp_path / "cuda.safetensors").read_bytes() == (tmp_path / "cpu.safetensors").read_bytes()
    loaded = qk.load_quantized(tiny_model(), tmp_path / "cuda.safetensors", device="cuda")
    assert loaded.model.layers[0].mlp.up_proj.qweight.is_cuda
    torch.testing.assert_close(logits(loaded, sample_ids().cuda()).cpu(),
                               logits(model, sample_ids()), rtol=1e-3, atol=1e-3)
