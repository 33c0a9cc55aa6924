"""`train()` is a library function: what it changes of the process (speed flags, thread count, global RNGs) is put
back when it returns or raises, so that a notebook or a test that calls it finds the process as it left it.

Training itself never reads the global RNGs (every draw comes from generators seeded by `seeds.stream_seed`), but two things
it calls write them: seeding the initial weights, and Accelerate's `load_state`, which restores the RNG states saved
with a checkpoint.
"""

from __future__ import annotations

import logging
import random

import numpy as np
import torch

# (module, attribute) pairs of process-wide speed switches that training may turn on; restored in reverse order.
_SPEED_FLAGS = (
    (torch.backends.cuda.matmul, "allow_tf32"),
    (torch.backends.cudnn, "allow_tf32"),
    (torch.backends.cudnn, "benchmark"),
)


class RestoredProcessState:
    """`with RestoredProcessState() as state:` saves the speed flags, torch's thread count and the global RNG states
    (Python, NumPy, torch CPU) on entry and restores them on exit. CUDA's RNGs are saved by `keep_cuda_rng`, called
    once CUDA is in use (saving them on entry would start CUDA in a CPU run)."""

    def __enter__(self) -> RestoredProcessState:
        self.flags = [getattr(module, name) for module, name in _SPEED_FLAGS]
        self.matmul_precision = torch.get_float32_matmul_precision()
        self.num_threads = torch.get_num_threads()
        self.rng = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
        self.cuda_rng = None
        return self

    def keep_cuda_rng(self) -> None:
        """Call once CUDA is in use (and before anything writes its RNGs): all devices, as Accelerate's load_state
        writes them all."""
        if self.cuda_rng is None:
            self.cuda_rng = torch.cuda.get_rng_state_all()

    def __exit__(self, *exc_info) -> None:
        for (module, name), value in reversed(list(zip(_SPEED_FLAGS, self.flags))):
            setattr(module, name, value)
        # After the flags: matmul.allow_tf32 is a view of this setting, and "medium" has no allow_tf32 spelling.
        torch.set_float32_matmul_precision(self.matmul_precision)
        torch.set_num_threads(self.num_threads)
        python_rng, numpy_rng, torch_rng = self.rng
        random.setstate(python_rng)
        np.random.set_state(numpy_rng)
        torch.random.set_rng_state(torch_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)


def use_fast_cuda_kernels() -> None:
    """TF32 matmuls and convolutions for whatever autocast leaves in fp32. Call inside `RestoredProcessState`.

    cuDNN's autotuning (`torch.backends.cudnn.benchmark`) is left as the caller set it (off by default): timing every
    convolution's algorithms lengthens the warm-up steps (most of all without torch.compile), and for sprite-sized
    convolutions cuDNN's heuristics pick kernels that train as fast (benchmarks/results/cold-start-h200-cudnn.md). A
    full default run with autotuning on against one with it off, on the same machine, is still to be measured."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def configure_script_logging() -> None:
    """The training scripts' logging (a script owns its process; `train()` leaves logging to its caller): warnings
    from every library, and hfdiff's progress messages, without every library's INFO lines."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("hfdiff").setLevel(logging.INFO)
