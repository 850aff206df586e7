"""The GPU check of ``bench/gpu.sh``, one module per section (``bench/gpu_check.py`` is its
command line): ``core`` (results files, section table, budget, context, timer), ``smoke``,
``exactness``, ``timing`` (with ``compile`` and ``bandwidth``), ``sweep``, ``trainer``,
``runner`` (the environment and the sections' subprocesses), ``warmup`` (compiles the
kernels once, in parallel, for the CUDA tests and the sections) and ``report`` (results.md).
"""
