"""The transformers route end to end on a small Llama whose sizes are not multiples of 128
(hidden 576, intermediate 1000, 4 layers, random weights), saved in fp32 with save_pretrained:

    from_pretrained(fp32_dir, quantization_config=qk.QKernelsConfig(fmt, group_size))
    -> logits cosine vs fp32, quantized layer count
    -> save_pretrained(q_dir): size on disk vs the fp32 checkpoint
    -> from_pretrained(q_dir) in a fresh Python process: logits identical to the quantized model

    python examples/transformers_route.py [--formats int8,int4-g64,nf4-g64] [--dir DIR]

Needs transformers and accelerate.
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

import qkernels as qk

FORMATS = {"int8": ("int8", None), "int4-g64": ("int4", 64), "nf4-g64": ("nf4", 64),
           "int4-g128": ("int4", 128)}
RELOAD = """
import sys, torch
import qkernels
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
ids = torch.load(sys.argv[2])
with torch.no_grad():
    torch.save(model(ids, use_cache=False).logits, sys.argv[3])
"""


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("*.safetensors"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", default="int8,int4-g64,nf4-g64")
    parser.add_argument("--dir", type=Path, help="work directory (default: a temporary one)")
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    work = args.dir or Path(tempfile.mkdtemp(prefix="qkernels-route-"))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1000, hidden_size=576, intermediate_size=1000,
                         num_hidden_layers=4, num_attention_heads=9, num_key_value_heads=3,
                         max_position_embeddings=256, tie_word_embeddings=False)
    original = LlamaForCausalLM(config).eval()
    original.save_pretrained(work / "fp32")
    ids = torch.randint(0, config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(1))
    torch.save(ids, work / "ids.pt")
    with torch.no_grad():
        reference = original(ids, use_cache=False).logits

    table = Table(title=f"small Llama (hidden 576, intermediate 1000), fp32 checkpoint "
                        f"{directory_bytes(work / 'fp32') / 2**20:.2f} MiB")
    for column in ("format", "quantized layers", "cosine vs fp32", "checkpoint MiB",
                   "vs fp32", "fresh-process reload"):
        table.add_column(column, justify="left" if column == "format" else "right")
    for name in args.formats.split(","):
        fmt, group_size = FORMATS[name]
        model = AutoModelForCausalLM.from_pretrained(
            work / "fp32", quantization_config=qk.QKernelsConfig(fmt=fmt, group_size=group_size))
        with torch.no_grad():
            quantized = model.eval()(ids, use_cache=False).logits
        layers = sum(isinstance(m, qk.QuantLinear) for m in model.modules())
        cosine = F.cosine_similarity(quantized.flatten().double(), reference.flatten().double(),
                                     dim=0).item()
        model.save_pretrained(work / name)
        subprocess.run([sys.executable, "-c", RELOAD, str(work / name), str(work / "ids.pt"),
                        str(work / f"{name}.pt")], check=True, capture_output=True)
        identical = torch.equal(torch.load(work / f"{name}.pt"), quantized)
        size = directory_bytes(work / name)
        table.add_row(name, str(layers), f"{cosine:.6f}", f"{size / 2**20:.2f}",
                      f"{size / directory_bytes(work / 'fp32'):.3f}",
                      "identical" if identical else "DIFFERENT")
    Console().print(table)


if __name__ == "__main__":
    main()
