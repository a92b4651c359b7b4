"""`iapas bench`: timing a method (`runner.py`) and the official per-image loop it is compared with (`naive.py`).

Speed is measured here, never in timed tests.
"""
