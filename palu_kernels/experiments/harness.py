"""The experiment harness behind ``palu-experiment NAME``: cached runs, sweeps, tables, plots.

A *run* is one unlearning job from a fine-tuned start model plus its TOFU evaluation. The
harness builds, once per (data, model, seed), a :class:`Setup`: the data (a TOFU-layout
directory with spans, or the synthetic benchmark written by the injected ``generator``), the
fine-tuned model (every fact) and the retain model (without the forget authors), and the retain
model's forget truth ratios (Forget Quality's reference). Setups and runs are cached under
``--out`` by a hash of their full configuration
(:func:`palu_kernels.experiments.cache.config_hash`): ``setups/<hash>/`` and ``runs/<hash>.json``,
so an interrupted sweep continues where it stopped and a second call recomputes nothing.

How an experiment plugs in: one module in :mod:`palu_kernels.experiments` with a function

    def my_experiment(h: Harness) -> Report:
        items = [(RunSpec(method="palu", k=k, lr=1e-3, epochs=10), seed, {"k": k})
                 for k in (1, 10, 100) for seed in h.seeds]
        rows = h.run_many(items)            # one row per run (cached), with a progress bar
        return Report(title="...", rows=rows, tables=[...], plot=lambda path: ...)

(:class:`~palu_kernels.experiments.report.Report`)

and one line ``"my-experiment": my_experiment`` in
:data:`palu_kernels.experiments.registry.EXPERIMENTS`. Each row of :meth:`Harness.run_many`
is the item's own parameters (the dict given) plus ``seed``, ``method``,
``forget_quality``, ``model_utility``, ``forget_probability``, ``forget_rouge``,
``retain_probability``, ``steps``, ``train_s``, ``run`` (the run's hash) and the setup's
reference values ``retain_mu``, ``retain_forget_probability``, ``finetuned_mu``,
``finetuned_fq``, ``finetuned_forget_probability``; the full cached result (evaluation
metrics, loss curve, per-step trace) is :meth:`Harness.result` of the row's ``run``.
:func:`palu_kernels.experiments.report.write_report` writes ``results.csv`` (``Report.rows``), ``results.md`` (the
``Report.tables`` via :func:`palu_kernels.eval.table.format_table`, the notes, the plot) and
the PNG (``Report.plot(path)``) to ``--out``.

Synthetic data needs ``ExperimentConfig.generator`` (``palu-experiment`` passes
:func:`palu_kernels.demo.synth.generate_benchmark`; this layer does not import the demo);
``RunSpec``/``Harness.setup`` take ``synth`` overrides (keyword arguments of the generator) so
an experiment can ask for data of another shape.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..errors import UsageError
from ..eval.setups import QA_MAX_NEW_TOKENS
from ..outputs import atomic_write_text
from .cache import check_run, config_hash, file_knobs, file_sha, read_cached
from .runspec import RunSpec, spec_dict

__all__ = ["ExperimentConfig", "Harness", "RunSpec", "Setup", "with_synth"]

HARNESS_VERSION = 1  # part of every hash: bump when a cached result's meaning changes

# Synthetic benchmark sizes (keyword arguments of the generator). forget_fraction 0.1 names
# the split forget10 (the TOFU evaluation knows forget01/05/10).
SYNTH = {
    "full": dict(n_people=40, questions_per_person=10, forget_fraction=0.1, n_real_authors=16,
                 n_world_facts=16),  # 4 forget authors x 10 = 40 forget questions
    "quick": dict(n_people=10, questions_per_person=5, forget_fraction=0.1, n_real_authors=6,
                  n_world_facts=6),
}
TINY = {
    "full": dict(hidden=64, layers=2, vocab=640, ft_epochs=30),
    "quick": dict(hidden=64, layers=2, vocab=512, ft_epochs=20),
}


# ------------------------------------------------------------------------------ configuration


@dataclass
class ExperimentConfig:
    """What every experiment shares (``palu-experiment``'s options).

    ``data_dir``: a TOFU-layout directory with ``<forget_split>_spans.jsonl`` (``None``: the
    synthetic benchmark from ``generator``, one per seed). ``model``: a local model directory
    fine-tuned on the data (``None``: a tiny Llama built here, one per seed). ``seeds``: each
    seed gets its own data (synthetic), model initialisation, fine-tuning and unlearning order.
    ``cache``: where ``setups/`` and ``runs/`` go (default: ``out``); experiments sharing a
    cache share their setups and any identical run.
    """

    out: str
    cache: Optional[str] = None
    seeds: Tuple[int, ...] = (0, 1, 2)
    quick: bool = False
    data_dir: Optional[str] = None
    forget_split: Optional[str] = None
    model: Optional[str] = None
    generator: Optional[Callable] = None
    synth: Dict = field(default_factory=dict)
    ft_lr: Optional[float] = None
    ft_target_nll: float = 0.05
    threads: Optional[int] = 1
    progress: bool = True
    log: Optional[Callable[[str], None]] = None
    train_layers: Optional[int] = None
    ft_epochs: Optional[int] = None
    shared_setup: bool = False
    chat_template: Optional[str] = None
    eval_max_samples: Optional[Dict[str, int]] = None
    eval_max_generate: Optional[int] = None
    max_new_tokens: Optional[int] = None
    shard: Optional[Tuple[int, int]] = None
    bf16: bool = False
    compute: bool = True
    checks: bool = True
    device: Optional[str] = None
    reverse: bool = False

    # ``threads``: torch CPU threads while setups and runs compute (1: tiny models run
    # faster on one thread, far faster on a busy machine; None: torch's default).
    # The options below default to the synthetic benchmark's behaviour and enter the cache
    # keys only when set (earlier caches stay valid). ``train_layers``: fine-tune and unlearn
    # only the last that many decoder layers (a pre-trained model on a CPU).
    # ``ft_epochs``: the fine-tuning's epoch cap. ``shared_setup``: every seed starts from
    # the one setup of seed 0 (the seeds then vary the unlearning only: data order and
    # initialisation of nothing else). ``chat_template``: replaces a pre-trained tokenizer's
    # template in the setup's models (a shorter prompt is cheaper). ``eval_max_samples``:
    # ``{split: n}``, the first n questions of those splits (probabilities, truth ratios and
    # ROUGE); ``eval_max_generate``: ROUGE on only the first n questions of each split;
    # ``max_new_tokens``: the generation limit (default 48). ``shard``: ``(i, n)``: this
    # process computes only the runs whose position in a sweep is i modulo n (others are read
    # from the cache when there, skipped otherwise: several processes share one cache).
    # ``bf16``: fine-tuning and unlearning under bfloat16 autocast (float32 weights and
    # evaluation), fine-tuning batches of similar length: about twice as fast on a CPU.
    # ``compute`` False: read what the cache holds and compute nothing (a report of a sweep
    # still running elsewhere; runs not done yet count in ``Harness.missing``).
    # ``checks`` False: an experiment's optional check stage computes nothing (tofu-smollm2's
    # one-seed ranking checks; what the cache holds of them is still reported).
    # ``device``: where the setups' fine-tuning and every evaluation run (``"cuda"``: the
    # GPU; ``None``: the CPU, as before). The unlearning runs through the Hugging Face
    # Trainer, which takes the GPU whenever one is visible. It enters the cache keys only
    # when set: a GPU's numbers are other numbers. ``reverse``: each list of runs is computed
    # from its last run to its first (rows still come back in order): a second process on
    # the same cache and shard then works from the other end, and the two meet in the
    # middle (at most the one run both reach at once is computed twice).

    def size(self) -> str:
        return "quick" if self.quick else "full"


# ------------------------------------------------------------------------------ setups


@dataclass
class Setup:
    """The fine-tuned and retain models of one (data, model, seed) and their references."""

    key: str
    dir: str
    data_dir: str
    forget_split: str
    forget_spans: str
    retain: str
    finetuned_dir: str
    retain_dir: str
    retain_truth_ratios: List[float]
    retain_metrics: dict
    finetuned_metrics: dict
    vocab_size: int
    training: dict
    seconds: float


# ------------------------------------------------------------------------------ the harness


class Harness:
    """Runs and caches setups and runs for one :class:`ExperimentConfig`."""

    def __init__(self, cfg: ExperimentConfig):
        if cfg.data_dir is None and cfg.generator is None:
            raise ValueError("data: pass data_dir (a TOFU-layout directory with spans) or a "
                             "generator for the synthetic benchmark")
        if cfg.device not in (None, "cpu", "cuda"):
            raise UsageError("device", f"device: expected cpu or cuda, got {cfg.device!r}")
        if cfg.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise UsageError("device", "device: cuda asked for, but torch sees no CUDA "
                                           f"device (torch {torch.__version__})")
        self.cfg = cfg
        self.out = os.path.abspath(cfg.cache or cfg.out)
        self._setups: Dict[str, Setup] = {}
        for option, path in (("out", cfg.out), ("cache", cfg.cache)):
            if path is not None and os.path.exists(path) and not os.path.isdir(path):
                raise UsageError(option, f"{path!r} is a file, not a directory")
        os.makedirs(os.path.join(self.out, "runs"), exist_ok=True)

    @property
    def seeds(self) -> Tuple[int, ...]:
        return tuple(self.cfg.seeds)

    @property
    def quick(self) -> bool:
        return self.cfg.quick

    @contextlib.contextmanager
    def _threads(self):
        import torch

        old = torch.get_num_threads()
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        try:
            yield
        finally:
            torch.set_num_threads(old)

    def log(self, msg: str) -> None:
        if self.cfg.log is not None:
            self.cfg.log(msg)

    # -------------------------------------------------------------- setups
    def _setup_config(self, seed: int, synth: dict) -> dict:
        c = self.cfg
        size = c.size()
        data = ({"dir": os.path.abspath(c.data_dir), "forget_split": c.forget_split}
                if c.data_dir else {"synth": {**SYNTH[size], **c.synth, **synth}, "seed": seed})
        model = ({"path": os.path.abspath(c.model)} if c.model else {"tiny": TINY[size]})
        ft_lr = c.ft_lr if c.ft_lr is not None else (3e-4 if c.model else 3e-3)
        conf = {"v": HARNESS_VERSION, "data": data, "model": model, "seed": seed,
                "ft_lr": ft_lr, "ft_target_nll": c.ft_target_nll,
                "ft_epochs": c.ft_epochs or TINY[size]["ft_epochs"]}
        extra = {"train_layers": c.train_layers, "chat_template": c.chat_template,
                 "bf16": c.bf16, "device": c.device,
                 "eval": self._eval_options()}
        conf.update({k: v for k, v in extra.items() if v})  # only what is set: old keys hold
        return conf

    def _eval_options(self) -> dict:
        c = self.cfg
        opts = {"max_samples": c.eval_max_samples, "max_generate": c.eval_max_generate,
                "max_new_tokens": c.max_new_tokens}
        return {k: v for k, v in opts.items() if v}

    def _eval_kwargs(self) -> dict:
        """:func:`palu_kernels.eval.evaluate_model`'s options for the setups and the runs."""
        o = self._eval_options()
        # a GPU scores and generates 64 questions at a time (the CPU 16: no faster wider)
        return dict(batch_size=64 if self.cfg.device == "cuda" else 16,
                    max_new_tokens=o.get("max_new_tokens", QA_MAX_NEW_TOKENS),
                    max_samples=o.get("max_samples"), max_generate=o.get("max_generate"),
                    progress=False)

    def _evaluate(self, model, tok, data_dir: str, forget_split: str,
                  retain_truth_ratios=None, evaluation: Optional[str] = None) -> dict:
        from ..eval import evaluate_model
        from .variants import eval_kwargs

        return evaluate_model(model, tok, data_dir, forget_split,
                              retain_truth_ratios=retain_truth_ratios,
                              **eval_kwargs(self, evaluation))

    def setup(self, seed: int, synth: Optional[dict] = None) -> Setup:
        """The :class:`Setup` of ``seed`` (built once, then read from ``setups/<hash>/``)."""
        conf = self._setup_config(0 if self.cfg.shared_setup else seed, dict(synth or {}))
        key = config_hash(conf)
        if key in self._setups:
            return self._setups[key]
        d = os.path.join(self.out, "setups", key)
        path = os.path.join(d, "setup.json")
        s = read_cached(path, lambda obj: Setup(**obj["setup"]))
        if s is None and not self.cfg.compute:
            raise ValueError(f"cache: setup {key} (seed {conf['seed']}) is not built yet in "
                             f"{self.out}; run the experiment (not report-only) first")
        if s is None:
            with self._threads():
                s = self._build_setup(conf, key, d)
            atomic_write_text(path, json.dumps({"config": conf, "setup": asdict(s)}, indent=1,
                                               default=str))
        self._setups[key] = s
        return s

    def _build_setup(self, conf: dict, key: str, d: str) -> Setup:
        """Data (the generator's, or ``data_dir``), tokenizer and start model of ``conf``;
        :func:`palu_kernels.eval.setups.build_setup` fine-tunes and evaluates."""
        from ..eval.setups import (QA_CHAT_TEMPLATE, SetupSpec, build_setup, qa_pairs, qa_texts,
                                   split_names, tofu_evaluation)
        from ..io.models import load_model, load_tokenizer
        from ..tiny import build_tiny_llama, build_tokenizer

        t0 = time.time()
        seed = conf["seed"]
        if "synth" in conf["data"]:
            data_dir = os.path.join(d, "data")
            self.cfg.generator(data_dir, seed=seed, **conf["data"]["synth"])
            forget_split, retain_split = split_names(data_dir, None)
        else:
            data_dir = conf["data"]["dir"]
            forget_split, retain_split = split_names(data_dir, conf["data"]["forget_split"])
        spans = os.path.join(data_dir, f"{forget_split}_spans.jsonl")
        retain = os.path.join(data_dir, f"{retain_split}.json")
        for p in (spans, retain):
            if not os.path.isfile(p):
                raise FileNotFoundError(f"data: {p} not found (a TOFU-layout directory needs "
                                        f"{forget_split}_spans.jsonl and {retain_split}.json)")
        self.log(f"setup {key} (seed {seed}): fine-tuning the start and retain models")
        tiny = conf["model"].get("tiny")
        if tiny:
            tokenizer = build_tokenizer(qa_texts(data_dir), vocab_size=tiny["vocab"],
                                        chat_template=QA_CHAT_TEMPLATE)
        else:
            tokenizer = load_tokenizer(conf["model"]["path"])
            if conf.get("chat_template"):
                tokenizer.chat_template = conf["chat_template"]

        def start(name):
            if tiny:
                model = build_tiny_llama(tokenizer, hidden_size=tiny["hidden"],
                                         num_layers=tiny["layers"], seed=seed)
            else:
                model = load_model(conf["model"]["path"], float32=True)
            # fine-tuning and the evaluation run where the model is
            return model.to(self.cfg.device) if self.cfg.device else model

        names = ("finetuned", "retain")
        built = build_setup(SetupSpec(
            data_dir=data_dir, forget_split=forget_split, forget_spans=spans, retain=retain,
            tokenizer=tokenizer, start=start,
            pairs={name: qa_pairs(data_dir, forget_split, retain_split, name == "finetuned")
                   for name in names},
            model_dirs={name: os.path.join(d, name) for name in names},
            evaluate=tofu_evaluation(data_dir, forget_split, **self._eval_kwargs()),
            lr=conf["ft_lr"], max_epochs=conf["ft_epochs"], target_nll=conf["ft_target_nll"],
            seed=seed, answer_rows_only=not tiny, train_layers=conf.get("train_layers"),
            bf16=bool(conf.get("bf16")), length_buckets=bool(conf.get("bf16")),
            desc=f"fine-tune {{name}} (seed {seed})", progress=self.cfg.progress))
        training, evals = built.training, built.metrics
        for name in names:
            self.log(f"setup {key}: {name} fine-tuned in {training[name]['seconds']:.0f} s "
                     f"({training[name]['epochs']} epochs, NLL {training[name]['nll']:.3f}), "
                     f"forget probability "
                     f"{evals[name]['metrics']['forget']['probability']:.3f}")
        return Setup(key=key, dir=d, data_dir=data_dir, forget_split=forget_split,
                     forget_spans=spans, retain=retain, finetuned_dir=built.target_dir,
                     retain_dir=built.retain_dir,
                     retain_truth_ratios=evals["retain"]["forget_truth_ratios"],
                     retain_metrics=evals["retain"]["metrics"],
                     finetuned_metrics=evals["finetuned"]["metrics"], vocab_size=len(tokenizer),
                     training=training, seconds=round(time.time() - t0, 1))

    # -------------------------------------------------------------- runs
    def run_key(self, spec: RunSpec, seed: int) -> str:
        setup = self.setup(seed, dict(spec.synth))
        spec_d = spec_dict(spec)
        for name in ("forget_file", *file_knobs()):  # files by content
            if spec_d.get(name):
                spec_d[name] = file_sha(spec_d[name])
        conf = {"v": HARNESS_VERSION, "setup": setup.key, "spec": spec_d, "seed": seed}
        if self.cfg.train_layers:
            conf["train_layers"] = self.cfg.train_layers
        if self.cfg.bf16:
            conf["bf16"] = True
        if self.cfg.device:
            conf["device"] = self.cfg.device
        if self._eval_options():
            conf["eval"] = self._eval_options()
        return config_hash(conf)

    def result(self, key: str) -> Optional[dict]:
        """The cached result of run ``key`` (``None`` if not run yet)."""
        return read_cached(os.path.join(self.out, "runs", f"{key}.json"), check_run)

    def run(self, spec: RunSpec, seed: int) -> dict:
        """The result of one run (cached in ``runs/<hash>.json``): ``{"key", "spec", "seed",
        "metrics", "steps", "train_s", "loss_curve", "trace", "summary_after",
        "trainable_params"}`` (the last: runs cached since it was added)."""
        key = self.run_key(spec, seed)
        cached = self.result(key)
        if cached is not None:
            return cached
        setup = self.setup(seed, dict(spec.synth))
        with self._threads():
            res = self._run(spec, seed, setup, key)
        atomic_write_text(os.path.join(self.out, "runs", f"{key}.json"),
                          json.dumps(res, indent=1, default=str))
        return res

    def _run(self, spec: RunSpec, seed: int, setup: Setup, key: str) -> dict:
        from transformers.utils import logging as hf_logging

        from ..eval.tofu import PromptEncoder, load_eval_model, read_json_records
        from .trace import forget_trace
        from .variants import reference_ratios, trainable_count, unlearn_layers
        from ..train.job import (DataSpec, ModelSpec, OutputSpec, TrainingOptions, UnlearningJob,
                                 run_unlearning)

        work = os.path.join(self.out, "work", key)
        forget = spec.forget_file or setup.forget_spans
        ref = reference_ratios(self, setup, spec.evaluation)  # (before the training)
        job = UnlearningJob(
            model=ModelSpec(setup.finetuned_dir, train_layers=unlearn_layers(spec, self.cfg)),
            data=DataSpec(forget=forget, retain=setup.retain, first_n=spec.first_n,
                          eval_retain=8),  # the before/after losses only
            method=spec.method_spec(),
            training=TrainingOptions(lr=spec.lr, epochs=spec.epochs, batch_size=spec.batch_size,
                                     warmup_epochs=spec.warmup_epochs, seed=seed,
                                     logging_steps=1, bf16=self.cfg.bf16),
            output=OutputSpec(work, save_steps=10 ** 9, save_total_limit=1, overwrite=True))
        count, trace = trainable_count(), None
        if spec.trace_every > 0:
            from ..io.models import load_tokenizer

            tok = load_tokenizer(setup.finetuned_dir)
            enc = PromptEncoder(tok)
            pairs = [enc.pair(r["question"], r["answer"]) for r in read_json_records(forget)]
            trace = forget_trace(pairs, enc.pad_token_id, spec.trace_every)
        callbacks = [count] + ([trace] if trace else [])
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        t0 = time.time()
        try:
            with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), \
                    (contextlib.nullcontext() if self.cfg.progress
                     else contextlib.redirect_stderr(null)):
                summary = run_unlearning(job, callbacks=callbacks)
            train_s = time.time() - t0
            model, tok = load_eval_model(work, device=self.cfg.device)
            t1 = time.time()
            result = self._evaluate(model, tok, setup.data_dir, setup.forget_split,
                                    retain_truth_ratios=ref, evaluation=spec.evaluation)
            eval_s = time.time() - t1
            extra = self.after_run(model, tok, setup, spec, seed)
            del model
        finally:
            hf_logging.set_verbosity(verbosity)
            shutil.rmtree(work, ignore_errors=True)
        curve = [{k: v for k, v in h.items() if isinstance(v, (int, float))}
                 for h in summary.get("loss_curve", [])]
        return {"key": key, "spec": spec_dict(spec), "seed": seed, "setup": setup.key,
                "metrics": result["metrics"], "steps": summary.get("steps"),
                "train_s": round(train_s, 2), "eval_s": round(eval_s, 2), "loss_curve": curve,
                "trace": trace.points if trace else [],
                "summary_after": summary.get("after"), "before": summary.get("before"),
                "extra": extra, "trainable_params": count.n}

    def after_run(self, model, tokenizer, setup: Setup, spec: RunSpec, seed: int
                  ) -> Optional[dict]:
        """Extra measurements of the unlearned model, taken before it is deleted and stored
        in the run's result as ``"extra"``; ``None`` here. A subclass that overrides it also
        overrides :meth:`run_key`, so cached runs without them are not taken for runs with
        them (:class:`palu_kernels.experiments.probing.ProbeHarness`)."""
        return None

    def row(self, res: dict, params: dict) -> dict:
        """The flat table row of a run's result (see the module docstring)."""
        s = self._setups.get(res["setup"])
        m = res["metrics"]
        row = {**params, "seed": res["seed"], "method": res["spec"]["method"],
               "forget_quality": m["forget_quality"], "model_utility": m["model_utility"],
               "forget_probability": m["forget"]["probability"],
               "forget_rouge": m["forget"]["rouge_l_recall"],
               "retain_probability": m["retain"]["probability"],
               "steps": res["steps"], "train_s": res["train_s"],
               "eval_s": res.get("eval_s"), "run": res["key"]}
        if s is not None:
            row.update(retain_mu=s.retain_metrics["model_utility"],
                       retain_forget_probability=s.retain_metrics["forget"]["probability"],
                       finetuned_mu=s.finetuned_metrics["model_utility"],
                       finetuned_fq=s.finetuned_metrics["forget_quality"],
                       finetuned_forget_probability=s.finetuned_metrics["forget"]["probability"])
        return row

    def run_many(self, items: Sequence[Tuple[RunSpec, int, dict]], desc: str = "runs"
                 ) -> List[dict]:
        """Rows of every ``(spec, seed, params)`` item, in order, run in order (setups first;
        from the last with ``reverse``), cached ones read back; a tqdm bar counts runs, with
        the cache hits in its postfix."""
        from tqdm.auto import tqdm

        with self._threads():
            for seed in sorted({seed for _, seed, _ in items}):
                for synth in {spec.synth for spec, s, _ in items if s == seed}:
                    self.setup(seed, dict(synth))
            hits = 0
            self.missing = getattr(self, "missing", 0)
            order = list(enumerate(items))
            if self.cfg.reverse:
                order.reverse()
            bar = tqdm(order, desc=desc, disable=not self.cfg.progress, dynamic_ncols=True)
            done: Dict[int, dict] = {}
            for i, (spec, seed, params) in bar:
                key = self.run_key(spec, seed)
                res = self.result(key)
                if res is None and (not self.cfg.compute or (
                        self.cfg.shard and i % self.cfg.shard[1] != self.cfg.shard[0])):
                    self.missing += 1  # another shard's run, not done yet
                    continue
                if res is None:
                    res = self.run(spec, seed)
                else:
                    hits += 1
                bar.set_postfix(cached=hits)
                done[i] = self.row(res, params)
            rows = [done[i] for i in sorted(done)]
            self.cache_hits = hits
            return rows


def with_synth(spec: RunSpec, **synth) -> RunSpec:
    """``spec`` with generator overrides (hashable, sorted)."""
    return replace(spec, synth=tuple(sorted(synth.items())))
