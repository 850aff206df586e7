"""The unlearning methods, one file each, every one a sibling subclass of
:class:`~palu_kernels.train.base.UnlearningTrainer` that overrides only its forget objective.

``palu`` (the PALU loss), ``ga``, ``graddiff``, ``npo``, ``simnpo``, ``idkdpo``; ``sequence``
holds what the sequence-level baselines share. :mod:`palu_kernels.train.registry` maps a
``--method`` name to its trainer.
"""
