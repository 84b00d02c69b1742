"""Networks pushed to the activation ranges trained networks reach (pre-activations at +-TARGET): a trained exercise
U-Net reaches -145 at its LogSigmoids. Shared by the export and the fast-network tests."""
import torch
from torch import nn

from pyddpm.nets import DDPMUNet, ExerciseUNet, FcNetwork
from pyddpm.nets.fc import ACTIVATIONS
from pyddpm.nets.unet_ddpm import ResidualBlock

TARGET = 200.0  # |pre-activation| every scaled layer reaches on the example batch



def all_but_the_output_layer(*kinds):
    """The layers of ``kinds`` in a network except the last one (the output layer has no activation after it)."""
    return lambda network: [m for m in network.modules() if isinstance(m, kinds)][:-1]


def ddpm_unet_preactivations(network: DDPMUNet) -> list[nn.Module]:
    """The layers whose outputs feed a SiLU: the residual blocks' and the head's GroupNorms, the time MLP's first
    Linear (not the attention's GroupNorm: it feeds q, k, v)."""
    return ([m for block in [*network.down, *network.middle, *network.up] if isinstance(block, ResidualBlock)
             for m in (block.norm1, block.norm2)] + [network.head[0], network.time_embedding[1]])


NETWORKS = {  # name: (network, sample shape, the layers whose outputs are pre-activations)
    **{f"fc-{a}": (lambda a=a: FcNetwork(2, 32, num_layers=3, activation=a, time_embedding="sinusoidal"), (2,),
                   all_but_the_output_layer(nn.Linear)) for a in ACTIVATIONS},
    "unet": (lambda: ExerciseUNet(channels=(8, 16, 16)), (784,),
             all_but_the_output_layer(nn.Conv2d, nn.ConvTranspose2d)),
    "unet-ddpm": (lambda: DDPMUNet(channels=(16, 32), num_res_blocks=1, dropout=0.0), (784,),
                  ddpm_unet_preactivations),
}


def push_preactivations(network: nn.Module, layers: list[nn.Module], x: torch.Tensor, t: torch.Tensor) -> float:
    """Rescale each of ``layers`` in forward order so that its output (an activation's input) reaches |TARGET|
    on (x, t); returns the smallest of the layers' largest |pre-activation| afterwards."""
    order = []
    hooks = [m.register_forward_hook(lambda m, i, o: order.append(m)) for m in layers]
    with torch.no_grad():
        network(x, t)
    for h in hooks:
        h.remove()
    assert set(order) == set(layers)
    seen = {}
    for layer in dict.fromkeys(order):  # first use order, each layer once
        hook = layer.register_forward_hook(lambda m, i, o: seen.__setitem__(m, float(o.abs().max())))
        with torch.no_grad():
            network(x, t)
            factor = TARGET / seen[layer]
            layer.weight.mul_(factor)
            if layer.bias is not None:
                layer.bias.mul_(factor)
        hook.remove()
    hooks = [m.register_forward_hook(lambda m, i, o: seen.__setitem__(m, float(o.abs().max()))) for m in order]
    with torch.no_grad():
        out = network(x, t)
    for h in hooks:
        h.remove()
    assert torch.isfinite(out).all()
    return min(seen.values())
