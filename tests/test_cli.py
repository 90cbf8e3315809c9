"""The command line as a user meets it: help, version, errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cityseg import __version__
from cityseg.cli import COMMANDS, main


def test_python_m_cityseg_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "cityseg", "--help"], capture_output=True, text=True, check=True)
    for name in COMMANDS:
        assert name in out.stdout


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_unknown_command_is_rejected(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_help_does_not_import_torch():
    code = "import sys; from cityseg.cli import build_parser; build_parser(); assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True)
