"""Thin PALU trainer: data loading and masks, ``PALUTrainer`` and the ``palu-unlearn`` CLI.

Needs the ``train`` extra (transformers, accelerate, safetensors, tqdm; peft for LoRA).
"""

from .data import (IGNORE_INDEX, LoadReport, PALUCollator, PALUDataset, QARecord, Span,
                   encode_record, format_prompt, load_records, prompt_ids)
from .trainer import FusedLinearError, PALUConfig, PALUTrainer

__all__ = ["FusedLinearError", "IGNORE_INDEX", "LoadReport", "PALUCollator", "PALUConfig", "PALUDataset", "PALUTrainer",
           "QARecord", "Span", "encode_record", "format_prompt", "load_records", "prompt_ids"]
