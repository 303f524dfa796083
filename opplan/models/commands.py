"""``opplan model-info``: parameters and compute of a registered model."""

from __future__ import annotations

import json

import click

from opplan.errors import OpplanError


@click.command("model-info")
@click.argument("name", required=False)
@click.option("--clip-length", type=click.IntRange(min=1), default=16, show_default=True, help="Frames per clip.")
@click.option("--size", type=click.IntRange(min=1), default=112, show_default=True, help="Square crop size.")
@click.option("--num-classes", type=click.IntRange(min=1), default=400, show_default=True)
@click.option("--width", type=click.IntRange(min=1), default=None, help="Stem width (default: the model's own).")
@click.option("--depth", type=int, default=None, help="Body depth (default: the model's own).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: name, params, gflops, clip_length, size.")
@click.option("--list", "list_models", is_flag=True, help="List the registered models and exit.")
def model_info(
    name: str | None, clip_length: int, size: int, num_classes: int, width: int | None, depth: int | None,
    as_json: bool, list_models: bool,
) -> None:
    """Print parameters and GFLOPs (multiply-adds) of model NAME for one clip."""
    import torch

    from opplan.models.flops import count_gflops, count_params
    from opplan.models.p3d import min_clip_length
    from opplan.models.registry import REGISTRY, build_model

    if list_models:
        for spec in REGISTRY.values():
            click.echo(f"{spec.name:<14} {spec.description}")
        return
    if name is None:
        raise OpplanError(f"model-info needs a model NAME or --list; known models: {', '.join(REGISTRY)}")
    # Shapes only: build on the meta device, so even ResNet-101 at 64x256² costs nothing.
    with torch.device("meta"):
        model = build_model(name, num_classes, width=width, depth=depth)
    if clip_length < min_clip_length(model):
        raise OpplanError(f"{name} needs clips of at least {min_clip_length(model)} frames, got {clip_length}")
    if size < 32:
        raise OpplanError(f"--size must be at least 32, got {size}")
    info = {
        "name": name,
        "params": count_params(model),
        "gflops": round(count_gflops(model, clip_length, size), 4),
        "clip_length": clip_length,
        "size": size,
    }
    if as_json:
        click.echo(json.dumps(info))
    else:
        click.echo(f"{name}: {info['params'] / 1e6:.2f} M parameters, {info['gflops']:.4g} GFLOPs "
                   f"(multiply-adds) per {clip_length}x{size}x{size} clip")
