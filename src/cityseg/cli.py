"""The ``cityseg`` command line: argparse subcommands, one module each under ``cityseg.commands``.

Each command module imports only the standard library at its top and defines
``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; heavy imports (torch) happen
inside ``run`` so that ``cityseg evaluate --pred-dir`` and ``cityseg --help`` stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from cityseg import __version__
from cityseg.errors import CitysegError

#: subcommand -> module under cityseg.commands
COMMANDS: dict[str, str] = {
    "synth": "cityseg.commands.synth",
    "prepare": "cityseg.commands.prepare",
    "train": "cityseg.commands.train",
    "sweep": "cityseg.commands.sweep",
    "evaluate": "cityseg.commands.evaluate",
    "predict": "cityseg.commands.predict",
    "export": "cityseg.commands.export",
    "benchmark": "cityseg.commands.benchmark",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cityseg", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"cityseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # a command not written yet must not break the others
            if exc.name != module_name:
                raise
            continue
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args._module.run(args) or 0)
    except CitysegError as exc:
        print(f"cityseg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cityseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
