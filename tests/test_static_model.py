"""The arithmetic of the static model (bench/static/; no compilation, no triton: well under a second).

The script itself (``python -m bench.static_model``) compiles the kernels with triton's ptxas and
is not run here.
"""

import re

import pytest

from bench import static_model
from bench.static import model as sm
from bench.static import report, sources, versions
from bench.static.model import Case, Machine, ModelError, Pass


def _sass_profile():
    """../shared/tools/sass_profile.py (standard library at import; its model needs no triton)."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "tools", "sass_profile.py")
    if not os.path.exists(path):
        pytest.skip("../shared is absent: no ../shared/tools/sass_profile.py next to the repo")
    spec = importlib.util.spec_from_file_location("sass_profile", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("n,n_int,n_mufu,elements,warps", [
    (499, 442, 0, 1024, 8),  # old selection loop: int-bound
    (490, 99, 16, 2048, 8),  # old KL pass 1: issue-bound
    (10, 1, 2, 256, 8),  # MUFU-bound
    (502, 152, 33, 8192, 8),  # new KL stream
])
def test_issue_model_is_sass_profiles_model(n, n_int, n_mufu, elements, warps):
    """The static model's issue bound is the tool's own (``sass_profile._model``), term and
    rate, with the machine constants read from the tool; and it scales as a rate should:
    twice the elements per thread per iteration, half the time per element."""
    sp = _sass_profile()
    m = Machine.from_tool({k: getattr(sp, k) for k in
                           ("SMS", "SCHEDULERS", "GHZ", "HBM_TBS", "INT_CYCLES", "MUFU_CYCLES")})
    lp = {"instructions": n, "groups": {"int": n_int, "special": n_mufu},
          "global_bytes_per_thread": 16}
    ref = sp._model(lp, elements, warps)
    e = elements / (32 * warps)
    cycles, bound = sm.issue_cycles(n, n_int, n_mufu, m)
    assert bound == ref["bound_term"] and cycles == ref["cycles_per_warp_iteration"][bound]
    s_el = sm.issue_seconds_per_element(n, n_int, n_mufu, e, m)
    # the tool's whole-GPU rate is the inverse of the model's time per element
    assert s_el > 0 and s_el * ref["elements_per_s"] == pytest.approx(1.0, rel=1e-12)
    # the bound is a rate of its term: twice the instructions of an issue-bound loop take
    # twice as long, and they never make any loop faster
    slower = sm.issue_seconds_per_element(2 * n, n_int, n_mufu, e, m)
    assert slower >= s_el
    if bound == "issue":
        assert slower == pytest.approx(2 * s_el)
    assert sm.issue_seconds_per_element(n, n_int, n_mufu, 2 * e, m) == pytest.approx(s_el / 2)


def test_unroll_factor():
    assert sm.unroll_factor(64, 8, 2) == 4  # zero fill: 4 x (8 elements x 2 B) per iteration
    assert sm.unroll_factor(48, 8, 6) == 1
    assert sm.unroll_factor(0, 8, 2) == 1  # no global access: nothing to tell
    with pytest.raises(ModelError, match="not a whole multiple"):
        sm.unroll_factor(40, 8, 2)


def test_headline_minimum_traffic():
    n = sm.CASE.kind_rows()
    assert n == {"initiating": 819, "common": 4915, "other": 2458}
    assert sm.CASE.loss_min_bytes == 3 * 5734 * 128256 * 2
    assert sm.CASE.loss_min_bytes / 1e9 == pytest.approx(4.41, abs=0.005)
    # the dense floor: every row without a loss still writes its zero gradient row
    assert sm.CASE.min_bytes == (3 * 5734 + 2458) * 128256 * 2
    assert sm.CASE.min_bytes / 1e9 == pytest.approx(5.04, abs=0.005)
    h200, h100 = sm.MACHINES["h200"], sm.MACHINES["h100"]
    assert sm.CASE.min_bytes / h200.hbm_bytes_per_s * 1e3 == pytest.approx(1.051, abs=0.001)
    assert sm.CASE.min_bytes / h100.hbm_bytes_per_s * 1e3 == pytest.approx(1.505, abs=0.001)
    # the GPU check's bandwidth uses the same two floors (bench.common.Case)
    from bench.common import Case as BenchCase

    c = BenchCase(rows=8192, vocab=128256, k=5000, dtype="bf16")
    assert (c.min_bytes, c.dense_min_bytes) == (sm.CASE.loss_min_bytes, sm.CASE.min_bytes)


def test_l2_hit_fraction():
    p = Pass("a", "x", rereads=("z", "r"), reuse=2.0)
    assert sm.l2_hit_fraction(p, 10, 2000, 20000) == 0.5
    assert sm.l2_hit_fraction(p, 1, 2000, 20000) == 1.0  # fits: capped at 1
    assert sm.l2_hit_fraction(Pass("a", "x", reads=("z",)), 10, 2000, 20000) == 0.0
    assert sm.l2_hit_fraction(replace_hit(p, 0.25), 10, 2000, 20000) == 0.25


def replace_hit(p, h):
    return Pass(p.loop, p.why, p.repeat, p.reads, p.rereads, p.reuse, p.writes, l2_hit=h)


def _toy():
    # 10 rows x V 1000, 2 B: 2 initiating, 5 common, 3 other rows; 1 MB/s of HBM and an L2
    # that holds half of what 10 rows in flight re-read at reuse 2, so every number is round.
    case = Case(rows=10, vocab=1000, elem_size=2, init_frac=0.2, common_frac=0.5)
    m = Machine(hbm_tbs=1e-6, l2_bytes=20000)
    loops = {"a": {"s_per_element": 1e-9, "rows_in_flight": 10},
             "b": {"s_per_element": 1e-12, "rows_in_flight": 10},
             "slow": {"s_per_element": 1e-5, "rows_in_flight": 10}}
    passes = {
        "initiating": {
            "forward": [Pass("a", "first read", reads=("r",)),
                        Pass("a", "3 re-reads, half from L2", repeat=3, rereads=("r",), reuse=2.0)],
            "backward": [Pass("b", "read + write", reads=("g",), writes=("o",))],
        },
        "common": {"forward": [Pass("slow", "issue-bound", reads=("z", "r"))], "backward": []},
        "other": {"forward": [Pass("b", "zero fill", writes=("g",))], "backward": []},
    }
    return case, m, loops, passes


def test_predict_from_pass_table_and_instruction_counts():
    case, m, loops, passes = _toy()
    pred = sm.predict(case, m, loops, passes)
    got = [(r["kind"], r["phase"], r["loop"], r["hbm_bytes"], r["bound"]) for r in pred["passes"]]
    assert got == [("initiating", "forward", "a", 4000, "memory"),
                   ("initiating", "forward", "a", 6000, "memory"),  # 2 x 3 x 2000 x (1 - 0.5)
                   ("initiating", "backward", "b", 8000, "memory"),
                   ("common", "forward", "slow", 20000, "issue"),  # 5 x 1000 x 1e-5 s > 0.02 s
                   ("other", "forward", "b", 6000, "memory")]
    assert pred["passes"][1]["l2_hit"] == 0.5
    assert pred["phase_s"]["forward"] == pytest.approx(0.004 + 0.006 + 0.05 + 0.006)
    assert pred["phase_s"]["backward"] == pytest.approx(0.008)
    assert pred["total_s"] == pytest.approx(0.074)
    # the floor: 3 tensors of the 7 loss rows, and the zero gradient row of the 3 others
    assert pred["loss_min_bytes"] == 3 * 7 * 2000
    assert pred["min_bytes"] == 3 * 7 * 2000 + 3 * 2000
    assert pred["ideal_s"] == pytest.approx(0.048)
    assert pred["roofline"] == pytest.approx(0.048 / 0.074)
    assert pred["loss_roofline"] == pytest.approx(0.042 / 0.074)
    assert pred["forward_roofline"] == pytest.approx(0.048 / 0.066)
    assert pred["overlap_s"] == pytest.approx(max(0.044, 0.05 + 8e-6 + 5e-9))
    # the bounds: every re-read from L2 drops the 6000 B pass to its issue time
    all_l2 = sm.predict(case, m, loops, passes, l2_hit=1.0)
    assert all_l2["total_s"] == pytest.approx(0.074 - 0.006 + 6e-6)
    assert sm.predict(case, m, loops, passes, l2_hit=0.0)["total_s"] == pytest.approx(0.080)


def test_pass_table_checks():
    case, m, loops, passes = _toy()
    passes["common"]["backward"] = None
    with pytest.raises(ModelError, match=r"not written yet: passes\['common'\]\['backward'\]"):
        sm.predict(case, m, loops, passes)
    _, _, _, passes = _toy()
    passes["other"]["forward"] = [Pass("nope", "x", writes=("g",))]
    with pytest.raises(ModelError, match="names loop 'nope'"):
        sm.predict(case, m, loops, passes)


def test_versions_table_shape():
    old, rowwise = versions.VERSIONS["old"], versions.VERSIONS["rowwise"]
    new = versions.VERSIONS["new"]
    assert old["source"] == {"git_ref": "03fcec1"}
    assert rowwise["source"] == new["source"] == {"worktree": True}
    assert set(new["passes"]) == set(rowwise["passes"]) == set(old["passes"]) == set(sm.KINDS)
    for kind in sm.KINDS:
        assert set(new["passes"][kind]) == set(old["passes"][kind]) == set(sm.PHASES)
    roles = {r for job in old["jobs"].values() for r in job["loops"]}
    assert roles == {"select", "local_a", "local_b", "kl_stream", "kl_grad", "zero_fill", "scale"}
    sm.check_passes(old["passes"], dict.fromkeys(roles))
    row_roles = {r: s for job in rowwise["jobs"].values() for r, s in job["loops"].items()}
    # the radix select's loop always (main path or the bracket's fallback), the bracket's
    # counting pass only where it is the default (triton before 3.9)
    bracket = versions.SELECT_NEW == "bracket"
    selects = {"select_radix"} | ({"select"} if bracket else set())
    assert set(row_roles) == (roles - {"select"}) | selects
    assert all(s["fallback"] is None for s in row_roles.values())
    assert rowwise["jobs"]["forward"]["constexprs"]["BRACKET"] == bracket
    sel = [p.loop for p in rowwise["passes"]["initiating"]["forward"]
           if p.loop.startswith("select")]
    assert sel == (["select"] if bracket else ["select_radix", "select_radix"])
    # new: the per-row kernel takes the initiating rows alone (LOCAL_ONLY), the split-row
    # kernel the others, each read (KL) or written (zero) once
    assert new["jobs"]["forward"]["constexprs"]["LOCAL_ONLY"] is True
    new_roles = {r for job in new["jobs"].values() for r in job["loops"]}
    assert new_roles == {"local_a", "local_b", "split_kl", "split_zero", "scale"} | selects
    assert new["passes"]["initiating"] == rowwise["passes"]["initiating"]
    (kl,) = new["passes"]["common"]["forward"]
    assert (kl.loop, kl.reads, kl.rereads, kl.writes) == ("split_kl", ("z", "r"), (), ("grad",))
    (zero,) = new["passes"]["other"]["forward"]
    assert (zero.loop, zero.reads, zero.writes) == ("split_zero", (), ("grad",))
    split = new["jobs"]["split"]
    assert split["constexprs"]["G"] * split["constexprs"]["CHUNK"] >= sm.CASE.vocab
    # old: 8 radix levels over r, passes A and B, KL passes 1 and 2, zero fill, scale_rows
    init = old["passes"]["initiating"]["forward"]
    assert sum(p.repeat for p in init if p.loop == "select") == 8


def test_a_stated_unroll_factor_is_used_as_it_is():
    # the split-row loop moves its tensors plus a few records: 244 B per thread-iteration
    # for 32 elements x 3 tensors x 2 B = 192 B is no whole multiple, so it states unroll 1
    lp = {"label": "L0", "global_bytes_per_thread": 244, "instructions": 1223,
          "groups": {"int": 213, "special": 100}}
    m = sm.MACHINES["h200"]
    with pytest.raises(ModelError, match="not a whole multiple"):
        report._loop_figures(lp, 8192, 256, 3, sm.CASE, m)
    fig = report._loop_figures(lp, 8192, 256, 3, sm.CASE, m, unroll=1)
    assert fig["unroll"] == 1 and fig["e"] == 32
    assert fig["instructions_per_element"] == pytest.approx(1223 / 32)
    assert fig["s_per_element"] == pytest.approx(
        sm.issue_seconds_per_element(1223, 213, 100, 32, m))


def test_last_line_format():
    line = sm.last_line(sm.CASE, 0.1083, sm.MACHINES["h200"])
    assert line == ("predicted forward+backward at 8192 x 128256 bf16 on the H200: 11% of the "
                    "HBM roofline, the dense zero gradient rows in the floor (model, not "
                    "measured)")
    for name in ("h100", "h200"):
        assert re.fullmatch(r"predicted forward\+backward at 8192 x 128256 bf16 on the H[12]00: "
                            r"\d+% of the HBM roofline, the dense zero gradient rows in the floor "
                            r"\(model, not measured\)",
                            sm.last_line(sm.CASE, 0.95, sm.MACHINES[name]))


FAKE_SRC = """\
def k(V, BLOCK):
    acc = 0
    for start in range(0, V, BLOCK):  # LOOP: select
        acc += 1
    for start in range(0, V, BLOCK):
        acc += 2
    x = 1  # LOOP: not_a_loop
    return acc
