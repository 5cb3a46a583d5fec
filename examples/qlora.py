"""QLoRA in miniature: train low-rank adapters on top of frozen quantized layers.

A small MLP is quantized with qkernels; a "fine-tuned" teacher differs from its fp32 original
by a low-rank change of every weight. LoRA adapters (A, B matrices beside each QuantLinear) learn
that change through the quantized layers: the packed weights stay frozen, gradients flow to the
inputs of each layer (dx = dy @ dequant(W)) and into the adapters.

    python examples/qlora.py [--fmt nf4] [--steps 60] [--rank 8] [--device cuda] [--dtype bfloat16]

The frozen model runs in --dtype (default fp32 on CPU, bf16 on CUDA); the adapters and the
optimizer stay in fp32, as in QLoRA.
"""

import argparse
import copy
import math

import torch
from torch import nn

import qkernels as qk

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

class LoRALinear(nn.Module):
    """y = base(x) + (alpha / rank) * x @ A.T @ B.T, with base frozen and B starting at zero,
    so training starts from the quantized model's own outputs."""

    def __init__(self, base: nn.Module, rank: int = 8, alpha: float = 16.0):
        super().__init__()
        self.base = base
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # nn.Linear's default init
        self.scaling = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = (x.to(self.lora_a.dtype) @ self.lora_a.T @ self.lora_b.T) * self.scaling
        return self.base(x) + update.to(x.dtype)


def add_lora(model: nn.Module, rank: int, alpha: float) -> nn.Module:
    """Wrap every QuantLinear of ``model`` in a LoRALinear, in place; freeze everything else."""
    model.requires_grad_(False)
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, qk.QuantLinear)]
    for name, layer in targets:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child,
                LoRALinear(layer, rank, alpha))
    return model


def mlp(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, 2 * width), nn.SiLU(), nn.Linear(2 * width, 2 * width),
                         nn.SiLU(), nn.Linear(2 * width, width))


def low_rank_update(model: nn.Module, rank: int, size: float) -> nn.Module:
    """The teacher: each weight moved by a random rank-``rank`` matrix of relative size ``size``."""
    teacher = copy.deepcopy(model)
    with torch.no_grad():
        for layer in teacher.modules():
            if isinstance(layer, nn.Linear):
                n, k = layer.weight.shape
                delta = torch.randn(n, rank) @ torch.randn(rank, k)
                layer.weight += size * delta * layer.weight.norm() / delta.norm()
    return teacher


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fmt", default="nf4", choices=qk.FORMATS)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, choices=DTYPES,
                        help="dtype of the frozen model (default: float32 on CPU, bfloat16 on CUDA)")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype or ("float32" if device.type == "cpu" else "bfloat16")]

    base = mlp(args.width)
    teacher = low_rank_update(base, rank=4, size=0.3).requires_grad_(False)
    quantized = qk.quantize_model(copy.deepcopy(base), args.fmt, group_size=args.group_size,
                                  skip=()).to(device, dtype)
    student = add_lora(quantized, args.rank, alpha=2.0 * args.rank).to(device)
    trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)
    frozen = sum(t.numel() for t in (*student.parameters(), *student.buffers())
                 if not t.requires_grad)
    print(f"{args.fmt} g{args.group_size} on {device} ({dtype}): {trainable} trainable adapter "
          f"parameters, {frozen} frozen elements (packed weights, scales, biases); "
          f"threads {torch.get_num_threads()}")

    optimizer = torch.optim.Adam([p for p in student.parameters() if p.requires_grad],
                                 lr=args.lr)
    fixed_x = torch.randn(256, args.width)   # a held-out batch to report on
    teacher, base = teacher.to(device), base.to(device)
    fixed_x = fixed_x.to(device)
    with torch.no_grad():
        fixed_target = teacher(fixed_x)
        floor = nn.functional.mse_loss(base(fixed_x), fixed_target).item()
    print(f"reference: fp32 base without adapters vs teacher: {floor:.5f}")
    print(" step   train loss   held-out loss")
    for step in range(args.steps + 1):
        x = torch.randn(64, args.width, device=device)
        with torch.no_grad():
            target = teacher(x)
        loss = nn.functional.mse_loss(student(x.to(dtype)).float(), target)
        if step % 5 == 0:
            with torch.no_grad():
                held_out = nn.functional.mse_loss(student(fixed_x.to(dtype)).float(),
                                                  fixed_target).item()
            print(f"{step:5d}   {loss.item():10.5f}   {held_out:13.5f}")
        if step == args.steps:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(isinstance(m.base, qk.QuantLinear) and not m.base.qweight.requires_grad
               for m in student.modules() if isinstance(m, LoRALinear))


if __name__ == "__main__":
    main()
