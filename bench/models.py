"""CPU throughput of the demo's model: forward+backward clips/s, GFLOPs, seconds per epoch.

    .venv/bin/python bench/models.py [--seconds 3] [--repeats 3] [--no-compile] [--threads N] [--models NAME ...]

Measures ``dg_p3d_tiny`` (the demo's model) and ``r2plus1d_18`` (torchvision) on
batches of 8 clips of 8x32² and 16x32², eager and with ``channels_last_3d`` memory
format and ``torch.compile``, then the wall time of one training epoch of the demo
(240 clips, batch 16, SGD) for the eager tiny model. Threads: torch's default.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch
from torch import nn

from opplan.models import build_model, count_gflops, count_params

NUM_CLASSES = 10
SIZE = 32


def _step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer | None) -> None:
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    if opt is not None:
        opt.step()
    model.zero_grad(set_to_none=True)


def clips_per_second(model: nn.Module, x: torch.Tensor, *, seconds: float, repeats: int, warmup: int = 2) -> float:
    """Forward+backward throughput on one fixed batch (N, 3, T, H, W): the best of ``repeats``
    runs of at least ``seconds`` each (the best, because other processes only ever slow us down)."""
    y = torch.arange(x.shape[0]) % NUM_CLASSES
    model.train()
    for _ in range(warmup):
        _step(model, x, y, None)
    best = 0.0
    for _ in range(repeats):
        steps, start = 0, time.perf_counter()
        while steps < 2 or time.perf_counter() - start < seconds:
            _step(model, x, y, None)
            steps += 1
        best = max(best, steps * x.shape[0] / (time.perf_counter() - start))
    return best


def epoch_seconds(model: nn.Module, clip_length: int, *, repeats: int, clips: int = 240, batch: int = 16) -> float:
    """Seconds for one SGD epoch over ``clips`` synthetic clips (model only, no data loading);
    the best of ``repeats`` epochs."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    batches = [torch.randn(batch, 3, clip_length, SIZE, SIZE) for _ in range(clips // batch)]
    y = torch.arange(batch) % NUM_CLASSES
    model.train()
    _step(model, batches[0], y, opt)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for x in batches:
            _step(model, x, y, opt)
        best = min(best, time.perf_counter() - start)
    return best


def variants(compile_too: bool) -> dict[str, Callable[[nn.Module, torch.Tensor], tuple[nn.Module, torch.Tensor]]]:
    def eager(m: nn.Module, x: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
        return m, x

    def channels_last(m: nn.Module, x: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
        fmt = torch.channels_last_3d
        return m.to(memory_format=fmt), x.contiguous(memory_format=fmt)

    out = {"eager": eager, "channels_last_3d": channels_last}
    if compile_too:
        out["compile"] = lambda m, x: (torch.compile(m), x)
        out["compile+channels_last_3d"] = lambda m, x: (torch.compile(channels_last(m, x)[0]),
                                                         channels_last(m, x)[1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="minimum duration of one timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (the best counts)")
    parser.add_argument("--models", nargs="+", default=["dg_p3d_tiny", "r2plus1d_18"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to compile)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, {SIZE}x{SIZE}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'model':<12} {'frames':>6} {'params':>8} {'GFLOPs':>7} {'variant':<25} {'clips/s':>8}")
    for name in args.models:
        for frames in (8, 16):
            gflops = count_gflops(build_model(name, NUM_CLASSES), frames, SIZE)
            for label, prepare in variants(not args.no_compile).items():
                torch.manual_seed(0)
                model, x = prepare(build_model(name, NUM_CLASSES), torch.randn(args.batch, 3, frames, SIZE, SIZE))
                rate = clips_per_second(model, x, seconds=args.seconds, repeats=args.repeats)
                params = count_params(build_model(name, NUM_CLASSES))
                print(f"{name:<12} {frames:>6} {params / 1e6:>7.2f}M {gflops:>7.3f} {label:<25} {rate:>8.1f}",
                      flush=True)
    print("\none training epoch (240 clips, batch 16, SGD; model only, no data loading), eager:")
    for name in args.models:
        for frames in (8, 16):
            seconds = epoch_seconds(build_model(name, NUM_CLASSES), frames, repeats=args.repeats)
            print(f"{name:<12} {frames:>2}x{SIZE}x{SIZE}: {seconds:6.2f} s/epoch", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
