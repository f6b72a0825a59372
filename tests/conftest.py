import numpy as np
import pytest
import torch

torch.set_num_threads(1)  # tests are small; one thread avoids oversubscription on 2 cores


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture
def one_thread():
    """One torch thread for the test (a test or a library call may have changed it), restored after."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
