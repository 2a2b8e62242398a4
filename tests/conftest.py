import os

import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")


@pytest.fixture
def one_torch_thread():
    """Run a test on one torch thread (small float64 GP algebra gains nothing from a second one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
