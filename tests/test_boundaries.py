"""The engine stays a pure PyTorch + pandas library: no UI imports, statically or at run time."""
import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
FORBIDDEN = {"streamlit", "plotly", "dashboard"}


def _imported_roots(path: pathlib.Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_engine_sources_import_no_ui_module():
    sources = sorted((ROOT / "moe").rglob("*.py"))  # subpackages too (moe/hf, moe/cli, ...)
    assert ROOT / "moe" / "cli" / "main.py" in sources
    # keyed by the path: by file name, moe/__init__.py and moe/cli/__init__.py would hide each other
    offenders = {p.relative_to(ROOT).as_posix(): _imported_roots(p) & FORBIDDEN for p in sources}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_importing_the_engine_loads_no_ui_module():
    code = ("import sys, moe, moe.cli.main, moe.scenarios; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in {'streamlit','plotly','dashboard'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_boundary_check_detects_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import plotly.express as px\nfrom streamlit import session_state\n")
    assert _imported_roots(bad) & FORBIDDEN == {"plotly", "streamlit"}
