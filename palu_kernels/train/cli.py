"""Deprecated alias of :mod:`palu_kernels.cli.unlearn` (the ``palu-unlearn`` command line).

Kept only so that ``python -m palu_kernels.train.cli ...`` / ``torchrun ... -m
palu_kernels.train.cli`` and ``from palu_kernels.train import cli`` (``bench/gpu_check.py``)
keep working; new code uses :mod:`palu_kernels.cli.unlearn`, or
:func:`palu_kernels.train.job.run_unlearning` without any command line. This is the one
allowed upward import (``tests/test_layers.py``); remove it once its callers moved.
"""

import sys

from ..cli.unlearn import (METHODS, build_parser, check_paths, job_from_args, main,  # noqa: F401
                           run, trainer_class, unlearn)

if __name__ == "__main__":
    sys.exit(main())
