"""The command-line reference (docs/cli.md), generated from the parser itself so it never drifts from the code.

``python -m analysis.cli.reference > docs/cli.md`` rewrites it; ``tests/unit/test_docs.py`` checks it is current.
"""

from __future__ import annotations

import argparse
import os

from analysis.cli.main import build_parser


def reference() -> str:
    os.environ["COLUMNS"] = "118"  # argparse wraps help text to the terminal width: make the output stable
    parser = build_parser()
    parser.prog = "layerscope"
    out = [
        "# Command-line reference",
        "",
        "Generated from the parser (`python -m analysis.cli.reference > docs/cli.md`); `layerscope X` and",
        "`python -m analysis X` are the same command. What each command writes: [command-line.md](command-line.md).",
        "",
        "```",
        parser.format_help().rstrip(),
        "```",
        "",
    ]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sorted(sub.choices.items()):
        p.prog = f"layerscope {name}"
        out += [f"## `layerscope {name}`", "", "```", p.format_help().rstrip(), "```", ""]
    return "\n".join(out)


if __name__ == "__main__":
    print(reference(), end="")
