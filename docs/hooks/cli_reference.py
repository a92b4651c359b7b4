"""MkDocs hook: renders the CLI reference from `iapas.cli.build_parser()` at build time.

A page holding the line `<!-- cli-reference -->` gets, in its place, every command and sub-command of
the parser: its usage, its description and each argument group with every option's help. The parser is
walked generically (groups, sub-parsers, actions), so regrouped or new options appear without editing
the docs; the reference is never written by hand.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

MARKER = "<!-- cli-reference -->"
ROOT = Path(__file__).resolve().parents[2]
USAGE_WIDTH = 88


def _escape(text: str) -> str:
    """Text made safe for one Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _expand_help(action: argparse.Action, prog: str) -> str:
    """The help text with argparse's %(default)s-style fields filled in, as `--help` prints it."""
    if not action.help or action.help == argparse.SUPPRESS:
        return ""
    fields = {key: value for key, value in vars(action).items() if value is not argparse.SUPPRESS}
    fields["prog"] = prog
    for key in ("choices",):
        if fields.get(key) is not None:
            fields[key] = ", ".join(map(str, fields[key]))
    try:
        return action.help % fields
    except (KeyError, TypeError, ValueError):
        return action.help


def _option_cell(action: argparse.Action, parser: argparse.ArgumentParser) -> str:
    """How the option is written on the command line, e.g. `-o DIR, --out DIR`."""
    formatter = parser._get_formatter()  # argparse's own rendering of flags and metavars
    text = formatter._format_action_invocation(action)
    return "`" + text.replace("`", "") + "`"


def _details(action: argparse.Action) -> str:
    """Default and choices, where they say something the help may not."""
    parts = []
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        parts.append("choices: " + ", ".join(f"`{choice}`" for choice in action.choices))
    default = action.default
    said = "default" in (action.help or "")  # the help already names its default
    if action.option_strings and not said and default not in (None, False, argparse.SUPPRESS, "", [], ()) and action.nargs != 0:
        parts.append(f"default: `{default}`")
    return "; ".join(parts)


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse._SubParsersAction]:
    return [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]


def render_parser(parser: argparse.ArgumentParser, name: str, level: int = 2) -> list[str]:
    """Markdown for one parser and, below it, each of its sub-commands."""
    lines = [f"{'#' * level} {name}", ""]
    if parser.description:
        lines += [parser.description.strip(), ""]
    usage = argparse.HelpFormatter(parser.prog, width=USAGE_WIDTH)  # fixed width: the page does not depend on the terminal
    usage.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    lines += ["```text", usage.format_help().strip(), "```", ""]
    for group in parser._action_groups:
        actions = [
            action for action in group._group_actions
            if action.help != argparse.SUPPRESS and not isinstance(action, argparse._HelpAction)
        ]
        if not actions:
            continue
        lines += [f"**{group.title}**" + (f": {group.description}" if group.description else ""), ""]
        lines += ["| argument | help |", "|---|---|"]
        for action in actions:
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    lines.append(f"| `{choice.dest}` | {_escape(choice.help or '')} |")
                continue
            help_text = _escape(_expand_help(action, parser.prog))
            extra = _details(action)
            cell = help_text + (f" ({extra})" if extra else "")
            lines.append(f"| {_option_cell(action, parser)} | {cell} |")
        lines.append("")
    for subparsers in _subparsers(parser):
        for sub_name, sub_parser in subparsers.choices.items():
            lines += render_parser(sub_parser, f"{name} {sub_name}", min(level + 1, 4))
    return lines


def cli_reference() -> str:
    """The whole CLI reference as Markdown, from the parser of the checkout this hook belongs to."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # this checkout's iapas, not another one installed in the venv
    from iapas.cli import build_parser

    parser = build_parser()
    parser.prog = "iapas"
    lines = render_parser(parser, "iapas")
    return "\n".join(lines)


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Replaces the marker with the generated reference."""
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, cli_reference())
