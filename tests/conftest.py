"""Test-wide set-up. Without a GPU, Triton kernels run under the interpreter on CPU tensors:
TRITON_INTERPRET must be set before triton is first imported, so it is set here.

Property tests draw their examples deterministically (hypothesis profile ``ci``, the default), so
``make test`` on a fresh clone draws what it drew on every other machine;
``HYPOTHESIS_PROFILE=explore`` draws fresh random examples instead, to look for new failures."""
import os

import pytest
import torch
from hypothesis import settings

settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def device() -> str:
    """Where kernel tests run: the GPU when there is one, else the CPU (Triton interpreter)."""
    return "cuda" if torch.cuda.is_available() else "cpu"
