import subprocess
import sys

import pytest
from click.testing import CliRunner

from fopro_edge.cli import _register, cli

_register()
COMMANDS = sorted(cli.commands)


def test_the_core_commands_exist():
    assert {"distill", "export"} <= set(COMMANDS)


def test_top_level_help():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output


@pytest.mark.parametrize("name", COMMANDS)
def test_every_subcommand_has_help(name):
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and "--help" in result.output


def test_console_script_and_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "fopro_edge", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "distill" in out.stdout


def test_bad_recipe_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("distill:\n  epoch: 3\n")
    out = subprocess.run([sys.executable, "-m", "fopro_edge", "distill", str(bad)], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip() == f"error: {bad}: distill.epoch: unknown key (did you mean 'epochs'?)"
    assert "Traceback" not in out.stderr


def test_debug_shows_the_traceback(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("distill:\n  epoch: 3\n")
    out = subprocess.run([sys.executable, "-m", "fopro_edge", "--debug", "distill", str(bad)], capture_output=True, text=True)
    assert out.returncode != 0 and "Traceback" in out.stderr
