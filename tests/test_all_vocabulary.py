"""One vocabulary for "every sensitive row" (``first_n``) and "the whole vocabulary" (``k``).

``None``, ``-1`` and ``"all"`` (the text ``"all"`` or ``"-1"`` on a command line) mean all,
everywhere: the API (``DataSpec``, ``MethodSpec``), ``palu-unlearn``, ``palu-compare`` and
``palu-unlearn demo``; all of them are read by one function,
:func:`palu_kernels.train.checks.all_or_count`, and stored as ``None``. Bad values (0, -2,
"some", 1.5, True) are refused in one line naming the argument (the flag on a command line).
"""

import os

import pytest

from palu_kernels.cli import compare as compare_cli
from palu_kernels.cli import unlearn as unlearn_cli
from palu_kernels.cli.demo import build_parser as demo_parser
from palu_kernels.cli.demo import run_demo
from palu_kernels.demo.run import _resolve
from palu_kernels.errors import UsageError
from palu_kernels.train.checks import all_or_count
from palu_kernels.train.job import DataSpec, MethodSpec

ALL_SPELLINGS = [None, -1, "all", "ALL", "-1"]
BAD = [0, -2, "some", 1.5, True, "0", "1.5", "True", "none", ""]
CLI_SPELLINGS = ["all", "-1"]
CLI_BAD = ["0", "-2", "some", "1.5", "True"]


@pytest.mark.parametrize("option", ["first_n", "k"])
def test_one_function_reads_every_spelling(option):
    for v in ALL_SPELLINGS:
        assert all_or_count(option, v) is None, v
    assert all_or_count(option, 7) == 7 and all_or_count(option, "7") == 7
    for v in BAD:
        with pytest.raises(UsageError) as e:
            all_or_count(option, v)
        assert e.value.option == option and str(e.value).startswith(f"{option} ")
        assert "\n" not in str(e.value)


def test_the_api_stores_none_for_all():
    for v in ALL_SPELLINGS:
        assert DataSpec("f", first_n=v).first_n is None
        assert MethodSpec(k=v).k is None
    assert DataSpec("f", first_n="5").first_n == 5 and MethodSpec(k=50).k == 50
    for v in (0, -2, "some", 1.5, True):
        with pytest.raises(UsageError, match="^first_n "):
            DataSpec("f", first_n=v)
        with pytest.raises(UsageError, match="^k must be an integer >= 1, or all"):
            MethodSpec(k=v)


def test_an_experiment_spec_meaning_all_hashes_as_before():
    """Cached runs stay valid: a RunSpec with first_n / k ``None`` (all) hashes as it did."""
    from palu_kernels.experiments.cache import config_hash
    from palu_kernels.experiments.harness import RunSpec
    from palu_kernels.experiments.runspec import spec_dict

    assert config_hash({"spec": spec_dict(RunSpec(first_n=None, k=None))}) == "432f4b51b79622f7"


def _one_line(capsys, main, argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


UNLEARN = ["--model", "m", "--forget", "f.jsonl", "--output-dir", "o"]


def test_palu_unlearn(capsys):
    jobs = [unlearn_cli.job_from_args(unlearn_cli.build_parser().parse_args(
        UNLEARN + ["--first-n", v, "--k", v])) for v in CLI_SPELLINGS]
    assert [(j.data.first_n, j.method.k) for j in jobs] == [(None, None)] * 2
    for v in CLI_BAD:
        for flag in ("--first-n", "--k"):
            line = _one_line(capsys, unlearn_cli.main, UNLEARN + [flag, v])
            assert line.startswith(f"palu-unlearn: {flag} "), line


@pytest.fixture
def compare_argv(tmp_path):
    from palu_kernels.eval.tofu import EVAL_SPLITS, split_file

    model, data = tmp_path / "model", tmp_path / "data"
    model.mkdir()
    data.mkdir()
    for s in EVAL_SPLITS:
        open(split_file(str(data), s, "forget01"), "w").close()
    return ["--model", str(model), "--forget", "f.jsonl", "--data-dir", str(data),
            "--output-dir", str(tmp_path / "out")]


def test_palu_compare(compare_argv, capsys):
    jobs = [compare_cli.comparison_from_argv(compare_argv + ["--first-n", v, "--k", v]).job
            for v in CLI_SPELLINGS]
    assert [(j.data.first_n, j.method.k) for j in jobs] == [(None, None)] * 2
    for v in CLI_BAD:
        for flag in ("--first-n", "--k"):
            line = _one_line(capsys, compare_cli.main, compare_argv + [flag, v])
            assert line.startswith(f"palu-compare: {flag} "), line


def test_palu_unlearn_demo(tmp_path, capsys):
    resolved = []
    for v in CLI_SPELLINGS:
        args = demo_parser().parse_args(["--first-n", v, "--k", v])
        _resolve(args)
        resolved.append((args.first_n, args.k))
    assert resolved == [(None, None)] * 2
    args = demo_parser().parse_args(["--first-n", "4"])
    _resolve(args)
    assert (args.first_n, args.k) == (4, 10)  # k: the tiny model's default
    out = str(tmp_path / "x")
    for v in CLI_BAD:
        for flag in ("--first-n", "--k"):
            line = _one_line(capsys, unlearn_cli.main, ["demo", "--out", out, flag, v])
            assert line.startswith(f"palu-unlearn demo: {flag} "), line
            with pytest.raises(SystemExit, match=f"^palu-unlearn demo: {flag} "):
                run_demo(["--out", out, flag, v])
    assert not os.path.exists(out)  # refused before any work
