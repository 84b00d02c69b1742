"""CPU acceleration of pyddpm's networks: one table of levers (``levers.LEVERS``), the fast copies made from it for
sampling and training (``fast_network.fast_network``, ``training_network``), the samplers' choice of network
(``loop_network``), and the allocator setting of the command-line tools. ``python -m pyddpm.accel NETWORK`` prints
the levers a network gets on this CPU. The rest of the package imports only what this module exports."""
from .fast_network import PRECISIONS, check_precision_hardware, native_bf16, training_network
from .levers import LEVERS, levers_for
from .memory import keep_freed_memory
from .runtime import RUNTIMES, check_runtime_options, loop_network, sampling_network

__all__ = ["LEVERS", "PRECISIONS", "RUNTIMES", "check_precision_hardware", "check_runtime_options",
           "keep_freed_memory", "levers_for", "loop_network", "native_bf16", "sampling_network", "training_network"]
