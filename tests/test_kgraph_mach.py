"""kgraph_mach.py end to end, its mechanisms (locality, stop-gradients, the classroom) and its flags."""
import re

import pytest
import torch

import kgraph_mach
from conftest import assert_stacked_is_one_by_one, curve_lines, grads, member_as_mlp, member_grads, read_run, run_script, untouched

LINE = re.compile(r"^iter +\d+ \| epoch +[\d.]+ \| +[\d.]+ s \| acc teacher_0 [\d.]+ teacher_1 [\d.]+ "
                  r"teacher_2 [\d.]+ ensemble [\d.]+ \| loss ce_0 \S+ ce_1 \S+ ce_2 \S+ "
                  r"distill_0 \S+ distill_1 \S+ distill_2 \S+$")


def small_model(k=3, classroom="mlp", seed=0):
    torch.manual_seed(seed)
    return kgraph_mach.KGraphMach(k, 20, [16, 12], 8, 10, "tf", classroom)


def test_smoke_run_writes_every_file(tiny_data, tmp_path):
    """The default mlp classroom end to end (sum is checked in-process below)."""
    classroom = "mlp"
    out = tmp_path / "run"
    result = run_script("kgraph_mach.py", "--dataset", "mnist", "--data-dir", tiny_data, "--k", 3,
                        "--classroom", classroom, "--iterations", 30, "--eval-every", 15,
                        "--threads", 1, "--out", out)
    assert result.returncode == 0, result.stderr
    lines = curve_lines(result.stdout)
    assert len(lines) == 2 and all(LINE.match(l) for l in lines), result.stdout
    config, summary, rows = read_run(out)
    assert config["k"] == 3 and config["classroom"] == classroom
    assert summary["status"] == "completed" and summary["iterations"] == 30
    assert set(summary["test_accuracy"]) == {"teacher_0", "teacher_1", "teacher_2", "ensemble"}
    assert set(summary["distill_loss"]) == {"teacher_0", "teacher_1", "teacher_2"}
    assert {"acc/teacher_0", "acc/ensemble", "loss/distill_2", "train_seconds"} <= set(rows[0])
    assert [int(r["iteration"]) for r in rows] == [15, 30]
    # the toy classes are easy: working teachers are far above chance after 30 steps
    assert min(summary["test_accuracy"].values()) > 0.5


def test_local_output_never_touches_other_components():
    """NaN in every other component (students, teachers, logits, classrooms) leaves teacher_1 unchanged."""
    model = small_model()
    x = torch.randn(6, 20)
    with torch.no_grad():
        before = model.local_logits(1, x)
        for p in model.parameters():  # every parameter is stacked, component first
            p[0] = float("nan")
            p[2] = float("nan")
        after = model.local_logits(1, x)
        ensemble = model.ensemble_logits(x)
    assert torch.isfinite(after).all()
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert torch.isnan(ensemble).all()  # the ensemble does run them: the test can fail


def test_local_logits_are_the_real_composition():
    model = small_model()
    x = torch.randn(5, 20)
    student, teacher, logits = (member_as_mlp(part, 2)
                                for part in (model.students, model.teachers, model.logits))
    torch.testing.assert_close(model.local_logits(2, x),
                               logits(teacher(torch.cat([x, student(x)], 1))))


def test_teacher_loss_reaches_no_student_and_no_other_teacher():
    model = small_model()
    x, y = torch.randn(6, 20), torch.randint(0, 10, (6,))
    cross_entropies, _ = model.losses(x, y)
    cross_entropies[1].backward()
    assert untouched(grads(model.students))
    for i in (0, 2):
        assert untouched(member_grads(model.teachers, i) + member_grads(model.logits, i))
    assert all(g.abs().sum() > 0
               for g in member_grads(model.teachers, 1) + member_grads(model.logits, 1))


