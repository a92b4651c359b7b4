"""MkDocs hook: renders the package layout from the source tree at build time.

A page holding the line `<!-- package-layout -->` gets, in its place, every package and module under
`iapas/` with the first paragraph of its docstring, read with `ast` (nothing is imported). A package added or
moved appears without editing the docs.
"""
from __future__ import annotations

import ast
from pathlib import Path

MARKER = "<!-- package-layout -->"
PACKAGE = Path(__file__).resolve().parents[2] / "iapas"


def first_line(path: Path) -> str:
    """The first paragraph of a module's docstring on one line (its summary), or '' when it has none."""
    try:
        docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return ""
    return " ".join(docstring.strip().split("\n\n")[0].split()) if docstring else ""


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _rows(folder: Path, depth: int) -> list[str]:
    rows = []
    modules = sorted(path for path in folder.glob("*.py") if path.name != "__init__.py")
    packages = sorted(path for path in folder.iterdir() if (path / "__init__.py").is_file())
    for module in modules:
        name = module.relative_to(PACKAGE.parent).as_posix()
        rows.append(f"| `{name}` | {_escape(first_line(module))} |")
    for package in packages:
        name = package.relative_to(PACKAGE.parent).as_posix() + "/"
        rows.append(f"| **`{name}`** | {_escape(first_line(package / '__init__.py'))} |")
        rows += _rows(package, depth + 1)
    return rows


def package_layout() -> str:
    """A table of every package and module under iapas/, packages in bold."""
    lines = ["| path | what it holds |", "|---|---|", f"| **`iapas/`** | {_escape(first_line(PACKAGE / '__init__.py'))} |"]
    return "\n".join(lines + _rows(PACKAGE, 1))


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Replaces the marker with the generated table."""
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, package_layout())
