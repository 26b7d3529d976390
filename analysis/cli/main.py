"""``python -m analysis``: every view headless, on the same code paths and cache as the dashboard.

Each sub-command is one module in ``analysis/cli/`` with ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``. Errors a user can cause (:class:`analysis.errors.LayerScopeError`) print one line to stderr and exit with status
2; so do a malformed option (argparse, at parse time: one line, no usage block) and a full disk (``OSError``
ENOSPC); anything else is a bug and shows its full traceback (exit status 1).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
from pathlib import Path

from analysis.errors import LayerScopeError, disk_full_message, is_disk_full, one_line  # noqa: E402

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class OneLineParser(argparse.ArgumentParser):
    """An argument error is one line on stderr (``error: argument --x: … (see PROG --help)``, no usage block: the same form as every other error), exit 2; the
    sub-command parsers are of the same class."""

    def error(self, message: str):
        self.exit(2, f"error: {' '.join(str(message).split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from analysis import cli as commands

    prog = "layerscope" if Path(sys.argv[0]).name == "layerscope" else "python -m analysis"
    parser = OneLineParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name in ("main", "common", "reference"):
            continue
        mod = importlib.import_module(f"{commands.__name__}.{info.name}")
        p = sub.add_parser(
            mod.NAME,
            help=mod.HELP,
            description=(mod.__doc__ or mod.HELP).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        from analysis.cache import clean_stale

        clean_stale()  # leftovers of killed writes (their process is gone) in cache/
    except OSError:
        pass
    try:
        return int(args._run(args) or 0)
    except LayerScopeError as exc:  # the user's to fix: one line; anything else is a bug and shows its traceback
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        print(f"error: {disk_full_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
