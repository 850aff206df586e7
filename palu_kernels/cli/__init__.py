"""The command lines, the top layer: the only modules that parse argv.

* ``palu-unlearn`` (:mod:`.unlearn`): argv -> :class:`~palu_kernels.train.job.UnlearningJob`
  -> :func:`~palu_kernels.train.job.run_unlearning`; ``palu-unlearn demo`` -> :mod:`.demo`;
* ``palu-eval`` (:mod:`.eval`): TOFU evaluation of one model;
* ``palu-compare`` (:mod:`.compare`): argv -> :class:`~palu_kernels.experiments.compare.
  Comparison` -> :func:`~palu_kernels.experiments.compare.run_comparison`;
* ``palu-unlearn demo`` (:mod:`.demo`): argv -> :class:`~palu_kernels.demo.run.DemoConfig`;
* ``python -m palu_kernels.cli.synth``: write the synthetic benchmark.

Layers (each imports only the ones below it): core <- io <- spans <- train <- eval <-
experiments <- demo <- cli (``tests/test_layers.py``). Only this layer parses argv and
names flags: below it a mistake is a :class:`~palu_kernels.errors.UsageError` naming the
argument, which :mod:`._errors` prints as the flag (``tests/test_no_cli_below_cli.py``).
"""
