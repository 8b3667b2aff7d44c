"""Session-wide test setup.

Without a CUDA GPU, Triton kernels run on CPU tensors through Triton's interpreter. TRITON_INTERPRET must
be set before triton is first imported, so it is set here, at collection time, before any test module
imports lmfast.kernels. Ahead-of-time compilation for real GPUs needs the normal (non-interpreted) Triton
and therefore runs in a subprocess with the variable removed (see tests/kernels/test_kernels_aot.py).
"""

import os
import sys

import pytest
import torch

if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
    raise RuntimeError("triton was imported before tests/conftest.py could set TRITON_INTERPRET=1")
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        # The marker itself: item.keywords also holds the names of the folders above the test, so a checkout in a
        # folder named gpu would skip every test.
        if item.get_closest_marker("gpu") is not None and not HAS_CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture
def one_thread():
    """One intra-op torch thread for the test, restored after (modules say why they want it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
