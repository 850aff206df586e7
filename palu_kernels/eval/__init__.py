"""TOFU evaluation of unlearned models: metrics, data loading, ``evaluate_model``, the table
formatter (``palu-eval`` is :mod:`palu_kernels.cli.eval`)."""

from .metrics import (
    TokenScores,
    exact_memorisation,
    extraction_strength,
    forget_quality,
    generate_greedy,
    model_utility,
    normalised_probability,
    option_probability,
    rouge_l_recall,
    score_answers,
    truth_ratio,
    truth_ratio_score,
)
from .tofu import (
    EVAL_SPLITS,
    FORGET_SPLITS,
    PromptEncoder,
    evaluate_model,
    forget_truth_ratios,
    load_split,
    summary_markdown,
    write_result,
)

__all__ = [
    "EVAL_SPLITS",
    "FORGET_SPLITS",
    "PromptEncoder",
    "TokenScores",
    "evaluate_model",
    "exact_memorisation",
    "extraction_strength",
    "forget_quality",
    "forget_truth_ratios",
    "generate_greedy",
    "load_split",
    "model_utility",
    "normalised_probability",
    "option_probability",
    "rouge_l_recall",
    "score_answers",
    "summary_markdown",
    "truth_ratio",
    "truth_ratio_score",
    "write_result",
]
