"""MkDocs hook: a page that names a file of this repository that does not exist fails the strict build.

Pages cite source files (`iapas/acceleration/mask_upsampling.py`, `tests/test_winclip.py`, ...); when code
moves, such a mention goes stale silently. Every path under iapas/ or benchmarks/, and every tests/test_*.py,
named on a page (or in a file it includes with `--8<--`) must exist, else a warning, which `--strict` turns
into a failed build. Other roots are not checked: the reference repositories' files cited on the method
pages (`scripts/...`, `examples/...`) are not ours. Pages under docs/notes/ are records of their day and may
name files since moved, so they are not checked.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# only our own roots: pages also cite the reference repositories' files (`scripts/musc.sh`, `utils/function.py`),
# whose folder names other than these can be the same as ours
PATH = re.compile(r"(?<![\w/.])(iapas/[\w./-]*[\w/]|tests/test_\w+\.py|benchmarks/[\w./-]*[\w/])")
INCLUDE = re.compile(r'^--8<-- "([^"]+)"\s*$', re.MULTILINE)
UNCHECKED = ("notes/",)
log = logging.getLogger("mkdocs.hooks.source_paths")


def missing_paths(text: str) -> list[str]:
    """The repository paths named in `text` that do not exist, in order of first mention."""
    missing = []
    for match in PATH.finditer(text):
        path = match.group(1)
        if not (ROOT / path).exists() and path not in missing:
            missing.append(path)
    return missing


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Warns for every repository path the page (or its includes) names that is not there."""
    if page.file.src_uri.startswith(UNCHECKED):
        return markdown
    texts = [markdown] + [(ROOT / name).read_text(encoding="utf-8") for name in INCLUDE.findall(markdown)
                          if (ROOT / name).is_file()]
    for text in texts:
        for path in missing_paths(text):
            log.warning("Doc file '%s' names '%s', which is not in the repository", page.file.src_uri, path)
    return markdown
