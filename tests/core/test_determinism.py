"""Training steps run deterministic kernels on one thread; the previous settings come back afterwards."""
import pytest
import torch

from moescope.determinism import TRAIN_THREADS, deterministic_kernels


def test_training_block_pins_threads_and_kernels_then_restores():
    before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with pytest.raises(RuntimeError):
        with deterministic_kernels():
            assert torch.get_num_threads() == TRAIN_THREADS == 1
            assert torch.are_deterministic_algorithms_enabled()
            raise RuntimeError("a failing step")
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == before
