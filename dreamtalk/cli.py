"""`dreamtalk`: one console script, one subcommand per job.

Each command group lives in its own module under `dreamtalk/` and exposes
`register(subparsers)`, which adds its parser and sets `func` (called with the
parsed arguments, returning an exit code or None). Bad input raises ValueError
or OSError and becomes one clear log line with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from engine.memory import keep_freed_memory

log = logging.getLogger("dreamtalk")

# Modules that add subcommands, in the order `--help` lists them.
COMMAND_MODULES = (
    "dreamtalk.cmd_animate",
    "dreamtalk.cmd_data",
    "dreamtalk.cmd_train",
    "dreamtalk.cmd_render",
    "dreamtalk.cmd_serve",
    "dreamtalk.cmd_export",
    "dreamtalk.cmd_say",
    "dreamtalk.cmd_bench",
    "dreamtalk.cmd_eval",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dreamtalk", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:  # a real missing dependency, not an absent command module
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    keep_freed_memory()  # every frame's temporaries reuse the last frame's pages
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as err:  # bad input: one clear line, no traceback
        log.error("%s", err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
