"""Runs over many images: batching, claims between processes, fingerprints and result files.

`batch.py` segments a folder image by image (reader and writer threads, failures noted, the batch goes on),
`claims.py` lets two processes share an output folder without doing an image twice, `fingerprint.py` records
what defines a run so results are reused only under the same settings, and `outputs.py` names and writes one
image's result files atomically.
"""
