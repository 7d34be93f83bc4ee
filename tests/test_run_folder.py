"""The run folder's clocks and lines, apart from any script."""
import argparse

import torch

from common import run_folder
from common.run_folder import Run


def test_a_line_every_10_s_of_wall_time_without_a_terminal(tmp_path, monkeypatch, capsys):
    """A log without a progress bar never stays silent for 10 s while the run works."""
    args = argparse.Namespace(out=str(tmp_path / "run"), plot=False, seed=0, dataset="mnist")
    now = [0.0]
    monkeypatch.setattr(run_folder.time, "perf_counter", lambda: now[0])
    with Run(args, "test", torch.device("cpu"), total=30) as run:
        for step in run.steps():
            now[0] += 1.0          # each step takes a second of wall time
            if step == 15:
                run.print("iter 15 | an evaluation line")   # a printed line restarts the wait
    out = capsys.readouterr().out.splitlines()
    working = [line for line in out if line.startswith("...")]
    assert working == ["... iter 10 of 30, 10 s wall", "... iter 25 of 30, 25 s wall"], out
