"""Runs that also score the synthetic benchmark's extra facts: the shared machinery of the
``synonym-leak`` and ``beyond-prefix`` experiments (and the data of ``mask-noise``).

:class:`ProbeHarness` is a :class:`~palu_kernels.experiments.harness.Harness` whose runs also
score every probe of the data's extra facts (``synth_meta.json`` -> ``extras`` -> ``facts``,
written by :mod:`palu_kernels.demo.synth_extra`) on the unlearned model, before it is deleted
(:meth:`Harness.after_run`); :meth:`ProbeHarness.before` scores them once per setup on the
fine-tuned start model. Scores are ``log P(text | question, answer prefix)``
(:func:`palu_kernels.experiments.probes.score_probes`). Its run keys differ from the plain
harness's, so a cached run without probe scores is never taken for one with them.
"""

from __future__ import annotations

import json
import os
import statistics as st
from typing import Dict, List, Optional, Sequence

from ..outputs import atomic_write_text
from .cache import config_hash
from .harness import Harness, RunSpec, Setup, with_synth
from .probes import score_probes

__all__ = ["EXTRAS", "PROBE_VERSION", "ProbeHarness", "extras_spec", "facts_of",
           "references", "summarise"]

EXTRAS = ("synonym", "long", "split")
PROBE_VERSION = 1
# Generator overrides of the experiments on extra facts: every kind of extra fact, and at
# --quick size 20 authors (2 forget authors, forget10) of 3 regular questions each.
EXTRAS_SYNTH = {"full": {"extras": EXTRAS},
                "quick": {"extras": EXTRAS, "n_people": 20, "questions_per_person": 3}}


def extras_spec(h: Harness, spec: RunSpec) -> RunSpec:
    """``spec`` on the data with extra facts (the same data for all three experiments, so
    they share their setups when run with the same ``--out``)."""
    synth = EXTRAS_SYNTH["quick" if h.quick else "full"]
    # the experiment's sizes, unless the configuration sets them (a test's smaller data)
    return with_synth(spec, **{k: v for k, v in synth.items() if k not in h.cfg.synth})


def facts_of(setup: Setup) -> List[dict]:
    """The extra facts of a setup's data (``ValueError`` when the data has none)."""
    path = os.path.join(setup.data_dir, "synth_meta.json")
    facts = []
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            facts = json.load(f).get("extras", {}).get("facts", [])
    if not facts:
        raise ValueError(f"data: {setup.data_dir} has no extra facts (synonym, long or split; "
                         "the synthetic benchmark generated with extras=...)")
    return facts


def _flat(facts: List[dict]):
    return [(i, name, probe) for i, f in enumerate(facts) for name, probe in f["probes"].items()]


def _score(model, tokenizer, facts: List[dict]) -> Dict[str, float]:
    flat = _flat(facts)
    scores = score_probes(model, tokenizer, [p for _, _, p in flat])
    return {f"{i}:{name}": s["logprob"] for (i, name, _), s in zip(flat, scores)}


class ProbeHarness(Harness):
    """A harness whose runs also score the extra facts' probes (see the module docstring)."""

    def run_key(self, spec: RunSpec, seed: int) -> str:
        return config_hash({"run": super().run_key(spec, seed), "probes": PROBE_VERSION})

    def after_run(self, model, tokenizer, setup: Setup, spec: RunSpec, seed: int
                  ) -> Optional[dict]:
        return {"probes": _score(model, tokenizer, facts_of(setup))}

    def before(self, setup: Setup) -> Dict[str, float]:
        """Probe scores of the setup's fine-tuned start model (cached under ``probes/``)."""
        path = os.path.join(self.out, "probes", f"{setup.key}-v{PROBE_VERSION}.json")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        from ..eval.tofu import load_eval_model

        model, tok = load_eval_model(setup.finetuned_dir)
        scores = _score(model, tok, facts_of(setup))
        del model
        atomic_write_text(path, json.dumps(scores, indent=1))
        return scores

    def probe_rows(self, rows: List[dict]):
        """For each run row: ``(facts, before, after)``, the setup's facts and the probe scores
        of its start model and of the run's unlearned model."""
        out = []
        for r in rows:
            res = self.result(r["run"])
            setup = self._setups[res["setup"]]
            out.append((facts_of(setup), self.before(setup), res["extra"]["probes"]))
        return out


def summarise(rows: Sequence[dict], by: Sequence[str], keys: Sequence[str]) -> List[dict]:
    """One row per distinct value of the ``by`` keys (first-seen order): ``fq_median``,
    ``n_seeds`` and, for ``model_utility`` and every key of ``keys``, its mean over seeds,
    ``<key>_sd`` (population std) and ``<key>_pm`` (``"mean +- sd"`` text)."""
    groups: Dict[tuple, List[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in by), []).append(r)
    out = []
    for key, rs in groups.items():
        s = dict(zip(by, key), n_seeds=len(rs),
                 fq_median=st.median(r["forget_quality"] for r in rs))
        for k in ("model_utility", *keys):
            vals = [r[k] for r in rs if r.get(k) is not None]
            mean = st.fmean(vals) if vals else float("nan")
            sd = st.pstdev(vals) if len(vals) > 1 else 0.0
            s[k], s[k + "_sd"], s[k + "_pm"] = mean, sd, f"{mean:.3f} +- {sd:.3f}"
        out.append(s)
    return out


def references(rows: Sequence[dict]) -> str:
    """The setups' reference values (means over the seeds' setups) as one sentence."""
    firsts = {r["seed"]: r for r in rows}.values()
    mean = lambda k: st.fmean(r[k] for r in firsts)  # noqa: E731
    return (f"References (mean over seeds): retain model MU {mean('retain_mu'):.3f}, forget "
            f"probability {mean('retain_forget_probability'):.3f}; fine-tuned model MU "
            f"{mean('finetuned_mu'):.3f}, forget probability "
            f"{mean('finetuned_forget_probability'):.3f}.")
