"""Exported-model file formats: how a torch module is written as ONNX or OpenVINO IR, and how it is run back.

A `Runner` takes the module's inputs as numpy arrays, in the exported order, and returns its outputs in
the exported order. The ONNX file comes from torch's TorchScript exporter (`dynamo=False`): it traces
SAM's ViT and Grounding DINO's Swin at a fixed input size without the onnxscript package the dynamo
exporter needs. OpenVINO IR is converted from that ONNX file (`openvino.convert_model`) and saved with
fp32 weights, and run at fp32 inference precision, so it matches torch as closely as ONNX Runtime does.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ...errors import CorruptWeightsError, WeightsError
from ...files import atomic_write, temporary_name
from ...registry import Registry

ONNX_OPSET = 17  # LayerNormalization is a single op from 17 on; every runtime here reads it
Runner = Callable[[Sequence[np.ndarray]], list[np.ndarray]]


@dataclass(frozen=True)
class Signature:
    """What an exported module takes and gives: input names with fixed shapes, and output names."""

    inputs: tuple[tuple[str, tuple[int, ...]], ...]
    outputs: tuple[str, ...]

    @property
    def input_names(self) -> list[str]:
        return [name for name, _ in self.inputs]


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


def unreadable(path: Path, error: BaseException) -> CorruptWeightsError:
    """The one-line error for an exported file a runtime cannot read."""
    return CorruptWeightsError(f"exported model {path} is corrupt or unreadable ({_first_line(error)}); "
                               "delete it, or write it again with `iapas export`")


def export_onnx(module: torch.nn.Module, examples: Sequence[torch.Tensor], signature: Signature, path: Path) -> Path:
    """Trace `module` on `examples` into an ONNX file at `path`, atomically."""

    def write(temporary: Path) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about Python ints: the shapes are fixed on purpose
            torch.onnx.export(module, tuple(examples), str(temporary), dynamo=False, opset_version=ONNX_OPSET,
                              input_names=signature.input_names, output_names=list(signature.outputs),
                              do_constant_folding=True)

    return atomic_write(path, write)


def _check_inputs(path: Path, found: dict[str, tuple], signature: Signature) -> None:
    expected = {name: tuple(shape) for name, shape in signature.inputs}
    if set(found) != set(expected):
        raise WeightsError(f"exported model {path} takes inputs {sorted(found)}, not {sorted(expected)}: "
                           "it was exported from another model; delete it or re-run `iapas export`")
    for name, shape in expected.items():
        if tuple(found[name]) != shape:
            raise WeightsError(f"exported model {path} takes {name} of shape {tuple(found[name])}, not {shape}; "
                               "delete it or re-run `iapas export`")


def load_onnx(path: Path, signature: Signature, device: torch.device) -> Runner:
    """An ONNX Runtime session on `path` as a Runner (CUDA when the device is a GPU and the build has it)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the same threads torch uses: a fair comparison
    options.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as error:  # onnxruntime raises its own pybind types (InvalidProtobuf, Fail, ...)
        raise unreadable(path, error) from None
    _check_inputs(path, {i.name: tuple(i.shape) for i in session.get_inputs()}, signature)
    names = list(signature.outputs)

    def run(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        return session.run(names, dict(zip(signature.input_names, arrays)))

    return run


def export_openvino(module: torch.nn.Module, examples: Sequence[torch.Tensor], signature: Signature, path: Path) -> Path:
    """ONNX first, then OpenVINO IR (`path` is the .xml; its .bin lies beside it), both moved into place at the end."""
    import openvino as ov

    path.parent.mkdir(parents=True, exist_ok=True)
    onnx_file = export_onnx(module, examples, signature, temporary_name(path.with_suffix(".onnx")))
    xml = temporary_name(path)
    try:
        ov.save_model(ov.convert_model(str(onnx_file)), str(xml), compress_to_fp16=False)  # fp32, as torch runs
        os.replace(xml.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(xml, path)  # the .xml last: its presence means the pair is complete
    finally:
        for leftover in (onnx_file, xml, xml.with_suffix(".bin")):
            leftover.unlink(missing_ok=True)
    return path


def load_openvino(path: Path, signature: Signature, device: torch.device) -> Runner:
    """An OpenVINO CPU compiled model on `path` (its .xml) as a Runner, at fp32 inference precision."""
    import openvino as ov

    core = ov.Core()
    try:
        model = core.read_model(str(path))
        found = {port.get_any_name(): tuple(port.get_shape()) for port in model.inputs}
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                     "INFERENCE_NUM_THREADS": torch.get_num_threads()})
    except Exception as error:  # OpenVINO raises RuntimeError subclasses with multi-line messages
        raise unreadable(path, error) from None
    _check_inputs(path, found, signature)
    request = compiled.create_infer_request()
    ports = [compiled.output(name) for name in signature.outputs]

    def run(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        results = request.infer(dict(zip(signature.input_names, arrays)))
        return [np.array(results[port]) for port in ports]

    return run


@dataclass(frozen=True)
class Format:
    """One exported-file format: its file suffix, its writer and its reader."""

    name: str
    suffix: str
    export: Callable[[torch.nn.Module, Sequence[torch.Tensor], Signature, Path], Path]
    load: Callable[[Path, Signature, torch.device], Runner]
    package: str  # the Python package its runtime needs
    companions: tuple[str, ...] = ()  # suffixes of the files written beside the main one (OpenVINO's weights .bin)

    def files(self, path: Path) -> list[Path]:
        """Every file the export at `path` consists of."""
        return [path, *[path.with_suffix(suffix) for suffix in self.companions]]


FORMATS: Registry[Format] = Registry("export format")
FORMATS.register("onnx")(Format("onnx", ".onnx", export_onnx, load_onnx, "onnxruntime"))
FORMATS.register("openvino")(Format("openvino", ".xml", export_openvino, load_openvino, "openvino", (".bin",)))
