"""The ``fopro-edge`` command line: thin click commands over the library."""

from __future__ import annotations

import logging
import sys

import click

from fopro_edge.errors import FoproEdgeError, MissingDependencyError

TRAIN_MODULES = {"torch", "torchvision", "timm", "sklearn", "matplotlib", "safetensors", "scipy"}  # the train extra


class _Group(click.Group):
    """Turns library and usage errors into one-line messages with their own exit codes (``--debug`` re-raises)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            _usage_exit(e)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FoproEdgeError as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {_one_line(str(e))}", err=True)
            sys.exit(e.exit_code)
        except ModuleNotFoundError as e:  # a device install (no train extra) asked to train or export
            if (e.name or "").split(".")[0] not in TRAIN_MODULES or (ctx.obj and ctx.obj.get("debug")):
                raise
            click.echo(f"error: {ctx.invoked_subcommand or 'this command'}: needs {e.name} (the train extra): "
                       "pip install 'fopro-edge[train]'", err=True)
            sys.exit(MissingDependencyError.exit_code)
        except click.UsageError as e:  # bad arguments of a subcommand (BadParameter, NoSuchOption, ...)
            if ctx.obj and ctx.obj.get("debug"):
                raise
            sub = ctx.invoked_subcommand
            _usage_exit(e, f"{ctx.command_path} {sub}" if sub else ctx.command_path)


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _usage_exit(e: click.UsageError, command_path: str = "fopro-edge") -> None:
    """Click's usage errors as one line naming the command and argument, exit code 2."""
    if isinstance(e, getattr(click.exceptions, "NoArgsIsHelpError", ())):
        raise e  # a bare command shows its help
    where = e.ctx.command_path if e.ctx is not None else command_path
    click.echo(f"error: {where}: {_one_line(e.format_message())} (see '{where} --help')", err=True)
    sys.exit(e.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug logs).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.version_option(package_name="fopro-edge")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool, debug: bool) -> None:
    """Distil long-tailed image classifiers with FoPro-KD and ship them to edge devices
    with a rare-class accuracy gate after every export step."""
    ctx.obj = {"debug": debug}
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 or debug else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if verbose < 2 and not debug:
        for noisy in ("PIL", "matplotlib", "nncf", "timm"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def _register() -> None:
    """Attach the subcommands (their modules import only click at load time)."""
    from fopro_edge.cli import (ablate_cmd, bench_cmd, distill_cmd, eval_cmd, export_cmd, predict_cmd, probe_cmd, run_cmd,
                                verify_cmd)

    for command in (run_cmd.run, probe_cmd.probe, distill_cmd.distill, ablate_cmd.ablate, export_cmd.export, eval_cmd.evaluate,
                    bench_cmd.bench, verify_cmd.verify, predict_cmd.predict):
        cli.add_command(command)


def main() -> None:
    _register()
    cli(prog_name="fopro-edge")
