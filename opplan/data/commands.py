"""``opplan data``: make the demo dataset, import a real one, prepare shards."""

from __future__ import annotations

import click

from opplan.data.annotations import FORMATS


@click.group()
def data() -> None:
    """Make the demo dataset, import a real one, prepare frame shards or verify them."""


@data.command()
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--seed", default=0, show_default=True, help="Same seed, same videos.")
@click.option("--videos-per-class", "per_class", nargs=2, type=int, default=(24, 6), show_default=True,
              metavar="TRAIN TEST", help="Training and test videos per class.")
@click.option("--classes", "num_classes", type=click.IntRange(1, 10), default=None,
              help="Only the first N of the ten classes.")
@click.option("--size", nargs=2, type=int, default=(80, 64), show_default=True, metavar="W H",
              help="Frame size (even numbers, landscape).")
@click.option("--frames", nargs=2, type=int, default=(32, 96), show_default=True, metavar="MIN MAX",
              help="Range of video lengths in frames.")
def synth(out: str, seed: int, per_class: tuple[int, int], num_classes: int | None, size: tuple[int, int],
          frames: tuple[int, int]) -> None:
    """Write the seeded demo dataset (H.264 mp4 + UCF101-style lists + manifest) into OUT."""
    from opplan.data.synth import SynthConfig, synthesize

    try:
        config = SynthConfig(seed=seed, train_per_class=per_class[0], test_per_class=per_class[1],
                             num_classes=num_classes, width=size[0], height=size[1],
                             min_frames=frames[0], max_frames=frames[1])
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    entries = synthesize(out, config)
    click.echo(f"wrote {len(entries)} videos to {out} (manifest.csv, classes.txt, ucfTrainTestlist/)")


@data.command("import")
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True, help="Annotation format.")
@click.option("--root", type=click.Path(exists=True, file_okay=False), required=True,
              help="Folder of the videos (or of the frame folders).")
@click.option("--annotations", type=click.Path(exists=True), required=True,
              help="Annotation file or folder (see `opplan.data.annotations`).")
@click.option("--split", default=1, show_default=True, type=click.IntRange(1, 3), help="UCF101/HMDB51 split number.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Dataset folder to write.")
@click.option("--link/--copy", default=True, show_default=True, help="Symlink the videos or copy them.")
def import_(fmt: str, root: str, annotations: str, split: int, out: str, link: bool) -> None:
    """Import public annotations into a dataset folder (manifest.csv + classes.txt + videos/)."""
    from opplan.data.annotations import REPORT, WARNINGS, import_dataset

    listing = import_dataset(fmt, root, annotations, out, split=split, link=link)
    warnings = f"; {len(listing.warnings)} warning(s) in {out}/{WARNINGS}" if listing.warnings else ""
    click.echo(f"imported {len(listing.videos)} videos of {len(listing.classes)} classes into {out}; "
               f"{len(listing.problems)} problem(s) listed in {out}/{REPORT}{warnings}")


@data.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True, type=click.Path(dir_okay=False),
              help="The params file.")
def prepare(params_path: str) -> None:
    """Decode the dataset into frame shards and split it (the `prepare` stage)."""
    from opplan.data.prepare import prepare_from_params
    from opplan.params_file import load_params

    summary = prepare_from_params(load_params(params_path))
    click.echo(f"prepared {summary['videos']} videos ({summary['splits']}), {summary['bad_videos']} bad")


@data.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True, type=click.Path(dir_okay=False),
              help="The params file.")
def estimate(params_path: str) -> None:
    """Estimate the shards' size from a sample of videos and the free space (what `prepare` checks first)."""
    from opplan.data.prepare import estimate_dataset
    from opplan.params_file import load_params

    params = load_params(params_path)
    result = estimate_dataset(params.data.root, params.prepare.out, params.prepare)
    click.echo(f"{result.line()}{'' if result.bytes <= result.free else ': does not fit'}")


@data.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True, type=click.Path(dir_okay=False),
              help="The params file (its prepare.out is checked).")
@click.option("--quick", is_flag=True, help="Only sizes and sampled bytes (the check every training stage makes).")
def verify(params_path: str, quick: bool) -> None:
    """Check every frame shard against the checksums `prepare` wrote (full SHA-256 by default)."""
    from opplan.data.shards import CHECKSUMS, verify_shards
    from opplan.params_file import load_params

    out = load_params(params_path).prepare.out
    digest = verify_shards(out, full=not quick)
    click.echo(f"{out}: every shard matches {out}/{CHECKSUMS} ({'sampled' if quick else 'full'} check; "
               f"fingerprint {digest[:16]})")
