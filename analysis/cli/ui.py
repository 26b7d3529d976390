"""Start the dashboard (``streamlit run app.py``), bound to this machine only (localhost).

``layerscope ui`` is what ``make run`` starts. The server listens on ``localhost`` unless ``--address`` names
another interface; remote model code still runs only when the user turns it on in the sidebar.
"""

from __future__ import annotations

NAME = "ui"
HELP = "start the dashboard in the browser (localhost)"


def add_arguments(p) -> None:
    from analysis.cli.common import int_in

    p.add_argument(
        "--port", type=int_in(1, 65535, what="a port number"), default=8501, help="port to listen on (default 8501)"
    )
    p.add_argument(
        "--address",
        default="localhost",
        help="interface to bind (default localhost: only this machine can open the dashboard)",
    )
    p.add_argument("--headless", action="store_true", help="do not open a browser window")


def run(args) -> int:
    import subprocess
    import sys
    from pathlib import Path

    app = Path(__file__).resolve().parents[2] / "app.py"
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(app),
        "--server.address",
        args.address,
        "--server.port",
        str(args.port),
    ]
    if args.headless:
        cmd += ["--server.headless", "true"]
    return subprocess.call(cmd, cwd=app.parent)
