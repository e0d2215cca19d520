"""The `cxrfm` command line: a thin dispatcher over `cxrfm/commands/<command>.py`.

Every module in `cxrfm.commands` that defines `add_parser(subparsers)` and `run(args) -> int` is a command;
its name is the module name with `_` written as `-` (`zero_shot.py` -> `cxrfm zero-shot`). A new command is a
new file there, nothing to register here.

Exit codes: 0 success, 2 bad input or usage (message on stderr, no traceback), 130 interrupted.
"""

import argparse
import importlib
import logging
import pkgutil
import sys

import cxrfm.commands

logger = logging.getLogger(__name__)

# Errors that mean "the input is wrong": reported as one line on stderr with exit code 2. Anything else is a
# bug in cxrfm and keeps its traceback.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
               PermissionError)
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def command_modules() -> dict:
    """Command name -> module, for every module of `cxrfm.commands` with `add_parser` and `run`."""
    found = {}
    for info in sorted(pkgutil.iter_modules(cxrfm.commands.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"cxrfm.commands.{info.name}")
        if hasattr(module, "add_parser") and hasattr(module, "run"):
            found[info.name.replace("_", "-")] = module
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxrfm", description="Chest X-ray foundation models (cxrfm) tools.",
        epilog="Exit codes: 0 success, 2 bad input or usage (message on stderr), 130 interrupted.",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in command_modules().items():
        sub = module.add_parser(commands)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `cxrfm` console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    # Logs go to stderr so that stdout stays clean for pipelines (`cxrfm zero-shot ... --output - | ...`).
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except USER_ERRORS as error:
        print(f"cxrfm {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"cxrfm {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
