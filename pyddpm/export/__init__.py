"""Export trained runs to ONNX and TorchScript so other programs sample without pyddpm; `pyddpm-export`.

Files: ``denoiser.onnx``/``step.onnx``/``solver_step.onnx`` (``onnx_export``), ``denoiser.pt``/``sampler.pt``
(``torchscript``), the modules they hold (``modules``), the few-step plans they carry (``plans``), their metadata
(``metadata``) and the TorchScript Philox noise (``noise``).
"""
from .run import FORMATS, export_run
from .metadata import EXPORT_FORMAT, NOISE_SPEC
from .onnx_export import ExportError
from .plans import SAMPLERS

__all__ = ["EXPORT_FORMAT", "FORMATS", "NOISE_SPEC", "SAMPLERS", "ExportError", "export_run"]
