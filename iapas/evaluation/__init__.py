"""Evaluation: run a method over a benchmark's categories and measure it.

`evaluate.py` drives a run (resume, fingerprints, saved maps), `protocols.py` holds the measuring rules
(the paper's 400x400 protocol and the full-resolution one), `metrics.py` the metrics (AUROC, AP, F1-max,
AUPRO), `saved_maps.py` maps written by a run or read back with `--from-maps`, and `reports.py` the tables,
PR curves and the comparison with a paper's numbers. Nothing here is imported by the methods.
"""
