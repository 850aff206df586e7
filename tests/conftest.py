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


if os.environ.get("PALU_TEST_DEADLINE"):
    import signal

    # bench/gpu.sh stops a run at its limit with SIGINT, so that pytest prints its summary: a
    # process started with SIGINT ignored (a background job) would never see it
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_runtest_setup(item):
    """``PALU_TEST_DEADLINE`` (seconds since the epoch, set by bench/gpu.sh): a test that would
    start after it is skipped, so a run under a time limit ends on its own, with pytest's
    summary, instead of being killed midway."""
    import time

    deadline = os.environ.get("PALU_TEST_DEADLINE")
    if deadline and time.time() > float(deadline):
        pytest.skip("the time budget of this run is spent (PALU_TEST_DEADLINE)")
