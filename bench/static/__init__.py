"""The static H100/H200 model of the fused PALU Triton kernels, run as
``python bench/static_model.py`` (its docstring describes the model).

* ``model.py``: machines, the headline case, passes, the L2 and issue bounds, ``predict``.
* ``versions.py``: the kernel versions compared, their profiling jobs and pass tables.
* ``sources.py``: a version's ``palu_kernels/`` in a temporary directory, its marked loops,
  and its profile from a subprocess (``worker.py``).
* ``report.py``: the report of one version.
"""
