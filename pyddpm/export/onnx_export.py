"""ONNX export: ``denoiser.onnx``, ``step.onnx`` and ``solver_step.onnx`` with a dynamic batch, pyddpm metadata,
checked by ``onnx.checker`` and validated against PyTorch under onnxruntime before they count as written."""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch
from torch import nn

_INSTALL_HINT = "ONNX export needs onnx, onnxscript and onnxruntime: pip install 'pyddpm[export]'"


DYNAMO = "torch.export (dynamo=True)"
FALLBACK = "TorchScript-based (dynamo=False, deprecated)"


class ExportError(RuntimeError):
    """An export that failed, or whose result does not reproduce PyTorch."""


def require_onnx():
    """The onnx and onnxruntime modules; ExportError with the install hint when either is missing."""
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError as err:
        raise ExportError(f"{_INSTALL_HINT} ({err})") from None
    return onnx, onnxruntime


def onnx_proto(module: nn.Module, args: tuple, input_names: list[str], output_name: str | list[str], dynamo: bool,
               static_inputs: tuple[str, ...] = ()):
    """The ONNX model of ``module`` (outputs named ``output_name``, one name or a list) with dim 0 of every input but
    ``static_inputs`` dynamic ("batch"), and the exporter that made it: torch.export-based (``dynamo=True``) where
    it works, else (or with ``dynamo=False``) the deprecated TorchScript-based one, with a warning naming why."""
    batch_inputs = [name not in static_inputs for name in input_names]
    output_names = [output_name] if isinstance(output_name, str) else list(output_name)
    onnx, _ = require_onnx()
    if dynamo:
        batch = torch.export.Dim("batch")
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*axis name.*will not be used")
                program = torch.onnx.export(module, args, dynamo=True, input_names=input_names,
                                            output_names=output_names, external_data=False, verbose=False,
                                            dynamic_shapes=tuple({0: batch} if b else None for b in batch_inputs))
            return program.model_proto, DYNAMO
        except Exception as err:  # noqa: BLE001 - any failure of the new exporter falls back to the old one
            root = err
            while root.__cause__ is not None:
                root = root.__cause__
            reason = f"{type(root).__name__}: {(str(root).splitlines() or [''])[0]}"
            warnings.warn(f"torch.onnx.export(dynamo=True) failed for {type(module).__name__} ({reason}); falling "
                          "back to the deprecated TorchScript-based exporter (dynamo=False)", stacklevel=3)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        for category in (FutureWarning, DeprecationWarning, torch.jit.TracerWarning):
            warnings.simplefilter("ignore", category)
        torch.onnx.export(module, args, buffer, dynamo=False, input_names=input_names, output_names=output_names,
                          dynamic_axes={name: {0: "batch"} for name, b in zip(input_names, batch_inputs) if b},
                          opset_version=17)
    return onnx.load_from_string(buffer.getvalue()), FALLBACK


def export_onnx(module: nn.Module, args: tuple, path: str | Path, input_names: list[str],
                output_name: str | list[str], metadata: dict[str, str], atol: float = 1e-4, dynamo: bool = True,
                static_inputs: tuple[str, ...] = ()) -> str:
    """Write ``module`` to ``path`` as ONNX with ``metadata`` in metadata_props; returns the exporter used
    (``DYNAMO``, or ``FALLBACK`` when the dynamo exporter fails or ``dynamo`` is False). Dim 0 of every input but
    ``static_inputs`` is the dynamic batch.

    The file is checked with ``onnx.checker`` (full check) and run once under onnxruntime on ``args`` and on a
    batch of another size; ExportError if any output differs from PyTorch by more than ``atol`` (relative to 1 or
    the output's magnitude, whichever is larger).
    """
    onnx, _ = require_onnx()
    proto, exporter = onnx_proto(module, args, input_names, output_name, dynamo, static_inputs)
    metadata = {**metadata, "exporter": exporter}
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name, proto.producer_version = "pyddpm-export", metadata["pyddpm_version"]
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as err:
        raise ExportError(f"{Path(path).name}: onnx.checker rejected the exported model: {err}") from None
    path = Path(path)
    onnx.save(proto, path)
    validate_onnx(path, module, args, atol, static_inputs)
    return exporter


def validate_onnx(path: Path, module: nn.Module, args: tuple, atol: float, static_inputs: tuple[str, ...] = ()) -> None:
    """Run the ONNX file under onnxruntime on ``args`` and on them cut to a smaller batch (all but
    ``static_inputs``); compare every output with PyTorch."""
    _, ort = require_onnx()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    batch = args[0].shape[0]
    cut = tuple(a if n in static_inputs else a[: max(1, batch // 2)] for n, a in zip(names, args))
    for inputs in (args, cut):
        with torch.no_grad():
            expected = module(*inputs)
        expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
        outputs = session.run(None, {n: a.detach().cpu().numpy() for n, a in zip(names, inputs)})
        for got, want in zip(outputs, (e.numpy() for e in expected)):
            if got.shape != want.shape:
                raise ExportError(f"{path.name}: onnxruntime returned shape {got.shape}, PyTorch {want.shape}")
            diff = float(abs(got - want).max())
            tol = atol * max(1.0, float(abs(want).max()))
            if not diff <= tol:
                raise ExportError(f"{path.name} does not reproduce PyTorch: max abs difference {diff:.3g} > {tol:.3g} "
                                  f"at batch {inputs[0].shape[0]}; the network may use an op the exporter "
                                  "mistranslates")
