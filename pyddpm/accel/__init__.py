"""CPU acceleration of pyddpm's networks: fast copies for sampling and training, the onnxruntime runtime, and the
allocator setting of the command-line tools. The rest of the package imports only what this module exports."""
from .fast_network import PRECISIONS, check_precision_hardware, native_bf16, training_network
from .memory import keep_freed_memory
from .runtime import RUNTIMES, check_runtime_options, loop_network, sampling_network

__all__ = ["PRECISIONS", "RUNTIMES", "check_precision_hardware", "check_runtime_options",
           "keep_freed_memory", "loop_network", "native_bf16", "sampling_network", "training_network"]
