"""The ``opplan`` command line.

Subcommands live beside the code they drive (``opplan/<area>/commands.py``) and are
imported only when called, so ``opplan check-params`` does not pay for importing
torch. Every :class:`~opplan.errors.OpplanError`, and a disk that is full or read-only
(:func:`~opplan.errors.user_message`), becomes a one-paragraph message on stderr and
exit status 2, never a traceback.
"""

from __future__ import annotations

import importlib

import click

from opplan import signals
from opplan.errors import user_message
from opplan.logs import configure_logging

# name -> ("module:attribute" of a click command or group, one-line help)
COMMANDS = {
    "check-params": ("opplan.commands:check_params", "Validate a params file and print the resolved settings."),
    "init-params": ("opplan.commands:init_params", "Copy a dataset preset to a params file."),
    "data": ("opplan.data.commands:data", "Make the demo dataset or import a real one."),
    "model-info": ("opplan.models.commands:model_info", "Parameters and GFLOPs of a registered model."),
    "graph": ("opplan.planning.commands:graph", "Print or draw the transition graph."),
    "knee": ("opplan.planning.commands:knee", "Replay knee-point stopping on a recorded curve."),
    "plan": ("opplan.commands:plan", "Explore the transition graph and choose the path."),
    "final": ("opplan.commands:final", "Retrain from S0 along the planned path."),
    "evaluate": ("opplan.commands:evaluate", "Multi-view testing of the final model."),
    "baselines": ("opplan.commands:baselines", "Train and score the hand-tuned grid."),
    "report": ("opplan.commands:report", "Paper-style tables and figures from MLflow."),
    "study": ("opplan.study.commands:study", "Run a pre-registered study: OP against a paper-shaped grid."),
    "ui": ("opplan.commands:ui", "Start the MLflow UI over the project's store."),
    "predict": ("opplan.predict:predict", "Top-k labels of videos from the final model."),
    "export": ("opplan.predict:export", "Export the final model to TorchScript or ONNX."),
}


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module only when it runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target[0].split(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Written from COMMANDS so that `opplan --help` imports no subcommand (nor torch).
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_) for name, (_, help_) in sorted(COMMANDS.items())])

    def invoke(self, ctx: click.Context):  # noqa: ANN201 - click's signature
        try:
            return super().invoke(ctx)
        except (KeyboardInterrupt, signals.Terminated) as exc:
            name = ctx.invoked_subcommand or ctx.info_name or "opplan"
            line, status = signals.stopped(exc, name, f"opplan {name}")
            click.echo(line, err=True)
            ctx.exit(status)
        except Exception as exc:  # noqa: BLE001 - only user errors are turned into a message
            message = user_message(exc)
            if message is None:
                raise
            click.echo(f"opplan: error: {message}", err=True)
            ctx.exit(2)

@click.group(cls=LazyGroup)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """opplan: optimization planning for 3D ConvNets on MLflow and DVC."""
    configure_logging(verbose)
    signals.install()


def main() -> None:
    cli(prog_name="opplan")


if __name__ == "__main__":
    main()
