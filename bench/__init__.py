"""Benchmarks of the PALU loss: providers, measurements and the sweep (``python -m bench.run``).

* ``bench/common.py``: shapes, inputs, providers and the timing / memory measurements.
* ``bench/worker.py``: measures one provider on one shape in a fresh process (CPU memory).
* ``bench/run.py``: the sweep, writing CSV, a markdown table and PNG plots.
* ``bench/compare_cpu.py``: the side-by-side CPU comparison at 4096 x 32000, K = 5000.
* ``bench/bench_*.py``: pytest-benchmark benchmarks (``pytest bench/ --benchmark-only``).
"""
