"""K devices in virtual time (benchmarks/parallel_virtual.py): the replayed decoupled training
is the real one where the clock does not matter and follows the simulated poll answers where
it does; a synchronous method's priced step is its simulated run's; bad input is refused."""
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from test_parallel_race import STEPS, assert_same, reference

TINY = ["--width", "32", "--depth", "4", "--batch-size", "40", "--optimizer", "sgd", "--lr", "0.1",
        "--dataset", "mnist"]


def replayed(tiny_data, method, polls, steps=STEPS):
    from benchmarks.parallel_race import run_parser, validate
    from common.data import load_data
    from common.stage_replay import train
    args = run_parser().parse_args(["--method", method, "--K", "2", "--steps", str(steps), "--data-dir",
                                    str(tiny_data), *TINY])
    validate(args)
    data = load_data("mnist", tiny_data, torch.device("cpu"), flat=False)
    accuracy, net = train(args, data, polls, eval_every=1, eval_size=200)
    return accuracy, dict(net.named_parameters())


def test_replayed_dgl_is_the_one_process_strategy(tiny_data):
    """Two stage threads on their local losses end where layerwise_demo's decoupled strategy
    ends in one process (and so where the two-process run ends: test_parallel_race)."""
    from common.stage_networks import split, stage_of
    from layerwise_demo import decoupled_losses

    def dgl_loss(net, x, y):
        parts = [stage_of(net, split(net, 2)[0], k) for k in range(2)]
        return sum(loss for loss, _ in decoupled_losses([b for b, _ in parts], [h for _, h in parts], x, y))
    accuracy, weights = replayed(tiny_data, "dgl", [[], []])
    assert sorted(accuracy) == list(range(STEPS + 1)) and all(0 <= a <= 1 for a in accuracy.values())
    assert_same(weights, reference(tiny_data, dgl_loss))


def test_ddg_follows_the_poll_answers_and_only_them(tiny_data):
    """The same answers train the same weights; 'the gradient is back' at every poll (stage 0
    applies each gradient before its next forward) trains other weights than 'not yet'."""
    steps = 6
    waits = replayed(tiny_data, "ddg", [[True] * steps, []], steps)[1]
    again = replayed(tiny_data, "ddg", [[True] * steps, []], steps)[1]
    stale = replayed(tiny_data, "ddg", [[False] * steps, []], steps)[1]
    assert_same(again, waits)
    first = "blocks.0.1.weight"
    assert not torch.allclose(waits[first], stale[first])


@pytest.mark.parametrize("method", ["gpipe", "1f1b", "ddp"])
def test_a_synchronous_step_priced_once_is_every_step_of_a_simulated_run(method):
    """The study prices a synchronous run as steps x the steady step: every step of a
    simulated run of 12 steps ends that step's price after the previous one."""
    from common.stage_virtual_time import Link, price
    link = Link(1e-3, 10e9 / 8)
    once = price(method, K=4, link=link, steps=8)["seconds_per_step"]
    finish = price(method, K=4, link=link, steps=12)["finish"]
    assert finish == pytest.approx([once * (s + 1) for s in range(12)], rel=1e-9)


@pytest.mark.parametrize("flags, says", [([], "no such file"), (["--K", "32"], "--K 32: the race's network"),
                                         (["--K", "3"], "--K 3: the race's network")])
def test_the_study_refuses_bad_input_in_one_line(tmp_path, flags, says):
    result = subprocess.run([sys.executable, "benchmarks/parallel_race.py", "--backend", "virtual", "--json",
                             str(tmp_path / "none.json"), *flags], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and says in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "none.json").exists()
