"""Experiments built from the train and eval layers: comparisons of methods and sweeps.

:func:`palu_kernels.experiments.compare.run_comparison` runs every method of a
:class:`~palu_kernels.experiments.compare.Comparison` with
:func:`palu_kernels.train.job.run_unlearning` and evaluates each model.
:mod:`palu_kernels.experiments.harness` caches setups and runs for the sweeps of
:data:`palu_kernels.experiments.registry.EXPERIMENTS` (``palu-experiment NAME``).
"""
