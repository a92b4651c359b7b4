"""MkDocs hook: puts the navigation in reading order without an explicit `nav`.

With no `nav` in mkdocs.yml every page under docs/ is built and listed (pages added later included),
but in file-name order. This hook moves the pages named in ORDER to the front, in that order; any other
page or section keeps its place after them, so a new page needs no edit here.
"""
from __future__ import annotations

# a page's path under docs/ (or a section's folder) -> its place; unnamed ones follow in file-name order
ORDER = [
    "index.md", "weights.md", "segment.md", "decisions.md", "calibration.md", "recipes.md", "methods/",
    "evaluation.md", "speed.md", "webapp.md", "ray.md", "export.md", "benchmarks.md", "input-behaviour.md",
    "cli.md", "api.md", "layout.md", "notes/",
]
METHOD_ORDER = ["methods/index.md", "methods/iapas.md"]


def _key(item, order: list[str]) -> int:
    """The item's place in `order`, or past the end."""
    if getattr(item, "file", None) is not None:
        name = item.file.src_uri
    else:  # a section: named by the folder of its first page
        pages = [child for child in getattr(item, "children", []) if getattr(child, "file", None) is not None]
        name = pages[0].file.src_uri.rsplit("/", 1)[0] + "/" if pages else ""
    return order.index(name) if name in order else len(order)


def on_nav(nav, config, files):
    """Sorts the top level by ORDER and the methods section by METHOD_ORDER (stable: the rest keep their order)."""
    nav.items.sort(key=lambda item: _key(item, ORDER))
    for item in nav.items:
        if getattr(item, "children", None) and _key(item, ORDER) == ORDER.index("methods/"):
            item.children.sort(key=lambda child: _key(child, METHOD_ORDER))
    return nav
