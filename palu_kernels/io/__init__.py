"""Reading what a run starts from: the records (:mod:`palu_kernels.io.records`: forget /
retain records, spans, passages), the dataset built from them (:mod:`palu_kernels.io.data`:
the tokenised forget and retain parts and their masks) and the one model loader (:mod:`palu_kernels.io.models`:
directories, ``.gguf`` files, named packaged models, LoRA, frozen layers).

The layer between the core and everything that reads data or loads a model: span
identification (:mod:`palu_kernels.spans`), the trainer (:mod:`palu_kernels.train`), the
evaluation and the demo. Needs the ``train`` extra (transformers) where it loads models.
"""
