"""Model weights: where they are found, how they are fetched, and the stand-ins tests and benchmarks build.

`manifest.py` reads the one manifest (names, files, hashes) and finds a model's file in a weights folder,
`download.py` fetches hub and URL files with resume and hash checks, `demo.py` builds the tiny random demo
models in the real on-disk formats, `random_full.py` builds full-size models with random weights for timing, and
`official.py` writes iapas's AnomalyCLIP and FAPrompt prompt files in their authors' layout.
"""
