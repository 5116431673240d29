"""The installed `moe-scope` command: with no arguments (or only Streamlit options such as `--server.port 8502`)
it serves the dashboard; `moe-scope report|train|...` runs a headless command, exactly as `python -m moe`.

The dashboard script is found inside the installed `dashboard` package, so the command works from any folder.
Streamlit reads the dashboard's settings from `dashboard/.streamlit/config.toml`, the `.streamlit` folder beside
the script it runs (its "script-level" config); options given here come after them and win.
"""
from __future__ import annotations

import importlib.util
import os
import pathlib
import sys

PROG = "moe-scope"


def app_path() -> pathlib.Path:
    """The installed dashboard script (dashboard/app.py), found without importing the dashboard."""
    spec = importlib.util.find_spec("dashboard")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the dashboard package is not installed; reinstall moe-scope (`pip install .`)")
    return pathlib.Path(next(iter(spec.submodule_search_locations))) / "app.py"


def serves(argv: list[str]) -> bool:
    """True when the arguments ask for the dashboard: none, or Streamlit options (`--section.key[=value]`)."""
    return not argv or (argv[0].startswith("--") and "." in argv[0].split("=", 1)[0])


def serve_command(argv: list[str]) -> list[str]:
    """`python -m streamlit run <installed dashboard/app.py> ARGS`."""
    return [sys.executable, "-m", "streamlit", "run", str(app_path()), *argv]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if serves(argv):
        command = serve_command(argv)
        os.execv(command[0], command)  # Streamlit takes over this process: signals reach the server directly
    from moe.cli.main import main as run_command

    return run_command(argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
