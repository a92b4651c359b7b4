"""`report.html`: one self-contained offline page over a run's output folder.

The page holds its data, style and script inline (nothing is fetched from a network when it is viewed);
it links the folder's own files by relative paths: a thumbnail per image in the gallery, the full-size
overlay, map and mask on click. It shows the counts (anomalous, normal, undecided, failed), a gallery
sorted by score, highest first, filterable by verdict, in pages of 100 thumbnails that load lazily, so
a run of 10,000 images stays usable.
"""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote

from .summary import result_records

REPORT_FILE = "report.html"
PAGE_SIZE = 100


def link(name: str) -> str:
    """A relative URL of a file in the output folder (each path segment quoted)."""
    return "/".join(quote(part) for part in name.split("/"))


def report_items(out_dir: Path, fingerprint: str | None = None) -> list[dict[str, Any]]:
    """One entry per finished image, highest score first."""
    from ..runs.outputs import MASK_SUFFIX, THUMBNAILS

    items = []
    for name, record in result_records(out_dir, fingerprint):
        has_mask = (Path(out_dir) / f"{name}{MASK_SUFFIX}").is_file()
        items.append({
            "name": name, "image": str(record.get("image", "")), "score": float(record.get("image_score", 0.0)),
            "verdict": str(record.get("verdict", "undecided")), "regions": len(record.get("regions") or []),
            "thumb": link(f"{THUMBNAILS}/{name}.jpg"), "overlay": link(f"{name}_overlay.png"),
            "map": link(f"{name}_map.png"), "mask": link(f"{name}{MASK_SUFFIX}") if has_mask else "",
        })
    items.sort(key=lambda item: (-item["score"], item["name"]))
    return items


def write_report(out_dir: Path, fingerprint: str | None = None, failures: Sequence[tuple[str, str]] = (),
                 title: str = "iapas run", page_size: int = PAGE_SIZE) -> Path:
    """Write report.html atomically from the folder's records and this run's failures ((image, message) pairs)."""
    from .summary import write_if_changed

    items = report_items(out_dir, fingerprint)
    counts = {verdict: sum(item["verdict"] == verdict for item in items) for verdict in ("anomalous", "normal", "undecided")}
    counts["failed"] = len(failures)
    data = {"items": items, "counts": counts, "failures": [[str(image), message] for image, message in failures],
            "page_size": page_size}
    payload = json.dumps(data).replace("</", "<\\/")  # a name holding "</script>" cannot end the script early
    page = TEMPLATE.replace("%TITLE%", html.escape(title)).replace("%DATA%", payload)
    return write_if_changed(Path(out_dir) / REPORT_FILE, page)


TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>%TITLE%</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;margin:1em;background:#fafafa;color:#222}
.counts span{display:inline-block;margin-right:1.2em;font-size:1.2em}
.anomalous{color:#c81e1e}.normal{color:#1e8c3c}.undecided{color:#666}.failed{color:#a05a00}
#gallery{display:flex;flex-wrap:wrap;gap:8px;margin-top:1em}
.card{width:200px;background:#fff;border:2px solid #ddd;border-radius:6px;padding:4px;cursor:pointer;font-size:12px}
.card.anomalous{border-color:#c81e1e}.card.normal{border-color:#1e8c3c}
.card img{width:192px;height:auto;display:block}
.card .name{word-break:break-all}
#viewer{display:none;position:fixed;inset:0;background:rgba(0,0,0,.85);overflow:auto;padding:1em;color:#fff}
#viewer img{max-width:95vw;display:block;margin:0.5em 0;background:#fff}
#viewer a{color:#9cf}
nav button{margin:0 .3em}
</style></head><body>
<h1>%TITLE%</h1>
<div class="counts" id="counts"></div>
<p><label>verdict <select id="filter"><option value="all">all</option><option>anomalous</option><option>normal</option>
<option>undecided</option></select></label> <span id="shown"></span></p>
<nav id="pager"><button id="prev">&larr; previous</button><span id="page"></span><button id="next">next &rarr;</button></nav>
<div id="gallery"></div>
<div id="failures"></div>
<div id="viewer"></div>
<script id="data" type="application/json">%DATA%</script>
<script>
const data = JSON.parse(document.getElementById('data').textContent);
let page = 0, filtered = data.items;
const text = (tag, value, cls) => { const e = document.createElement(tag); e.textContent = value; if (cls) e.className = cls; return e; };
const counts = document.getElementById('counts');
for (const key of ['anomalous', 'normal', 'undecided', 'failed']) {
  const span = text('span', key + ': ', key); const n = text('b', String(data.counts[key])); n.id = 'count-' + key;
  span.appendChild(n); counts.appendChild(span);
}
function show() {
  const pages = Math.max(1, Math.ceil(filtered.length / data.page_size));
  page = Math.min(page, pages - 1);
  document.getElementById('page').textContent = 'page ' + (page + 1) + ' of ' + pages;
  document.getElementById('shown').textContent = filtered.length + ' images';
  const gallery = document.getElementById('gallery'); gallery.replaceChildren();
  for (const item of filtered.slice(page * data.page_size, (page + 1) * data.page_size)) {
    const card = document.createElement('div'); card.className = 'card ' + item.verdict; card.dataset.name = item.name;
    const img = document.createElement('img'); img.loading = 'lazy'; img.src = item.thumb; img.alt = item.name;
    card.append(img, text('div', item.name, 'name'), text('div', item.verdict + ' ' + item.score.toFixed(3) +
      (item.regions ? ', ' + item.regions + ' region(s)' : ''), item.verdict));
    card.onclick = () => open_(item); gallery.appendChild(card);
  }
}
function open_(item) {
  const viewer = document.getElementById('viewer'); viewer.replaceChildren();
  const close = text('button', 'close'); close.onclick = () => { viewer.style.display = 'none'; };
  viewer.append(close, text('h2', item.name + ': ' + item.verdict + ' (' + item.score.toFixed(4) + ')'), text('div', item.image));
  for (const [label, src] of [['overlay', item.overlay], ['map', item.map], ['mask', item.mask]]) {
    if (!src) continue;
    const a = document.createElement('a'); a.href = src; a.textContent = label + ' (full size)'; viewer.appendChild(a);
    const img = document.createElement('img'); img.src = src; img.alt = label; viewer.appendChild(img);
  }
  viewer.style.display = 'block';
}
document.getElementById('filter').onchange = (e) => {
  filtered = e.target.value === 'all' ? data.items : data.items.filter(i => i.verdict === e.target.value); page = 0; show();
};
document.getElementById('prev').onclick = () => { page = Math.max(0, page - 1); show(); };
document.getElementById('next').onclick = () => { page += 1; show(); };
if (data.failures.length) {
  const box = document.getElementById('failures'); box.appendChild(text('h2', 'failed images', 'failed'));
  const list = document.createElement('ul'); for (const [image, message] of data.failures) list.appendChild(text('li', message));
  box.appendChild(list);
}
show();
</script></body></html>
"""
