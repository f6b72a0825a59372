import numpy as np
import pytest
import torch

torch.set_num_threads(1)  # tests are small; one thread avoids oversubscription on 2 cores


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
