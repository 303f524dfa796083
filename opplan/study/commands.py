"""``opplan study STUDY.yaml``: run a pre-registered study and write its table (docs/study.md)."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import click

log = logging.getLogger(__name__)


def _root(config: Path) -> Path:
    found = subprocess.run(["git", "-C", str(config.resolve().parent), "rev-parse", "--show-toplevel"],
                           capture_output=True, text=True, check=False)
    return Path(found.stdout.strip()) if found.returncode == 0 else Path.cwd()


@click.command("study")
@click.argument("config", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--workdir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Where the data, stores and per-replicate results go (default: <out>/work). Reused on a rerun.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Where results.md and results.json go (default: the config's path without .yaml).")
@click.option("--allow-dirty", is_flag=True, help="Run from an uncommitted or edited config (the results say so).")
def study(config: Path, workdir: Path | None, out: Path | None, allow_dirty: bool) -> None:
    """Run the study CONFIG: replicates of planning, the paper-shaped grid and the retrains."""
    from opplan.fileio import atomic_write_json, atomic_write_text
    from opplan.study.config import load_study, provenance
    from opplan.study.run import run_study, study_params
    from opplan.study.table import markdown, summarize

    cfg, text = load_study(config)
    origin = provenance(config, text, allow_dirty=allow_dirty)
    out = (out or config.with_suffix("")).resolve()
    work = (workdir or out / "work").resolve()
    root = _root(config)
    log.info("study %s: config sha256 %s, commit %s, work folder %s", cfg.name, origin["config_sha256"][:16],
             (origin["commit"] or "?")[:12], work)
    workers = study_params(cfg, root, work, cfg.replicates[0]).plan.workers  # the grid's processes: planning's
    results = run_study(cfg, root, work, origin, workers)
    doc = summarize(cfg, results, origin)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", doc)
    table = markdown(doc)
    atomic_write_text(out / "results.md", table)
    click.echo(table)
    click.echo(f"wrote {out / 'results.md'} and {out / 'results.json'}")
