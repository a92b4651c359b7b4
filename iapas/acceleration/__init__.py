"""Making the same computation faster: arithmetic precision, int8 quantisation, thread counts, exported
encoders run by ONNX Runtime or OpenVINO (`runtimes/`), and region-only mask up-sampling.

Each piece changes how a result is computed, never what it means; each states its tolerance where it
changes the numbers.
"""
