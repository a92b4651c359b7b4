"""Decisions on the line: from a score map to an OK/NG verdict and a binary defect mask.

- `thresholds.py`: the three ways to an operating threshold (normal images only, F1-optimal on a
  labelled set, by hand) and the rules' known answers;
- `thresholds_file.py`: the thresholds file (method, map-defining settings, models by content hash,
  score scale) and the one-line refusals when it was made for another setup;
- `mebin.py`: MEBin adaptive binarisation (AnomalyNCD, CVPR 2025), applied per folder or category;
- `regions.py`: region-of-interest masks, minimum defect area and 8-connected defect regions;
- `decide.py`: one image's decision (verdict, image score, mask, regions) from its Result and the settings;
- `summary.py`: the run's `summary.csv` (a row per image, appended as images complete, never half-written);
- `report.py`: the run's self-contained offline `report.html`.
"""
