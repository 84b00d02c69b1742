"""pyddpm: Denoising Diffusion Probabilistic Models (Ho et al. 2020) in PyTorch, with a fused C++/CUDA
reverse step and export to TorchScript and ONNX."""
__version__ = "0.1.0"

from .diffusion import DDPM  # noqa: E402
from .nets import FcNetwork  # noqa: E402

__all__ = ["DDPM", "FcNetwork", "__version__"]