@pytest.mark.parametrize("classroom", ["mlp", "sum"])
def test_distillation_reaches_only_its_student(classroom):
    model = small_model(classroom=classroom)
    x, y = torch.randn(6, 20), torch.randint(0, 10, (6,))
    _, distills = model.losses(x, y)
    distills[0].backward()
    assert untouched(grads(model.teachers) + grads(model.logits))
    assert untouched(member_grads(model.students, 1) + member_grads(model.students, 2))
    assert all(g.abs().sum() > 0 for g in member_grads(model.students, 0))
    if classroom == "mlp":  # as in the original, the classroom is never trained
        assert all(not p.requires_grad for p in model.classrooms.parameters())


def distills_and_reference_embeddings(classroom):
    """The model's distillation losses, and each teacher's and student's embedding computed alone."""
    model = small_model(classroom=classroom)
    x, y = torch.randn(5, 20), torch.randint(0, 10, (5,))
    _, distills = model.losses(x, y)
    t = [model.teacher_embedding(i, x) for i in range(3)]
    s = [member_as_mlp(model.students, i)(x) for i in range(3)]
    return model, distills, t, s


def test_sum_classroom_is_the_sum_of_the_other_teachers():
    _, distills, t, s = distills_and_reference_embeddings("sum")
    expected = torch.stack([((t[1] + t[2] - s[0]) ** 2).sum() / 2,
                            ((t[0] + t[2] - s[1]) ** 2).sum() / 2,
                            ((t[0] + t[1] - s[2]) ** 2).sum() / 2])
    torch.testing.assert_close(distills, expected)


def test_mlp_classroom_reads_the_others_in_order():
    model, distills, t, s = distills_and_reference_embeddings("mlp")
    classroom_1 = member_as_mlp(model.classrooms, 1)(torch.cat([t[0], t[2]], 1))
    torch.testing.assert_close(distills[1], ((classroom_1 - s[1]) ** 2).sum() / 2)


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("classroom", kgraph_mach.CLASSROOMS)
def test_stacked_losses_are_the_one_by_one_formula(classroom, k):
    """The fast form training uses (all components at once) against the plain loop over
    components: the same value and the same gradient on every parameter, loss by loss."""
    model = small_model(k=k, classroom=classroom)   # the frozen classroom's parameters are not compared
    assert_stacked_is_one_by_one(model, k, torch.randn(7, 20), torch.randint(0, 10, (7,)))


def test_ensemble_is_the_mean_of_the_logits():
    model = small_model()
    x = torch.randn(5, 20)
    expected = sum(model.local_logits(i, x) for i in range(3)) / 3
    torch.testing.assert_close(model.ensemble_logits(x), expected)


def test_train_step_updates_every_trained_parameter_of_every_component():
    model = small_model()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad],
                                 lr=1e-3, fused=True)
    trained = [p for p in model.parameters() if p.requires_grad]
    frozen = [p.detach().clone() for p in model.classrooms.parameters()]
    before = [p.detach().clone() for p in trained]
    cross_entropies, distills = kgraph_mach.train_step(
        model, optimizer, torch.randn(6, 20), torch.randint(0, 10, (6,)))
    assert cross_entropies.shape == distills.shape == (3,)
    assert all(not torch.equal(b[i], p[i]) for b, p in zip(before, trained) for i in range(3))
    assert all(torch.equal(b, p) for b, p in zip(frozen, model.classrooms.parameters()))


BAD_FLAGS = [
    (["--k", "1"], "--k: a graph needs at least 2 components"),
    (["--k", "0"], "--k: a graph needs at least 2 components"),
    (["--embedding-size", "0"], "--embedding-size: expected a positive integer, got 0"),
    (["--classroom", "mean"], "--classroom: invalid choice: 'mean'"),
    (["--hidden", "0", "256"], "--hidden: expected a positive integer, got 0"),
]


@pytest.mark.parametrize("flags,message", BAD_FLAGS, ids=[" ".join(f[0]) for f in BAD_FLAGS])
def test_bad_flag_is_one_line_and_exit_2(flags, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        kgraph_mach.main([*flags, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.count("\n") == 1 and message in err, err


def test_bad_k_from_the_shell_has_no_traceback(tmp_path):
    result = run_script("kgraph_mach.py", "--k", "1", "--out", tmp_path / "r")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()  # stopped while parsing, before any work
