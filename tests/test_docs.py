"""The documentation site: generated references cover the code, and a broken link fails the strict build.

`make docs` (run by .ci/run) builds the whole site with `mkdocs build --strict`; these tests check the two
build-time generators against the parser and the source tree, and that the site's own validation settings
turn a broken link or anchor into a failed build.
"""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _hook(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_hook_{name}", ROOT / "docs" / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _commands(parser: argparse.ArgumentParser, name: str):
    """Every (command path, parser) pair below `parser`, itself included."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub_parser in action.choices.items():
                yield from _commands(sub_parser, f"{name} {sub_name}")


def test_cli_reference_has_every_command_group_and_option():
    from iapas.cli import build_parser

    page = _hook("cli_reference").cli_reference()
    headings = {line.lstrip("#").strip() for line in page.splitlines() if line.startswith("#")}
    commands = list(_commands(build_parser(), "iapas"))
    assert {"iapas segment", "iapas weights download", "iapas train adaclip", "iapas config show"} <= headings
    for name, parser in commands:
        assert name in headings
        section = page.split(f" {name}\n", 1)[1]
        for group in parser._action_groups:
            shown = [a for a in group._group_actions if not isinstance(a, argparse._HelpAction) and a.help != argparse.SUPPRESS]
            if shown:
                assert f"**{group.title}**" in section, (name, group.title)
        for action in parser._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert option in section, (name, option)


def test_cli_reference_fills_in_help_fields_and_escapes_table_cells():
    hook = _hook("cli_reference")
    parser = argparse.ArgumentParser(prog="demo")
    group = parser.add_argument_group("speed", "how fast")
    group.add_argument("--repeat", type=int, default=5, help="runs per image (default: %(default)s)")
    group.add_argument("--mode", choices=("a|b", "c"), default="c", help="which | mode")
    page = "\n".join(hook.render_parser(parser, "demo"))
    assert "**speed**: how fast" in page
    assert "| `--repeat REPEAT` | runs per image (default: 5) |" in page
    assert "which \\| mode (choices: `a|b`, `c`; default: `c`)" in page


def test_package_layout_lists_every_package_with_its_docstring():
    page = _hook("package_layout").package_layout()
    packages = [path.parent for path in (ROOT / "iapas").rglob("__init__.py") if "__pycache__" not in path.parts]
    for package in packages:
        assert f"`{package.relative_to(ROOT).as_posix()}/`" in page
    assert "| **`iapas/evaluation/`** | Evaluation: run a method over a benchmark's categories and measure it. |" in page
    assert "`iapas/runs/outputs.py`" in page


@pytest.mark.parametrize("bad_link", ["[gone](missing.md)", "[gone](other.md#no-such-heading)"])
def test_strict_build_fails_on_a_broken_link_or_anchor(tmp_path, bad_link):
    from mkdocs.commands.build import build
    from mkdocs.config import load_config
    from mkdocs.exceptions import Abort

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "other.md").write_text("# Other\n\n## A heading\n", encoding="utf-8")
    (docs / "index.md").write_text("# Home\n\n[fine](other.md#a-heading)\n", encoding="utf-8")

    def site(page: str):  # the repository's mkdocs.yml (strict, validation), without the plugins and hooks
        (docs / "index.md").write_text(page, encoding="utf-8")
        return load_config(str(ROOT / "mkdocs.yml"), docs_dir=str(docs), site_dir=str(tmp_path / "site"),
                           plugins=[], hooks=[], markdown_extensions=["toc", "tables"])

    build(site("# Home\n\n[fine](other.md#a-heading)\n"))
    assert (tmp_path / "site" / "other" / "index.html").is_file()
    with pytest.raises(Abort):
        build(site(f"# Home\n\n{bad_link}\n"))


def test_source_paths_flags_only_repository_paths_that_are_gone():
    hook = _hook("source_paths")
    text = ("`iapas/runs/outputs.py` and tests/test_docs.py exist; `iapas/graph.py` moved to iapas/stages/graph.py; "
            "`utils/function.py` is the authors' file; see iapas/bench.py, or iapas/graph.py again.")
    assert hook.missing_paths(text) == ["iapas/graph.py", "iapas/bench.py"]


def test_source_paths_leaves_the_reference_repositories_files_alone():
    hook = _hook("source_paths")
    assert hook.missing_paths("`scripts/musc.sh`, `examples/musc_main.py`, `docs/decisions.md`, `tests/conftest_x.py`") == []
    assert hook.missing_paths("`tests/test_gone.py` and `benchmarks/gone.py`") == ["tests/test_gone.py", "benchmarks/gone.py"]
