"""Thin unlearning trainer: the base trainer, the methods (PALU and the baselines), their
registry (``registry.py``), a typed job and ``run_unlearning`` (``job.py``; the
``palu-unlearn`` command line is :mod:`palu_kernels.cli.unlearn`) and a small fine-tuning
function (``finetune.py``). Records, datasets and the model loader are one layer down, in
:mod:`palu_kernels.io` (the dataset names are re-exported here).

Needs the ``train`` extra (transformers, accelerate, safetensors, tqdm; peft for LoRA).
"""

from .base import PALUConfig, UnlearningTrainer
from ..io.data import (IGNORE_INDEX, PALUCollator, PALUDataset, encode_record, format_prompt,
                       prompt_ids)
from ..io.records import LoadReport, QARecord, Span, load_records
from .heads import FusedLinearError
from .methods.palu import PALUTrainer

__all__ = ["FusedLinearError", "IGNORE_INDEX", "LoadReport", "PALUCollator", "PALUConfig",
           "PALUDataset", "PALUTrainer", "QARecord", "Span", "UnlearningTrainer", "encode_record",
           "format_prompt", "load_records", "prompt_ids"]
