"""qkernels: the command line.

    qkernels quantize SRC DST --format int4 --group-size 128 --skip lm_head

quantize: load the transformers model directory SRC layer by layer into packed qkernels layers
(transformers' from_pretrained with a QKernelsConfig: one layer in full precision at a time),
write it to DST with save_pretrained (plus SRC's tokenizer and other non-weight files), and
print the memory report. DST loads with AutoModelForCausalLM.from_pretrained(DST) after
`import qkernels`. Needs transformers (>= 4.50) and accelerate.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

from . import formats
from .nn import QKernelsConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Files of SRC that save_pretrained writes itself (or that hold the full-precision weights).
WRITTEN_BY_SAVE = ("config.json", "generation_config.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".index.json")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="qkernels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    quantize = commands.add_parser("quantize", help="quantize a transformers model directory")
    quantize.add_argument("src", type=Path, help="transformers model directory (full precision)")
    quantize.add_argument("dst", type=Path, help="directory to write the quantized model to")
    quantize.add_argument("--format", dest="fmt", default="int4", choices=list(formats.FORMATS))
    quantize.add_argument("--group-size", type=int, default=None,
                          help="group size along K, -1 for per channel (default: the format's)")
    quantize.add_argument("--symmetric", action="store_true", help="int4 with zeros fixed at 8")
    quantize.add_argument("--skip", action="append", default=None, metavar="PATTERN",
                          help="module name pattern left in full precision (repeatable); "
                               "tied weights always stay")
    quantize.add_argument("--dtype", choices=list(DTYPES), default="float32",
                          help="dtype of the layers left in full precision (default float32)")
    quantize.add_argument("--device", default="cpu",
                          help="where to quantize (cpu, cuda); the file is the same either way")
    return parser.parse_args(argv)


def quantize_command(args) -> int:
    from rich.console import Console
    from rich.progress import Progress

    console = Console(stderr=True)
    if args.src.suffix == ".gguf":
        raise SystemExit(f"src: a GGUF file cannot be written as a transformers checkpoint yet; "
                         f"load it with qk.load_gguf({str(args.src)!r}) instead, or pass a "
                         f"transformers model directory")
    if not (args.src / "config.json").is_file():
        raise SystemExit(f"src: expected a transformers model directory (with config.json), "
                         f"got {str(args.src)!r}")
    if args.dst.exists() and any(args.dst.iterdir()):
        raise SystemExit(f"dst: expected a new or empty directory, got {str(args.dst)!r}")
    try:
        import accelerate  # noqa: F401  (transformers needs it to load onto a device_map)
        import transformers
    except ImportError as error:
        raise SystemExit(f"qkernels quantize needs transformers and accelerate ({error})") \
            from None
    try:
        config = QKernelsConfig(fmt=args.fmt, group_size=args.group_size,
                                symmetric=args.symmetric, modules_to_not_convert=args.skip)
    except (TypeError, ValueError) as error:
        raise SystemExit(f"qkernels quantize: {error}") from None

    from . import hf
    from .memory import memory_report

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("quantizing", total=None)

        def advance(model, name, done, total):
            progress.update(task, completed=done, total=total, description=f"quantizing {name}")

        with hf.reporting_quantized_layers(advance):
            model = transformers.AutoModelForCausalLM.from_pretrained(
                args.src, quantization_config=config, device_map=args.device,
                **{hf.DTYPE_ARGUMENT: DTYPES[args.dtype]})
    model.save_pretrained(args.dst)
    for path in sorted(args.src.iterdir()):
        if (path.is_file() and path.name not in WRITTEN_BY_SAVE
                and not path.name.endswith(WEIGHT_SUFFIXES)
                and not (args.dst / path.name).exists()):
            shutil.copy2(path, args.dst / path.name)

    report = memory_report(model)
    console.print(report.table(f"{args.src.name} -> {args.dst} ({args.fmt})"))
    kept = model.hf_quantizer.kept
    if kept:
        console.print("left in full precision: " +
                      ", ".join(f"{name} ({why})" for name, why in kept.items()))
    written = sum(p.stat().st_size for p in args.dst.glob("*.safetensors"))
    console.print(f"wrote {args.dst}: {model.hf_quantizer.quantized_count} layers quantized, "
                  f"{written / 2**20:.2f} MiB of safetensors")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    return {"quantize": quantize_command}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
