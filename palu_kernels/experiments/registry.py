"""The experiments ``palu-experiment NAME`` runs: name -> ``function(Harness) -> Report``
(see :mod:`palu_kernels.experiments.harness`). Adding one is one module here plus one line."""

from __future__ import annotations

from .ablations import k_experiment, n_experiment, target_experiment
from .beyond_prefix import beyond_prefix_experiment
from .mask_noise import mask_noise_experiment
from .pareto import pareto_experiment
from .span_sources import spans_experiment
from .synonym_leak import synonym_leak_experiment
from .tofu_real import tofu_smollm2_experiment

EXPERIMENTS = {
    "pareto": pareto_experiment,
    "k": k_experiment,
    "n": n_experiment,
    "target": target_experiment,
    "mask-noise": mask_noise_experiment,
    "synonym-leak": synonym_leak_experiment,
    "beyond-prefix": beyond_prefix_experiment,
    "spans": spans_experiment,
    "tofu-smollm2": tofu_smollm2_experiment,
}
"""Experiment name -> its function (``palu-experiment NAME``)."""

__all__ = ["EXPERIMENTS"]
