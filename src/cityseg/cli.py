"""The ``cityseg`` command line: argparse subcommands, one module each under ``cityseg.commands``.

Each command module imports only the standard library at its top and defines
``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; heavy imports (torch) happen
inside ``run`` so that ``cityseg evaluate --pred-dir`` and ``cityseg --help`` stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from cityseg import logs
from cityseg._version import __version__
from cityseg.errors import CitysegError

#: subcommand -> module under cityseg.commands
COMMANDS: dict[str, str] = {
    "synth": "cityseg.commands.synth",
    "prepare": "cityseg.commands.prepare",
    "train": "cityseg.commands.train",
    "sweep": "cityseg.commands.sweep",
    "evaluate": "cityseg.commands.evaluate",
    "predict": "cityseg.commands.predict",
    "serve": "cityseg.commands.serve",
    "export": "cityseg.commands.export",
    "benchmark": "cityseg.commands.benchmark",
    "report": "cityseg.commands.report",
    "stats": "cityseg.commands.stats",
    "completion": "cityseg.commands.completion",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cityseg", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"cityseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    volume = common.add_mutually_exclusive_group()
    volume.add_argument("-q", "--quiet", action="store_true", help="print nothing but warnings and errors")
    volume.add_argument("-v", "--verbose", action="store_true", help="also print debug lines")
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # a command not written yet must not break the others
            if exc.name != module_name:
                raise
            continue
        p = sub.add_parser(name, help=module.HELP, description=module.HELP, parents=[common])
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    logs.setup(args.command, logs.level_from_flags(args.quiet, args.verbose))
    logs.log.debug("cityseg %s, Python %s, arguments %s", __version__, sys.version.split()[0], argv or sys.argv[1:])
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
