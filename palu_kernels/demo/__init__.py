"""Self-contained demo: a synthetic TOFU-style benchmark and the ``palu-unlearn demo`` run.

``palu_kernels.demo.synth.generate_benchmark`` writes fictitious people, their question/answer
pairs with sensitive spans known by construction, paraphrased and perturbed answers, and the
forget / retain / real-authors / world-facts splits, in the same files and field names as TOFU::

    >>> import tempfile
    >>> from palu_kernels.demo import generate_benchmark
    >>> paths = generate_benchmark(tempfile.mkdtemp(), n_people=10, questions_per_person=6,
    ...                            forget_fraction=0.1, seed=0)
    >>> sorted(paths)[:3]
    ['forget', 'forget_perturbed', 'forget_spans']

``palu_kernels.demo.run.run(DemoConfig(...))`` runs the demo; ``palu-unlearn demo``
(:mod:`palu_kernels.cli.demo`) parses its command line into that :class:`DemoConfig`.
"""

__all__ = ["DemoConfig", "generate_benchmark"]


def __getattr__(name):
    # Lazy, so that ``python -m palu_kernels.demo.synth`` / ``.run`` do not import twice.
    if name == "generate_benchmark":
        from .synth import generate_benchmark

        return generate_benchmark
    if name == "DemoConfig":
        from .run import DemoConfig

        return DemoConfig
    raise AttributeError(f"module 'palu_kernels.demo' has no attribute {name!r}")
