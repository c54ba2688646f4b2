import os

import pytest
import torch

# Tests share a 2-core machine: keep intra-op threads modest and results repeatable.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
