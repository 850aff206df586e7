"""Test configuration.

Without a GPU the Triton kernels run through the interpreter on the CPU; the interpreter is
chosen by TRITON_INTERPRET=1, which must be set before triton is first imported, so it is
set here, at collection time. On a machine with CUDA the kernels compile as in production
(the interpreter tests then skip and tests/test_triton_cuda.py runs).
"""

import os
import sys

import torch

# The pure-PyTorch reference (reference/) is test and benchmark code, not part of the
# installed package: the tests import it from the repository.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import settings  # noqa: E402

# Deterministic, bounded property searches: CI must stay fast and reproducible.
settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True,
                          print_blob=True)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run faster on one torch thread, and far faster on a busy machine.

    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
