"""pyddpm: Denoising Diffusion Probabilistic Models (Ho et al. 2020) in PyTorch, with a fused C++/CUDA
reverse step and export to TorchScript and ONNX.

``DDPM`` and ``FcNetwork`` (the exercise's API) are imported on first use, so importing a part of the package
(``pyddpm.ops``, ``pyddpm.philox``, ...) loads only that part."""
__version__ = "0.1.0"

__all__ = ["DDPM", "FcNetwork", "__version__"]


def __getattr__(name: str):
    if name == "DDPM":
        from .diffusion import DDPM

        return DDPM
    if name == "FcNetwork":
        from .nets import FcNetwork

        return FcNetwork
    raise AttributeError(f"module 'pyddpm' has no attribute {name!r}")
