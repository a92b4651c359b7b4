"""Running the `iapas` CLI in-process from tests: the exit code with what it printed, and its error lines."""
from __future__ import annotations

from iapas.cli import main


def run(capsys, *argv):
    """`iapas ARGV...` in this process: (exit code, stdout, stderr); arguments may be paths or numbers."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_lines(err: str) -> list[str]:
    """The `iapas: error` lines of what the CLI wrote to stderr."""
    return [line for line in err.splitlines() if line.startswith("iapas: error")]
