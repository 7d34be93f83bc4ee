"""sequential_mach.py end to end, its mechanisms (locality, stop-gradients, the chain) and its flags."""
import re

import pytest
import torch

import sequential_mach
from common import plots
from conftest import assert_stacked_is_one_by_one, curve_lines, grads, member_as_mlp, member_grads, read_run, run_script, untouched

LINE = re.compile(r"^iter +\d+ \| epoch +[\d.]+ \| +[\d.]+ s \| acc teacher_0 [\d.]+ teacher_1 [\d.]+ "
                  r"chained_1 [\d.]+ backprop_0 [\d.]+ backprop_1 [\d.]+ \| loss ce_0 \S+ ce_1 \S+ "
                  r"distill_0 \S+ distill_1 \S+ backprop_ce_0 \S+ backprop_ce_1 \S+ "
                  r"\| sec/mach [\d.]+ sec/backprop [\d.]+$")


def small_model(n=3, seed=0):
    torch.manual_seed(seed)
    return sequential_mach.SequentialMach(n, 20, [16, 12], 8, 10, "tf")


def test_smoke_run_with_baseline_writes_every_file(tiny_data, tmp_path):
    out = tmp_path / "run"
    result = run_script("sequential_mach.py", "--dataset", "mnist", "--data-dir", tiny_data,
                        "--n-components", 2, "--iterations", 30, "--eval-every", 15,
                        "--baseline", "--threads", 1, "--out", out)
    assert result.returncode == 0, result.stderr
    lines = curve_lines(result.stdout)
    assert len(lines) == 2 and all(LINE.match(l) for l in lines), result.stdout
    assert len([l for l in result.stdout.splitlines() if l.startswith("inference")]) == 2
    config, summary, rows = read_run(out)
    assert config["n_components"] == 2 and config["baseline"] is True
    assert summary["status"] == "completed" and summary["iterations"] == 30
    assert set(summary["test_accuracy"]) == {"teacher_0", "teacher_1", "chained_1",
                                             "backprop_0", "backprop_1"}
    columns = set(rows[0])
    assert {"acc/teacher_0", "acc/teacher_1", "acc/chained_1", "acc/backprop_0",
            "acc/backprop_1", "loss/distill_0", "loss/distill_1", "train_seconds"} <= columns
    assert [int(r["iteration"]) for r in rows] == [15, 30]
    # each model's own training clock, for time-to-accuracy in its own seconds
    clocks = [(float(r["sec/mach"]), float(r["sec/backprop"])) for r in rows]
    assert all(0 < a < b for a, b in zip(clocks[0], clocks[1]))
    assert sum(summary["seconds_per_model"].values()) <= summary["train_seconds"] + 1e-6
    # each curve drawn on its own model's clock, never on the loop's summed training seconds
    assert summary["clock_columns"]["backprop_1"] == "sec/backprop"
    assert summary["clock_columns"]["teacher_1"] == "sec/mach"
    drawn = plots.curves(plots.read_metrics(out), plots.clocks_of(out))
    assert drawn["backprop_1"][1] == [float(r["sec/backprop"]) for r in rows]
    assert drawn["teacher_1"][1] == [float(r["sec/mach"]) for r in rows]
    assert summary["own_train_seconds"]["backprop_1"] == float(rows[-1]["sec/backprop"])
    assert "own training" in result.stdout and "backprop_0/backprop_1" in result.stdout
    gap = summary["test_accuracy"]["teacher_1"] - summary["test_accuracy"]["chained_1"]
    assert summary["local_minus_chained"]["teacher_1"] == pytest.approx(gap, abs=1e-5)
    timing = summary["inference_ms"]
    assert set(timing) == {"teacher_0", "teacher_1"}
    assert all(t["alone"] > 0 and t["chain"] > 0 for t in timing.values())
    # the toy classes are easy: a working teacher is far above chance after 30 steps
    assert summary["test_accuracy"]["teacher_1"] > 0.5
    assert summary["test_accuracy"]["backprop_1"] > 0.5


def test_local_output_never_touches_earlier_components():
    """NaN in every parameter of components 0..i-1 leaves component i's local answer unchanged."""
    model = small_model()
    x = torch.randn(6, 20)
    with torch.no_grad():
        before = model.local_logits(2, x)
        for p in model.parameters():  # every parameter is stacked, component first
            p[:2] = float("nan")
        after = model.local_logits(2, x)
        chained = model.chained_logits(2, x)
    assert torch.isfinite(after).all()
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    # while the chain does run them, so the poison is seen there: the test can fail
    assert torch.isnan(chained).all()


def reference_parts(model, i):
    """Component i as three plain MLPs (student, teacher, logits), copied from the stacks."""
    return [member_as_mlp(part, i) for part in (model.students, model.teachers, model.logits)]


def test_chained_and_local_are_the_real_compositions():
    model = small_model()
    x = torch.randn(5, 20)
    (s0, t0, l0), (s1, t1, l1), (s2, t2, l2) = [reference_parts(model, i) for i in range(3)]
    e0 = t0(torch.cat([x, torch.zeros(5, 8)], 1))
    e1 = t1(torch.cat([x, e0], 1))
    e2 = t2(torch.cat([x, e1], 1))
    torch.testing.assert_close(model.chained_logits(2, x), l2(e2))
    torch.testing.assert_close(model.chained_logits(1, x), l1(e1))
    torch.testing.assert_close(model.local_logits(2, x), l2(t2(torch.cat([x, s2(x)], 1))))


