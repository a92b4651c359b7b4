"""`iapas reproduce`: a paper's table in one command, ours beside the paper's numbers.

`tables.py` says what each table is (its rows, datasets, protocol, recipe and the paper's numbers, which
ship as data files under `iapas/resources/papers/` and `iapas/resources/paper_table1.toml`); `locate.py`
finds the dataset folders and lists every missing dataset or weights file before anything runs;
`run.py` runs the cells through `iapas eval`'s machinery (`iapas/evaluation/evaluate.py`), resumable per
category, under one progress bar; `report.py` writes ours / paper / difference as markdown, CSV and a figure.
"""
