"""Top-level ``opplan`` commands: params handling and the pipeline stages for people.

Each stage command calls the same function as its ``pipeline/<stage>.py`` entry point.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import click

from opplan.errors import OpplanError
from opplan.params_file import dump_params, load_params, preset_path

PARAMS_ARG = click.argument("params_path", metavar="[PARAMS]", default="params.yaml", type=click.Path(dir_okay=False))


@click.command("check-params")
@PARAMS_ARG
def check_params(params_path: str) -> None:
    """Validate a params file and print the resolved settings (exit 2 on a bad file)."""
    params = load_params(params_path)
    click.echo(f"# {params_path}: valid\n" + dump_params(params), nl=False)


@click.command("init-params")
@click.option("--preset", required=True,
              help="A shipped preset by name: ucf101, hmdb51, activitynet, ssv2, kinetics400, demo.")
@click.option("--out", default="params.yaml", show_default=True, type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init_params(preset: str, out: str, force: bool) -> None:
    """Copy a dataset preset (docs/design.md §8) to a params file."""
    source = preset_path(preset)
    load_params(source)  # a shipped preset must itself be valid
    if Path(out).exists() and not force:
        raise OpplanError(f"{out} exists; pass --force to overwrite it")
    shutil.copyfile(source, out)
    click.echo(f"wrote {out} from preset {preset} ({source})")


def run_training_stage(params_path: str, stage: str) -> Any:
    """Run ``opplan.stages.<stage>.run_<stage>`` on the params, data-parallel under ``torchrun``
    when asked (see :mod:`opplan.distributed`); ``None`` on every process but rank 0."""
    params = load_params(params_path)  # a bad params file fails before torch and MLflow are imported
    import importlib

    from opplan import distributed

    def work() -> Any:  # imported here, after a relaunch: the stage modules import torch and MLflow
        return getattr(importlib.import_module(f"opplan.stages.{stage}"), f"run_{stage}")(params)

    return distributed.launch(params, ["-m", "opplan.cli", *sys.argv[1:]], work)


PARAMS_OPTION = click.option("--params", "params_path", default="params.yaml", show_default=True,
                             type=click.Path(dir_okay=False), help="The params file.")


@click.command()
@PARAMS_OPTION
def plan(params_path: str) -> None:
    """Explore the transition graph and choose the path (the `plan` stage)."""
    result = run_training_stage(params_path, "plan")
    if result is None:  # not rank 0
        return
    click.echo(" → ".join(s.name for s in result.path))


@click.command()
@PARAMS_OPTION
def final(params_path: str) -> None:
    """Retrain from S0 along the planned path (the `final` stage)."""
    record = run_training_stage(params_path, "final")
    if record is None:  # not rank 0
        return
    click.echo(f"final model: {record.epochs} epochs, MLflow run {record.run_id}")


@click.command()
@PARAMS_OPTION
def evaluate(params_path: str) -> None:
    """Multi-view testing of the final model on the held-out split (the `evaluate` stage)."""
    metrics = run_training_stage(params_path, "evaluate")
    if metrics is None:  # not rank 0
        return
    click.echo(" ".join(f"{k}={v:.4f}" for k, v in metrics.items()))


@click.command()
@PARAMS_OPTION
def baselines(params_path: str) -> None:
    """Train and score the hand-tuned grid (the `baselines` stage)."""
    document = run_training_stage(params_path, "baselines")
    if document is None:  # not rank 0
        return
    hs, retrains = document.selected, document.retrains
    if hs is None:
        click.echo("no baseline finished")
        return
    tested = [r.top1 for r in retrains if r.top1 is not None]
    mean = f"{sum(tested) / len(tested):.4f} over {len(tested)} seed(s)" if tested else "none (retrain failed)"
    click.echo(f"HS (chosen on validation): {hs.name} val top-1 {hs.val_top1:.4f}; retrained, held-out "
               f"top-1 {mean}")


@click.command()
@PARAMS_OPTION
@click.option("--tracking-uri", default=None, help="Read this MLflow store instead of params' / MLFLOW_TRACKING_URI.")
@click.option("--out", default=None, help="Output folder (default: params report.out).")
def report(params_path: str, tracking_uri: str | None, out: str | None) -> None:
    """Paper-style tables and figures from the MLflow store, into reports/."""
    from opplan.report import run_report

    written = run_report(load_params(params_path), tracking_uri=tracking_uri, out=out)
    click.echo(f"wrote {written}")


@click.command()
@PARAMS_OPTION
@click.option("--host", default="127.0.0.1", show_default=True,
              help="The interface the UI binds to (0.0.0.0: every interface; anyone who reaches it can write runs).")
@click.option("--port", default=5000, show_default=True, type=int,
              help="The TCP port; checked first: a taken or invalid port exits 2 at once.")
@click.option("--wait", "wait_s", default=300, show_default=True, type=int,
              help="Seconds to wait for the server to answer before giving up.")
def ui(params_path: str, host: str, port: int, wait_s: int) -> None:
    """Start the MLflow UI over the project's store and print links into it.

    Binds HOST:PORT (one worker, no job runner), waits until the server answers, then
    prints: the newest planning's transitions as a table with V, V_se, chosen_epoch,
    dp_margin_se, epochs_trained and compute seconds as columns (a saved view this command
    writes into the experiment), MLflow's compare page of the chosen path's transitions
    (their curve plots side by side), and each experiment's runs table. Ctrl-C stops the
    server and every process it started.
    """
    from opplan.tracking import ui as server
    from opplan.tracking.client import resolve_uri
    from opplan.tracking.store import check_readable

    params = load_params(params_path)
    server.check_port(host, port)
    uri = resolve_uri(params.tracking.uri)
    check_readable(uri)  # MLflow's server would migrate a foreign database it is given
    base = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    click.echo(f"starting the MLflow UI for {uri} on {base} ...")
    process = server.start(uri, host, port)
    try:
        server.wait_until_up(process, f"{base}/health", timeout=wait_s)
        from opplan.tracking.views import planning_links

        click.echo(f"MLflow UI on {base} (Ctrl-C stops it)")
        for link in planning_links(uri, params.tracking.experiment, base):
            click.echo(f"  {link.label}:\n    {link.url}")
        if process.wait() != 0:
            raise OpplanError(f"the MLflow server stopped with status {process.returncode}")
    except KeyboardInterrupt:
        pass
    finally:
        server.stop(process)
