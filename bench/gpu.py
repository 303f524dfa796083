"""One GPU, kept busy? Training clips/s per model and precision, what determinism costs, the
shard loader by worker count, and a real epoch as a fraction of the model alone.

    .venv/bin/python bench/gpu.py [--budget 285] [--json PATH] [--cpu-smoke]

On CUDA (at most ~5 minutes on one H200, ``--budget`` seconds of measurement):

1. fwd+bwd+step clips/s of each model (16x112², 101 classes, batch 16) through opplan's own
   epoch loop (``train_epoch``) on batches already on the GPU: fp32, fp16 with the
   gradient scaler, bf16, bf16 + channels_last_3d (deterministic kernels, as by default);
2. the cost of ``train.deterministic`` (bf16, the layout ``channels_last: auto`` picks);
3. the loader (``make_loader``, persistent workers, reseeded per pass) on synthesised
   160x128 videos prepared at short side 128, by worker count, and its first-batch latency
   new vs reseeded;
4. one ``TrainSetup.train_epoch`` per epoch over that loader with the params a user would
   write (``amp: auto``, ``num_workers: auto``...), as a fraction of (1) for the same model;
5. ``torch.compile`` (``reduce-overhead``, then ``default``) for DG-P3D R50, as far as
   the budget allows (each compilation takes a minute or more; one fits in 5 minutes).

Without CUDA, or with ``--cpu-smoke``, the same steps run small on the CPU (tiny models,
8x32², batch 4, a few seconds each) to show that the script and the code paths work; the
CPU figures say nothing about a GPU. Prints a Markdown table per step and writes all
figures as JSON (default: ``bench/gpu.json``, ``bench/gpu_cpu.json`` on CPU).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from opplan import device as dev  # noqa: E402
from opplan.config import Params  # noqa: E402
from opplan.data.dataset import ClipDataset, make_loader, reseed  # noqa: E402
from opplan.models import build_model  # noqa: E402
from opplan.planning.graph import State  # noqa: E402
from opplan.train.loop import LoopOptions, train_epoch  # noqa: E402


@dataclass(frozen=True)
class Scale:
    models: tuple[str, ...]
    clip_length: int
    size: int
    batch: int
    classes: int
    seconds: float
    """Timed seconds per cell (after warm-up)."""
    warmup: int
    videos_per_class: int
    video: tuple[int, int, int, int]
    """Synthesised videos: width, height, min and max frames."""
    short_side: int
    workers: tuple[int | str, ...]
    determinism_models: tuple[str, ...]
    compile_model: str
    epochs: int


GPU = Scale(models=("r2plus1d_18", "r3d_18", "dg_p3d_r50", "g_p3d_r50", "p3d_r50", "i3d_r50"), clip_length=16,
            size=112, batch=16, classes=101, seconds=1.5, warmup=3, videos_per_class=40, video=(160, 128, 64, 96),
            short_side=128, workers=(2, 4, 8, 14, "auto"), determinism_models=("dg_p3d_r50", "r2plus1d_18"),
            compile_model="dg_p3d_r50", epochs=4)
CPU = Scale(models=("dg_p3d_tiny", "p3d_tiny"), clip_length=8, size=32, batch=4, classes=10, seconds=1.0, warmup=1,
            videos_per_class=3, video=(80, 64, 24, 40), short_side=40, workers=(0, 1, "auto"),
            determinism_models=("dg_p3d_tiny",), compile_model="dg_p3d_tiny", epochs=2)

VARIANTS = {  # name: (train.amp, channels_last)
    "fp32": ("off", False),
    "fp16+scaler": ("fp16", False),
    "bf16": ("bf16", False),
    "bf16+channels_last": ("bf16", True),
}


class Budget:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_rate(name: str, scale: Scale, device: torch.device, *, amp: str, channels_last: bool,
               compile_mode: str = "off", deterministic: bool = True) -> dict[str, Any]:
    """Clips/s of ``train_epoch`` on one batch already on the device, repeated."""
    dev.set_deterministic(deterministic)
    torch.manual_seed(0)
    model = build_model(name, scale.classes)
    model = model.to(device, memory_format=torch.channels_last_3d) if channels_last else model.to(device)
    started = time.perf_counter()
    dev.compile_model(model, compile_mode, device)
    dtype = dev.amp_dtype(amp, device)
    scaler = dev.grad_scaler(dtype, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9,
                                fused=True if device.type == "cuda" and dtype != torch.float16 else None)
    x = torch.randn(scale.batch, 3, scale.clip_length, scale.size, scale.size, device=device)
    y = torch.arange(scale.batch, device=device) % scale.classes
    options = LoopOptions(amp=dtype, channels_last=channels_last)
    train_epoch(model, [(x, y)] * scale.warmup, optimizer, device, scaler=scaler, options=options)
    sync(device)
    first = time.perf_counter() - started
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < scale.seconds:
        train_epoch(model, [(x, y)] * 5, optimizer, device, scaler=scaler, options=options)
        steps += 5
    sync(device)
    seconds = time.perf_counter() - start
    out = {"clips_per_s": steps * scale.batch / seconds, "warmup_s": first}
    if device.type == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
    del model, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def models_table(scale: Scale, device: torch.device, budget: Budget) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for name in scale.models:
        results[name] = {}
        for variant, (amp, layout) in VARIANTS.items():
            if device.type != "cuda" and (amp != "off"):
                results[name][variant] = {"note": "CPU: runs as fp32"}
                continue
            if budget.left() < 5:
                results[name][variant] = {"note": "skipped: budget"}
                continue
            results[name][variant] = model_rate(name, scale, device, amp=amp, channels_last=layout)
            log(f"{name} {variant}: {results[name][variant]['clips_per_s']:.0f} clips/s")
    return results


def determinism_cost(scale: Scale, device: torch.device, budget: Budget) -> dict[str, dict[str, Any]]:
    out = {}
    for name in scale.determinism_models:
        if budget.left() < 10:
            out[name] = {"note": "skipped: budget"}
            continue
        layout = dev.use_channels_last("auto", name, device)
        on = model_rate(name, scale, device, amp="auto", channels_last=layout, deterministic=True)["clips_per_s"]
        off = model_rate(name, scale, device, amp="auto", channels_last=layout, deterministic=False)["clips_per_s"]
        out[name] = {"deterministic": on, "benchmark": off, "cost": 1 - on / off}
        log(f"{name} determinism: on {on:.0f}, off {off:.0f} clips/s")
    dev.set_deterministic(True)
    return out


def synthesise(scale: Scale, folder: Path) -> Path:
    from opplan.config import PrepareParams
    from opplan.data.prepare import prepare_dataset
    from opplan.data.synth import SynthConfig, synthesize

    width, height, low, high = scale.video
    synthesize(folder / "videos", SynthConfig(seed=1, train_per_class=scale.videos_per_class, test_per_class=0,
                                              num_classes=4, width=width, height=height, min_frames=low,
                                              max_frames=high))
    workers = max(min(dev.usable_cores() - 1, 8), 1)
    prepare_dataset(folder / "videos", folder / "shards", PrepareParams(short_side=scale.short_side, workers=workers,
                                                                        val_size=1), seed=0)
    return folder / "shards"


def bench_params(scale: Scale, shards: Path, model: str, **train: Any) -> Params:
    jitter = [scale.size, int(scale.size * 1.25)]
    return Params.model_validate({
        "device": "auto", "prepare": {"out": str(shards), "short_side": scale.short_side},
        "model": {"name": model},
        "train": {"crop_size": scale.size, "scale_jitter": jitter, "eval_short_side": scale.size,
                  "batch_size": scale.batch, "progress_seconds": 30, **train},
        "plan": {"clip_lengths": [scale.clip_length]},
    })


def loader_rates(scale: Scale, shards: Path, device: torch.device, budget: Budget) -> dict[str, dict[str, Any]]:
    """Clips/s of whole passes after the first (steady state, persistent workers), and the
    latency to a first batch for a new loader and for a reseeded one."""
    params = bench_params(scale, shards, scale.models[0])
    dataset = ClipDataset(shards, "train", sampling="us", clip_length=scale.clip_length, mode="train",
                          train=params.train)
    out = {}
    for workers in scale.workers:
        count = dev.auto_workers(device) if workers == "auto" else int(workers)
        key = f"auto ({count})" if workers == "auto" else str(count)
        if budget.left() < 8:
            out[key] = {"note": "skipped: budget"}
            continue
        start = time.perf_counter()
        loader = make_loader(dataset, scale.batch, shuffle=True, num_workers=count, seed=0,
                             pin_memory=device.type == "cuda", prefetch_factor=params.train.prefetch_factor)
        next(iter(loader))
        new_latency = time.perf_counter() - start
        for _ in loader:  # the rest of the first pass
            pass
        start = time.perf_counter()
        batches = iter(reseed(loader, 1))
        next(batches)
        reseeded_latency = time.perf_counter() - start
        for _ in batches:
            pass
        clips, start, epoch = 0, time.perf_counter(), 2
        while time.perf_counter() - start < 2 * scale.seconds:
            clips += sum(len(label) for _, label in reseed(loader, epoch))
            epoch += 1
        out[key] = {"workers": count, "clips_per_s": clips / (time.perf_counter() - start),
                    "first_batch_new_s": new_latency, "first_batch_reseeded_s": reseeded_latency}
        log(f"loader {key} workers: {out[key]['clips_per_s']:.0f} clips/s")
        del loader
    return out


def end_to_end(scale: Scale, shards: Path, device: torch.device, alone: dict[str, dict[str, Any]],
               budget: Budget) -> dict[str, dict[str, Any]]:
    """``TrainSetup.train_epoch`` as the planner calls it, epochs 2.. timed."""
    from opplan.train.setup import TrainSetup

    out = {}
    for name in scale.determinism_models:
        if budget.left() < 15:
            out[name] = {"note": "skipped: budget"}
            continue
        setup = TrainSetup(bench_params(scale, shards, name), shards)
        state = State("us", scale.clip_length, 0.01)
        model = setup.new_model(scale.clip_length)
        optimizer, scaler = setup.optimizer(model, 0.01), setup.grad_scaler()
        seconds, clips = 0.0, 0
        for epoch in range(scale.epochs):
            result = setup.train_epoch(model, state, optimizer, scaler, seed=epoch, progress=f"{name} epoch {epoch}: ")
            if epoch:
                seconds, clips = seconds + result.seconds, clips + result.clips
        rate = clips / seconds
        variant = "bf16+channels_last" if setup.channels_last else ("bf16" if setup.amp else "fp32")
        reference = alone.get(name, {}).get(variant, {}).get("clips_per_s")
        if reference is None and device.type != "cuda":
            reference = alone.get(name, {}).get("fp32", {}).get("clips_per_s")
        out[name] = {"clips_per_s": rate, "model_alone": reference, "variant": variant,
                     "fraction": rate / reference if reference else None, "num_workers": setup.num_workers}
        setup.close_loaders()
        log(f"{name} end to end: {rate:.0f} clips/s")
    return out


def compile_rates(scale: Scale, device: torch.device, budget: Budget) -> dict[str, dict[str, Any]]:
    out = {}
    name = scale.compile_model
    for mode in ("reduce-overhead", "default"):  # CUDA graphs first: the mode that needed a fix
        if device.type != "cuda":
            out[mode] = {"note": "CPU: compile is off on CPU"}
            continue
        if budget.left() < 90:
            out[mode] = {"note": "skipped: budget (a compilation takes ~80 s)"}
            continue
        try:
            out[mode] = model_rate(name, scale, device, amp="auto", compile_mode=mode,
                                   channels_last=dev.use_channels_last("auto", name, device))
        except Exception as exc:  # noqa: BLE001 - a failing mode is a result to report
            out[mode] = {"note": f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
        torch._dynamo.reset()
        log(f"{name} compile {mode}: {out[mode]}")
    return out


def log(text: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def cell(entry: dict[str, Any], key: str = "clips_per_s", fmt: str = "{:.0f}") -> str:
    return fmt.format(entry[key]) if key in entry and entry[key] is not None else entry.get("note", "-")


def render(result: dict[str, Any]) -> str:
    lines = [f"# bench/gpu.py on {result['device']} (torch {result['torch']}), {result['scale']}", ""]
    lines += ["## fwd+bwd+step clips/s (train_epoch, batch on the device)", "",
              "| model | " + " | ".join(VARIANTS) + " | compile |", "|---|" + "---|" * (len(VARIANTS) + 1)]
    for name, row in result["models"].items():
        compiled = result["compile"] if name == result["compile_model"] else {}
        comp = ", ".join(f"{m}: {cell(e)}" for m, e in compiled.items()) or "-"
        lines.append(f"| {name} | " + " | ".join(cell(row[v]) for v in VARIANTS) + f" | {comp} |")
    lines += ["", "## determinism (amp auto, channels_last auto)", "",
              "| model | deterministic | cuDNN benchmark | cost |", "|---|---|---|---|"]
    for name, e in result["determinism"].items():
        lines.append(f"| {name} | {cell(e, 'deterministic')} | {cell(e, 'benchmark')} | "
                     f"{cell(e, 'cost', '{:.0%}')} |")
    lines += ["", "## loader (persistent workers, reseeded per pass)", "",
              "| workers | clips/s | first batch, new loader (s) | first batch, reseeded (s) |", "|---|---|---|---|"]
    for key, e in result["loader"].items():
        lines.append(f"| {key} | {cell(e)} | {cell(e, 'first_batch_new_s', '{:.2f}')} | "
                     f"{cell(e, 'first_batch_reseeded_s', '{:.2f}')} |")
    lines += ["", "## end-to-end epoch (TrainSetup.train_epoch, params as a user writes them)", "",
              "| model | variant | workers | clips/s | model alone | fraction |", "|---|---|---|---|---|---|"]
    for name, e in result["end_to_end"].items():
        lines.append(f"| {name} | {e.get('variant', '-')} | {e.get('num_workers', '-')} | {cell(e)} | "
                     f"{cell(e, 'model_alone')} | {cell(e, 'fraction', '{:.0%}')} |")
    lines += ["", f"total {result['seconds']:.0f} s"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="the small CPU run, even with a GPU")
    parser.add_argument("--budget", type=float, default=None, help="seconds of measurement (GPU 285, CPU 120)")
    parser.add_argument("--json", type=Path, default=None, help="where the figures go")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    device = dev.pick_device("cpu" if args.cpu_smoke else "auto")
    scale = GPU if device.type == "cuda" else CPU
    budget = Budget(args.budget or (285 if device.type == "cuda" else 120))
    out_json = args.json or ROOT / "bench" / ("gpu.json" if device.type == "cuda" else "gpu_cpu.json")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({dev.usable_cores()} cores)"
    started = time.monotonic()
    result: dict[str, Any] = {"device": name, "torch": torch.__version__, "compile_model": scale.compile_model,
                              "scale": f"{scale.clip_length}x{scale.size}², batch {scale.batch}, "
                                       f"{scale.classes} classes"}
    result["models"] = models_table(scale, device, budget)
    result["determinism"] = determinism_cost(scale, device, budget)
    with tempfile.TemporaryDirectory(prefix="opplan-bench-gpu-") as tmp:
        log("synthesising and preparing the loader's videos")
        shards = synthesise(scale, Path(tmp))
        result["loader"] = loader_rates(scale, shards, device, budget)
        result["end_to_end"] = end_to_end(scale, shards, device, result["models"], budget)
    result["compile"] = compile_rates(scale, device, budget)
    result["seconds"] = time.monotonic() - started
    result["settings"] = {"budget_s": args.budget or (285 if device.type == "cuda" else 120), "scale": scale.__dict__, "cores": dev.usable_cores(),
                          "auto_workers": dev.auto_workers(device)}
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(render(result))
    print(f"\nfigures: {out_json}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