"""


def test_marker_lookup(tmp_path):
    (tmp_path / "ops").mkdir()
    (tmp_path / "ops" / "topk.py").write_text(FAKE_SRC)
    found = sources.find_loop_lines(tmp_path, {"select": {"fallback": None},
                                          "other_loop": {"fallback": "topk.py:5"}})
    assert found == {"select": ("topk.py", 3, "marker"),
                     "other_loop": ("topk.py", 5, "line fallback")}
    with pytest.raises(ModelError, match=r"marker `# LOOP: kl_grad` not found"):
        sources.find_loop_lines(tmp_path, {"kl_grad": {"fallback": None}})
    with pytest.raises(ModelError, match=r"fallback topk.py:4 is not a `for` line"):
        sources.find_loop_lines(tmp_path, {"kl_grad": {"fallback": "topk.py:4"}})
    with pytest.raises(ModelError, match=r"not on the line of a `for`"):
        sources.find_loop_lines(tmp_path, {"not_a_loop": {"fallback": None}})
    # a marker wins over the fallback; two markers of one role are an error
    assert sources.find_loop_lines(tmp_path, {"select": {"fallback": "topk.py:5"}})["select"][1] == 3
    (tmp_path / "ops" / "palu_loss.py").write_text(FAKE_SRC)
    with pytest.raises(ModelError, match=r"appears 2 times"):
        sources.find_loop_lines(tmp_path, {"select": {"fallback": None}})


# ------------------------------------------------------------------------- issue 23

def _floor_passes():
    """A kernel that moves exactly the dense floor: one read of z and r and one write of the
    gradient per loss row, one zero gradient row per other row, nothing re-read."""
    once = [Pass("mem", "z, r in, gradient out", reads=("z", "r"), writes=("g",))]
    return {"initiating": {"forward": list(once), "backward": []},
            "common": {"forward": list(once), "backward": []},
            "other": {"forward": [Pass("mem", "zero row", writes=("g",))], "backward": []}}


def test_a_kernel_at_the_dense_floor_is_at_100_percent():
    """The floor counts the zero gradient rows: a memory-bound kernel that moves exactly the
    floor is at 100% on either machine (the old, loss-rows-only floor capped it below 1),
    and on the headline case that cap is the 87.5% the issue names."""
    case = sm.CASE
    loops = {"mem": {"s_per_element": 1e-18, "rows_in_flight": 132}}
    for m in sm.MACHINES.values():
        pred = sm.predict(case, m, loops, _floor_passes())
        assert pred["hbm_bytes"] == case.min_bytes
        assert pred["roofline"] == pytest.approx(1.0, rel=1e-12)
        cap = case.loss_min_bytes / case.min_bytes
        assert pred["loss_roofline"] == pytest.approx(cap, rel=1e-12) and cap < 1
    assert case.loss_min_bytes / case.min_bytes == pytest.approx(0.875, abs=0.001)
    # more rows without a loss raise the floor by one row each, never the loss floor
    more = Case(rows=8192 + 100, init_frac=819 / 8292, common_frac=4915 / 8292)
    assert more.kind_rows()["other"] == 2558
    assert more.min_bytes - case.min_bytes == 100 * case.row_bytes
    assert more.loss_min_bytes == case.loss_min_bytes


def test_machines_h100_and_h200():
    """Both parts: one chip (same issue bound), their own HBM bandwidth and L2; a memory-bound
    kernel is slower on the H100 by the bandwidth ratio, an issue-bound one is not."""
    h100, h200 = sm.MACHINES["h100"], sm.MACHINES["h200"]
    assert (h100.hbm_tbs, h200.hbm_tbs) == (3.35, 4.8)
    assert h100.sms == h200.sms == 132 and h100.ghz == h200.ghz == 1.98
    assert h100.l2_bytes <= h200.l2_bytes
    assert sm.issue_seconds_per_element(500, 150, 33, 32, h100) == \
        sm.issue_seconds_per_element(500, 150, 33, 32, h200)
    # with_tool takes the chip constants from sass_profile, keeps the part's HBM and L2
    tool = {"SMS": 132, "SCHEDULERS": 4, "GHZ": 1.98, "HBM_TBS": 4.8, "INT_CYCLES": 2,
            "MUFU_CYCLES": 8}
    assert h100.with_tool(tool) == h100
    assert h100.with_tool({**tool, "SMS": 100}).sms == 100
    assert h100.with_tool({**tool, "SMS": 100}).hbm_tbs == 3.35
    case = sm.CASE
    mem = {"mem": {"s_per_element": 1e-18, "rows_in_flight": 132}}
    t100 = sm.predict(case, h100, mem, _floor_passes())["total_s"]
    t200 = sm.predict(case, h200, mem, _floor_passes())["total_s"]
    assert t100 / t200 == pytest.approx(4.8 / 3.35, rel=1e-12)
    slow = {"mem": {"s_per_element": 1e-9, "rows_in_flight": 132}}  # issue-bound everywhere
    assert sm.predict(case, h100, slow, _floor_passes())["total_s"] == \
        pytest.approx(sm.predict(case, h200, slow, _floor_passes())["total_s"], rel=1e-12)
    # a larger L2 never makes a re-read cost more
    p = Pass("a", "x", rereads=("z",), reuse=2.0)
    assert sm.l2_hit_fraction(p, 132, case.row_bytes, h200.l2_bytes) >= \
        sm.l2_hit_fraction(p, 132, case.row_bytes, h100.l2_bytes)
    assert [m.name for m in report.parse_machines("both")] == ["H100", "H200"]
    assert report.parse_machines("h100") == [h100]
    with pytest.raises(ModelError, match="--machine 'a100'"):
        report.parse_machines("a100")
    with pytest.raises(SystemExit) as e:
        static_model.main(["--machine", "a100"])
    assert e.value.code == 2


def test_each_selection_loop_is_charged_its_own_cost():
    """A role compiled to several SASS loops (tl.static_range): the j-th pass of a phase is
    charged the j-th loop when the counts agree, else every pass the main loop."""
    case, m, _, _ = _toy()
    cheap, dear = {"label": "L0", "s_per_element": 1e-6}, {"label": "L1", "s_per_element": 3e-6}
    loops = {"sel": {"s_per_element": 3e-6, "label": "L1", "rows_in_flight": 10,
                     "instances": [cheap, dear]},
             "b": {"s_per_element": 1e-12, "rows_in_flight": 10}}
    two = [Pass("sel", "pass 0", reads=("r",)), Pass("sel", "pass 1", rereads=("r",), reuse=1)]
    passes = {"initiating": {"forward": two, "backward": []},
              "common": {"forward": [], "backward": []},
              "other": {"forward": [Pass("b", "zero", writes=("g",))], "backward": []}}
    pred = sm.predict(case, m, loops, passes)
    sel = [r for r in pred["passes"] if r["loop"] == "sel"]
    assert [r["sass"] for r in sel] == ["L0", "L1"]
    n = case.kind_rows()["initiating"]
    assert [r["issue_s"] for r in sel] == pytest.approx([n * 1000 * 1e-6, n * 1000 * 3e-6])
    # the same passes charged the main (dearest) loop twice cost more; order matters
    flat = {**loops, "sel": {k: v for k, v in loops["sel"].items() if k != "instances"}}
    assert sm.predict(case, m, flat, passes)["total_s"] > pred["total_s"]
    swapped = {**loops, "sel": {**loops["sel"], "instances": [dear, cheap]}}
    assert [r["sass"] for r in sm.predict(case, m, swapped, passes)["passes"][:2]] == ["L1", "L0"]
    # one pass, or three, against two loops: the main loop for each (a remainder loop)
    for lst in (two[:1], two + two[:1]):
        passes["initiating"]["forward"] = lst
        got = [r["sass"] for r in sm.predict(case, m, loops, passes)["passes"]
               if r["loop"] == "sel"]
        assert got == ["L1"] * len(lst)
