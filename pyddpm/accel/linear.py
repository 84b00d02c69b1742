"""Linear levers: nn.Linear (and the activation after it) through oneDNN's ``torch.ops.mkldnn._linear_pointwise``,
float32 or with bfloat16 weights made once; a SiLU after it through ``pyddpm::silu_`` in place on the product;
and an FcNetwork's time folded into its first layer's bias for a batch at one time step. The private oneDNN
entry point is used only where it works: if it is missing or raises, the layer runs as the plain module."""
from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from ..nets.fc import FcNetwork
from . import kernels

# oneDNN's fused post-ops: (attr, scalars, algorithm) for an activation module
POST_OPS = {nn.ReLU: lambda m: ("relu", [], ""), nn.LeakyReLU: lambda m: ("leaky_relu", [m.negative_slope], ""),
            nn.SiLU: lambda m: ("swish", [], ""), nn.Tanh: lambda m: ("tanh", [], ""),
            nn.GELU: lambda m: ("gelu", [], m.approximate)}
CHEAP_POST_OPS = (nn.ReLU, nn.LeakyReLU)  # fused faster than after the product on every CPU


def onednn_linear_works(dtype: torch.dtype = torch.float32) -> bool:
    """Whether torch's private ``mkldnn._linear_pointwise`` exists and computes a Linear in ``dtype`` here."""
    try:
        x, w = torch.ones(2, 3, dtype=dtype), torch.ones(4, 3, dtype=dtype)
        y = torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
        return bool((y.float() == 3.0).all())
    except Exception:  # noqa: BLE001 - missing, unsupported in this build or on this CPU: the plain module runs
        return False


def _fall_back(err: Exception) -> None:
    warnings.warn(f"pyddpm.accel: oneDNN's Linear failed ({type(err).__name__}: {err}); the network's Linear "
                  "layers run as torch's", RuntimeWarning, stacklevel=3)


class OneDNNLinear(nn.Module):
    """``activation(linear(x))`` for inference in one oneDNN call, float32 or with bfloat16 weights (``dtype``:
    then x is rounded to bfloat16 as autocast would and the product accumulates in float32). The activation is
    oneDNN's post-op (``post_op``), ``pyddpm::silu_`` on the product (``silu_kernel``), or the module after the
    product. If oneDNN raises, this layer runs as F.linear from then on (one warning)."""

    def __init__(self, linear: nn.Linear, activation: nn.Module | None = None, dtype: torch.dtype = torch.float32,
                 post_op: bool = False, silu_kernel: bool = False):
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().to(dtype, copy=True), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(dtype, copy=True),
                                                                  requires_grad=False)
        self.activation = activation
        self.silu_kernel = silu_kernel and type(activation) is nn.SiLU
        self.post_op = POST_OPS[type(activation)](activation) if post_op and not self.silu_kernel else None
        self.onednn = True

    def product(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """This layer's activation of x weight^T + bias (``weight`` in this layer's dtype)."""
        x = x.to(weight.dtype)
        if self.onednn:
            try:
                y = torch.ops.mkldnn._linear_pointwise(x, weight, bias, *(self.post_op or ("none", [], "")))
            except Exception as err:  # noqa: BLE001 - see onednn_linear_works
                self.onednn = False
                _fall_back(err)
            else:
                if self.silu_kernel and kernels.takes(y):
                    kernels.silu_(y)
                    return y
                return y if self.post_op is not None or self.activation is None else self.activation(y)
        y = nn.functional.linear(x, weight, None if bias is None else bias.to(weight.dtype))
        return y if self.activation is None else self.activation(y)

    def forward(self, x: Tensor) -> Tensor:
        return self.product(x, self.weight, self.bias)


class _OneDNNLinearFunction(torch.autograd.Function):
    """x W^T + b and its gradients: x W^T and dx = g W on oneDNN, dW = g^T x by torch.mm, db = sum g."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        linear = torch.ops.mkldnn._linear_pointwise
        grad_x = linear(grad, weight.t().contiguous(), None, "none", [], "") if ctx.needs_input_grad[0] else None
        grad_w = grad.t().mm(x) if ctx.needs_input_grad[1] else None  # reads the transposes in place
        grad_b = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


class TrainableOneDNNLinear(nn.Module):
    """An nn.Linear (its own weight and bias Parameters, so the same state_dict) on oneDNN, with gradients; as
    F.linear for inputs other than float32 2-D ones, and from the first time oneDNN raises (one warning)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.onednn = True

    def forward(self, x: Tensor) -> Tensor:
        if self.onednn and x.dim() == 2 and x.dtype == self.weight.dtype == torch.float32:
            try:
                return _OneDNNLinearFunction.apply(x.contiguous(), self.weight, self.bias)
            except Exception as err:  # noqa: BLE001 - see onednn_linear_works
                self.onednn = False
                _fall_back(err)
        return nn.functional.linear(x, self.weight, self.bias)


def one_time_step(t: Tensor) -> bool:
    """Whether every row of ``t`` holds the same time (as in the samplers' batches; a stride of 0 says so at once)."""
    return t.numel() > 0 and (t.stride(0) == 0 or bool((t == t.reshape(-1)[0]).all()))


class OneTimeStepFcNetwork(nn.Module):
    """An FcNetwork's fast copy (``fast``, its first layer a OneDNNLinear) that, for a batch at one time step (as
    the samplers' are), folds the time into the first layer: the time features are computed for one row, and the
    first layer's time columns times them, plus its bias, become the float32 bias of a product over the other
    inputs only: pre-activation = W_x x + (W_t phi(t) + b). Other batches (several time steps) take ``fast``."""

    def __init__(self, fast: FcNetwork, network: FcNetwork):
        super().__init__()
        self.fast = fast
        first = network.network[0]
        self.first = fast.network[0]
        self.x_weight = nn.Parameter(self.first.weight[:, :network.input_features].contiguous(), requires_grad=False)
        self.t_weight = nn.Parameter(first.weight.detach()[:, network.input_features:].float().clone(),
                                     requires_grad=False)
        self.t_bias = nn.Parameter(first.bias.detach().float().clone(), requires_grad=False)
        self.rest = list(fast.network)[1:]  # a plain list: slicing the Sequential on every call costs

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        fast = self.fast
        if not (x.dim() == 2 and x.shape[1] == fast.input_dim and t.numel() == x.shape[0] and one_time_step(t)):
            return fast(x, t)
        with torch.autocast(x.device.type, enabled=False):
            bias = torch.addmm(self.t_bias, fast.time_features(t.reshape(-1, 1)[:1].float()), self.t_weight.t())[0]
        inputs = x if fast.input_embedding is None else fast.input_embedding.with_input(x)
        h = self.first.product(inputs, self.x_weight, bias)  # a float32 bias: added before any rounding
        for layer in self.rest:
            h = layer(h)
        return h