def test_losses_match_a_hand_computation():
    model = small_model(n=2)
    x, y = torch.randn(7, 20), torch.randint(0, 10, (7,))
    cross_entropies, distills = model.losses(x, y)
    (s0, t0, l0), (s1, t1, l1) = [reference_parts(model, i) for i in range(2)]
    e0 = t0(torch.cat([x, s0(x)], 1))
    e1 = t1(torch.cat([x, s1(x)], 1))
    torch.testing.assert_close(distills, torch.stack([(s0(x) ** 2).sum() / 2,
                                                      ((e0 - s1(x)) ** 2).sum() / 2]))
    torch.testing.assert_close(cross_entropies, torch.stack(
        [torch.nn.functional.cross_entropy(l0(e0), y),
         torch.nn.functional.cross_entropy(l1(e1), y)]))


@pytest.mark.parametrize("n", [1, 3])
def test_stacked_losses_are_the_one_by_one_formula(n):
    """The fast form training uses (all components at once) against the plain loop over
    components: the same value and the same gradient on every parameter, loss by loss."""
    assert_stacked_is_one_by_one(small_model(n=n), n, torch.randn(7, 20), torch.randint(0, 10, (7,)))


def test_teacher_loss_reaches_no_student_and_no_other_teacher():
    model = small_model()
    x, y = torch.randn(6, 20), torch.randint(0, 10, (6,))
    cross_entropies, _ = model.losses(x, y)
    cross_entropies[1].backward()
    assert untouched(grads(model.students))                   # sg(s_1) in teacher_1's input
    for i in (0, 2):                                          # no other component moves
        assert untouched(member_grads(model.teachers, i) + member_grads(model.logits, i))
    assert all(g.abs().sum() > 0
               for g in member_grads(model.teachers, 1) + member_grads(model.logits, 1))


def test_distillation_reaches_only_its_student():
    model = small_model()
    x, y = torch.randn(6, 20), torch.randint(0, 10, (6,))
    _, distills = model.losses(x, y)
    distills[2].backward()                                    # student_2 chases sg(t_1)
    assert untouched(grads(model.teachers) + grads(model.logits))
    assert untouched(member_grads(model.students, 0) + member_grads(model.students, 1))
    assert all(g.abs().sum() > 0 for g in member_grads(model.students, 2))


def test_baseline_gradient_flows_down_the_chain():
    torch.manual_seed(0)
    chain = sequential_mach.BackpropChain(3, 20, [16, 12], 8, 10, "tf")
    x, y = torch.randn(6, 20), torch.randint(0, 10, (6,))
    (cross_entropies,) = chain.losses(x, y)
    cross_entropies[2].backward()
    assert all(g is not None and g.abs().sum() > 0 for g in grads(chain.teachers))
    torch.testing.assert_close(chain.logits_of(2, x), chain.logits[2](chain.embeddings(x)[2]))


def test_train_step_updates_every_parameter_of_every_component():
    model = small_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    before = [p.detach().clone() for p in model.parameters()]
    cross_entropies, distills = sequential_mach.train_step(
        model, optimizer, torch.randn(6, 20), torch.randint(0, 10, (6,)))
    assert cross_entropies.shape == distills.shape == (3,)
    assert all(not torch.equal(b[i], p[i]) for b, p in zip(before, model.parameters())
               for i in range(3))


BAD_FLAGS = [
    (["--n-components", "0"], "--n-components: expected a positive integer, got 0"),
    (["--embedding-size", "0"], "--embedding-size: expected a positive integer, got 0"),
    (["--hidden", "512", "0"], "--hidden: expected a positive integer, got 0"),
    (["--init", "xavier"], "--init: invalid choice: 'xavier'"),
    (["--batch-size", "0"], "--batch-size: expected a positive integer, got 0"),
]


@pytest.mark.parametrize("flags,message", BAD_FLAGS, ids=[f[0][0] for f in BAD_FLAGS])
def test_bad_flag_is_one_line_and_exit_2(flags, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        sequential_mach.main([*flags, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.count("\n") == 1 and message in err, err


def test_bad_flag_from_the_shell_has_no_traceback(tmp_path):
    result = run_script("sequential_mach.py", "--n-components", "0", "--out", tmp_path / "r")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "sequential_mach.py: error: argument --n-components: expected a positive integer, got 0"]


def test_divergence_keeps_metrics(tiny_data, tmp_path):
    out = tmp_path / "run"
    result = run_script("sequential_mach.py", "--dataset", "mnist", "--data-dir", tiny_data,
                        "--n-components", 2, "--iterations", 20, "--eval-every", 10,
                        "--lr", "1e10", "--out", out)
    assert result.returncode == 1 and "Try a lower --lr" in result.stderr
    _, summary, rows = read_run(out)
    assert summary["status"] == "diverged" and len(rows) >= 1
