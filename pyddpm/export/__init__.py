"""Export trained runs to ONNX and TorchScript so other programs sample without pyddpm; `pyddpm-export`.

Files: ``denoiser.onnx``/``step.onnx`` (``onnx_export``), ``denoiser.pt``/``sampler.pt`` (``torchscript``), the
modules they hold (``modules``), their metadata (``metadata``) and the TorchScript Philox noise (``noise``).
"""
from .run import FORMATS, export_run
from .metadata import EXPORT_FORMAT, NOISE_SPEC
from .onnx_export import ExportError

__all__ = ["EXPORT_FORMAT", "FORMATS", "NOISE_SPEC", "ExportError", "export_run"]
