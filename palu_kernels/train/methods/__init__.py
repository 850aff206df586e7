"""The unlearning methods, one file each, every one a sibling subclass of
:class:`~palu_kernels.train.base.UnlearningTrainer` that overrides only its forget objective.

``palu`` (the PALU loss), ``ga``, ``graddiff``, ``npo``, ``simnpo``, ``idkdpo``; ``sequence``
holds what the sequence-level baselines share. Each file declares its method's settings once,
as the :func:`~palu_kernels.train.knobs.knob` fields of its config dataclass;
:mod:`palu_kernels.train.registry` maps a ``--method`` name to its trainer.
"""
