"""Definitions live in the engine, once; the dashboard reads the same texts."""
import ast
import io
import pathlib
import re
import tokenize

from moe import PER_EXPERT_COLUMNS, SUMMARY_KEYS
import moe.definitions
import dashboard.definitions

from app_support import SMALL, open_app

ROOT = pathlib.Path(__file__).resolve().parents[1]
# a repository path (`moe/stats.py`, `docs/ENGINE_API.md`) or a top-level markdown file (`README.md`); not the tail
# of another project's path (`megatron/core/transformer/moe/router_trace.py`)
REPO_PATH = re.compile(r"(?<![\w/.-])((?:moe|dashboard|docs|benchmarks|tests|examples|models)/[\w./-]*\w"
                       r"|[A-Z][A-Z_]*\.md)\b")


def test_every_reported_number_has_an_engine_definition():
    missing = [k for k in [*PER_EXPERT_COLUMNS[1:], *SUMMARY_KEYS] if k not in moe.definitions.DEFINITIONS]
    assert not missing


def test_the_dashboard_shows_the_engine_texts_without_a_copy(monkeypatch):
    """Change every engine text: the captions and the About view show the new texts, and no old one survives."""
    engine = moe.definitions.DEFINITIONS
    assert dashboard.definitions.DEFINITIONS is engine
    old = dict(engine)
    for key in old:
        monkeypatch.setitem(engine, key, f"<the engine's text for {key}>")
    assert dashboard.definitions.caption("cv") == "`cv`: <the engine's text for cv>"
    at = open_app({"view": "About", **SMALL})
    assert not at.exception
    shown = "\n".join(m.value for m in at.main.markdown)
    assert all(f"`{key}`: <the engine's text for {key}>" in shown for key in old)
    assert not [key for key, text in old.items() if text in shown]


def _docstrings_and_comments(path: pathlib.Path) -> str:
    text = path.read_text()
    nodes = [n for n in ast.walk(ast.parse(text))
             if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    docs = [ast.get_docstring(n, clean=False) or "" for n in nodes]
    comments = [t.string for t in tokenize.generate_tokens(io.StringIO(text).readline) if t.type == tokenize.COMMENT]
    return "\n".join(docs + comments)


def mentioned_paths(root: pathlib.Path, packages=("moe", "dashboard")) -> dict[str, set[str]]:
    """Repository path -> the sources whose docstrings or comments mention it (subpackages included)."""
    found: dict[str, set[str]] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            for mention in REPO_PATH.findall(_docstrings_and_comments(path)):
                found.setdefault(mention, set()).add(path.relative_to(root).as_posix())
    return found


def test_engine_and_dashboard_docstrings_point_to_files_that_exist():
    mentioned = mentioned_paths(ROOT)
    assert "moe/stats.py" in mentioned["moe/definitions.py"]  # the scan reads docstrings...
    assert "moe/hf/lm_config.py" in mentioned["benchmarks/bench_memory_guard.py"]  # ...of subpackages, and comments
    missing = {path: sorted(by) for path, by in mentioned.items() if not (ROOT / path).exists()}
    assert not missing, f"docstrings or comments name files that do not exist: {missing}"


def test_the_path_check_finds_a_missing_file(tmp_path):
    (tmp_path / "moe" / "sub").mkdir(parents=True)
    (tmp_path / "moe" / "here.py").write_text("")
    (tmp_path / "moe" / "sub" / "m.py").write_text(
        '"""See moe/here.py and docs/GONE.md."""\n'
        'x = "moe/in_a_string_not_a_docstring.py"\n'
        '# measured by benchmarks/bench_gone.py; format of megatron/core/moe/router_trace.py; METRICS.md\n')
    mentioned = mentioned_paths(tmp_path, ("moe",))
    assert sorted(mentioned) == ["METRICS.md", "benchmarks/bench_gone.py", "docs/GONE.md", "moe/here.py"]
    missing = sorted(p for p in mentioned if not (tmp_path / p).exists())
    assert missing == ["METRICS.md", "benchmarks/bench_gone.py", "docs/GONE.md"]
