"""The experiments ``palu-experiment NAME`` runs: name -> ``function(Harness) -> Report``
(see :mod:`palu_kernels.experiments.harness`). Adding one is one module here plus one line."""

from __future__ import annotations

from .ablations import k_experiment, n_experiment, target_experiment
from .pareto import pareto_experiment

EXPERIMENTS = {
    "pareto": pareto_experiment,
    "k": k_experiment,
    "n": n_experiment,
    "target": target_experiment,
}
"""Experiment name -> its function (``palu-experiment NAME``)."""

__all__ = ["EXPERIMENTS"]
