"""async_mach.py and its runtime (common/runtime.py): the backends run, faults end
the run cleanly, a slow child does not hold its parent back, bad flags are refused
before anything is written, and a delayed gradient with no delay is backprop's."""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, ctrl_c_reaches_child, read_run, run_script

import async_mach as am
from common import pulse, runtime, runtime_flags
from common.rendezvous import AnsweringBoard, answered_within, free_port
from common.transport import WALL_CLOCK

SCRIPT = "async_mach.py"


def tiny(tiny_data, out, *extra):
    return ("--dataset", "mnist", "--data-dir", tiny_data, "--threads", "1", "--out", out,
            "--eval-every", "15", "--log-seconds", "1", *extra)


def wait_for_metrics(out, process, timeout=60):
    """Until the run folder has metrics.csv: the components are up and reporting."""
    deadline = time.time() + timeout
    while not (out / "metrics.csv").exists():
        assert time.time() < deadline and process.poll() is None, process.stderr.read()
        time.sleep(0.2)


def kill_and_wait(pid, run, bound_s=10):
    """kill -9 `pid`; the run (a Popen) must end within bound_s; returns its stderr."""
    os.kill(pid, signal.SIGKILL)
    killed = time.time()
    _, stderr = run.communicate(timeout=30)
    assert time.time() - killed < bound_s
    return stderr


def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


# -- mechanisms ----------------------------------------------------------------
def components(n, seed=0):
    torch.manual_seed(seed)
    return [am.Component(30, [16, 12], 8, 10, "torch") for _ in range(n)]


def test_delayed_gradient_with_no_delay_is_the_synchronous_gradient():
    child, parent = components(2)
    x, y = torch.randn(6, 30), torch.randint(0, 10, (6,))
    child_input = child.student(x).detach()  # the synthetic input the child answered with
    # synchronous reference: backprop straight through parent and child
    loss = F.cross_entropy(parent.logits(parent.embed(x, child.embed(x, child_input))), y)
    reference = torch.autograd.grad(loss, list(child.teacher.parameters()))
    # asynchronous: answer -> grad message -> the child's delayed gradient, with no step between
    with torch.no_grad():
        answer = child.embed(x, child_input)
    _, grad_e, _, _ = am.answer_gradient(parent, x, y, answer)
    grads, passed_on = am.delayed_gradient(child, x, child_input, grad_e, input_is_real=False)
    names = [n for n, _ in child.named_parameters()]
    teacher = [g for n, g in zip(names, grads) if n.startswith("teacher.")]
    assert passed_on is None
    for got, want in zip(teacher, reference):
        torch.testing.assert_close(got, want)
    assert all(g.abs().sum() == 0 for n, g in zip(names, grads) if not n.startswith("teacher."))

    # a real delay (the child took an optimizer step in between) changes it
    with torch.no_grad():
        for p in child.teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    stale, _ = am.delayed_gradient(child, x, child_input, grad_e, input_is_real=False)
    first_teacher = names.index("teacher.0.weight")
    assert not torch.allclose(stale[first_teacher], grads[first_teacher])


def test_delayed_gradient_passes_on_to_the_grandchild_like_backprop():
    grandchild, child, parent = components(3, seed=1)
    x, y = torch.randn(5, 30), torch.randint(0, 10, (5,))
    g_input = grandchild.student(x).detach()
    loss = F.cross_entropy(parent.logits(parent.embed(
        x, child.embed(x, grandchild.embed(x, g_input)))), y)
    reference = torch.autograd.grad(loss, list(grandchild.teacher.parameters()))
    with torch.no_grad():
        g_answer = grandchild.embed(x, g_input)
        c_answer = child.embed(x, g_answer)
    _, grad_c, _, _ = am.answer_gradient(parent, x, y, c_answer)
    _, grad_g = am.delayed_gradient(child, x, g_answer, grad_c, input_is_real=True)
    grads, _ = am.delayed_gradient(grandchild, x, g_input, grad_g, input_is_real=False)
    offset = len(list(grandchild.student.parameters()))
    for got, want in zip(grads[offset:], reference):
        torch.testing.assert_close(got, want)


def test_queue_lifo_fifo_drops_and_learn_step_averages():
    q = am.GradientQueue(3, "lifo")
    for v in range(5):
        q.push([torch.full((2,), float(v))], v)
    assert q.drops == 2 and [v for _, v in q.items] == [2, 3, 4]
    assert [v for _, v in q.pop(2)] == [4, 3]
    f = am.GradientQueue(3, "fifo")
    for v in range(3):
        f.push([torch.full((2,), float(v))], v)
    assert [v for _, v in f.pop(2)] == [0, 1]
    p = torch.nn.Parameter(torch.zeros(2))
    am.learn_step([p], torch.optim.SGD([p], lr=1.0),
                  [([torch.tensor([1.0, 2.0])], 0), ([torch.tensor([3.0, 6.0])], 0)])
    torch.testing.assert_close(p.detach(), torch.tensor([-2.0, -4.0]))


# -- backends ------------------------------------------------------------------
@pytest.mark.parametrize("extra", [("--backend", "thread", "--components", "3"),
                                   ("--backend", "thread", "--components", "3",
                                    "--topology", "kgraph", "--forward", "child",
                                    "--latency-ms", "2", "--jitter-ms", "2"),
                                   ("--backend", "process", "--components", "2")])
def test_backends_run_and_learn(tiny_data, tmp_path, extra):
    out = tmp_path / "run"
    result = run_script(SCRIPT, *tiny(tiny_data, out, "--iterations", "30", *extra))
    assert result.returncode == 0, result.stderr
    _, summary, rows = read_run(out)
    K = int(extra[extra.index("--components") + 1])
    assert summary["status"] == "completed"
    assert sorted(summary["test_accuracy"]) == [f"component_{i}" for i in range(K)]
    # chance is 0.1. With 30 asynchronous steps the weakest component lands anywhere in
    # 0.49-0.56 (kgraph, child forwarding, 9 runs), so the bar sits well below that spread.
    assert min(summary["test_accuracy"].values()) > 0.3
    for c in summary["components"].values():
        assert c["steps"] == 30 and c["messages_received"] > 0
    assert "msg/s" in rows[-1] and "stale" in rows[-1]
    assert " msg/s " in result.stdout
    # training time is the longest component's own clock (less its evaluations), not the
    # wall time since the run folder was made (which includes starting everything up). The
    # monitor sees every component ready, and every one finished, by polling the board: the
    # wall clock may start (and stop) up to one poll after the components' own clocks
    longest = max(c["seconds"] for c in summary["components"].values())
    assert 0 < summary["train_seconds"] <= longest < summary["wall_seconds"] + 0.05
    # the run's clock starts once every component is ready: starting up is not training
    assert summary["startup_seconds"] > 0 and float(rows[0]["seconds"]) < 1 + 0.5   # --log-seconds 1
    assert summary["wall_seconds"] - longest < 1


def test_torchrun_cuda_follows_local_rank(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "3")
    args = argparse.Namespace(backend="torchrun")
    assert runtime.local_device(args, torch.device("cuda")) == torch.device("cuda", 1)
    assert runtime.local_device(args, torch.device("cuda", 0)) == torch.device("cuda", 0)  # asked for
    assert runtime.local_device(args, torch.device("cpu")) == torch.device("cpu")
    args.backend = "process"
    assert runtime.local_device(args, torch.device("cuda")) == torch.device("cuda")


def test_torchrun_two_ranks(tiny_data, tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    assert torchrun, "torchrun comes with torch"
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", SCRIPT,
                             "--backend", "torchrun", "--components", "2",
                             *map(str, tiny(tiny_data, out, "--iterations", "40"))],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    _, summary, _ = read_run(out)
    assert summary["status"] == "completed" and summary["backend"] == "torchrun"
    assert sorted(summary["components"]) == ["component_0", "component_1"]


# -- faults ----------------------------------------------------------------------
def test_under_torchrun_a_killed_rank_ends_the_run_and_rank_0_keeps_its_summary(tiny_data, tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    agent = subprocess.Popen([torchrun, "--standalone", "--nproc-per-node", "2", SCRIPT,
                              "--backend", "torchrun", "--components", "2",
                              *map(str, tiny(tiny_data, out, "--seconds", "120"))],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, preexec_fn=ctrl_c_reaches_child)
    try:
        wait_for_metrics(out, agent)
        ranks = [p for p in children_of(agent.pid) if "async_mach.py" in p[1]]
        assert len(ranks) == 2
        stderr = kill_and_wait(max(pid for pid, _ in ranks), agent)   # the rank started last: rank 1
    finally:
        if agent.poll() is None:
            agent.kill()
    assert agent.returncode != 0
    assert "async_mach.py: failed: terminated by SIGTERM" in stderr   # rank 0's one line
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and "SIGTERM" in summary["error"]
    assert not any(pid_alive(pid) for pid, _ in ranks)


def children_of(pid):
    """(pid, command line) of every process whose parent is `pid`, from /proc."""
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
                cmdline = open(f"/proc/{entry}/cmdline").read().replace("\0", " ")
            except OSError:
                continue
            if int(stat.split(")")[-1].split()[1]) == pid:
                children.append((int(entry), cmdline))
    return children


def test_a_raising_component_fails_the_run_and_is_named(tiny_data, tmp_path):
    out = tmp_path / "run"
    result = run_script(SCRIPT, *tiny(tiny_data, out, "--components", "3", "--seconds", "60",
                                      "--fail-component", "1", "--fail-after", "10"))
    assert result.returncode == 1
    assert "failed: component_1" in result.stderr
    _, summary, _ = read_run(out)
    assert summary["status"] == "failed" and "component_1" in summary["error"]
    # one line on the terminal; the traceback is in the log the line names
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
    log = out / "component_1.log"
    assert str(log) in result.stderr and "failing on purpose" in log.read_text()


@pytest.mark.parametrize("victim", [1])   # a middle one, with two neighbours (the leaf and the top: the same path)
def test_a_killed_process_ends_the_run_and_leaves_nothing_behind(tiny_data, tmp_path, victim):
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    launcher = subprocess.Popen([sys.executable, SCRIPT, *map(str, tiny(
        tiny_data, out, "--backend", "process", "--components", "3", "--seconds", "120"))],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=ctrl_c_reaches_child)
    try:
        wait_for_metrics(out, launcher)
        workers = json.loads((out / "workers.json").read_text())
        stderr = kill_and_wait(workers[f"component_{victim}"], launcher)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 1
    assert f"component_{victim}: process killed by signal 9" in stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1
    _, summary, rows = read_run(out)
    assert summary["status"] == "failed" and rows
    assert not any(pid_alive(pid) for pid in workers.values())


def test_when_the_launcher_holding_the_store_is_killed_no_component_outlives_it(tiny_data, tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    launcher = subprocess.Popen([sys.executable, SCRIPT, *map(str, tiny(
        tiny_data, out, "--backend", "process", "--components", "2", "--seconds", "120"))],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        metrics = out / "metrics.csv"
        while not (metrics.exists() and "component_" in metrics.read_text()):   # they are training
            assert time.time() < deadline and launcher.poll() is None
            time.sleep(0.2)
        workers = json.loads((out / "workers.json").read_text())
        launcher.kill()
        launcher.communicate(timeout=10)
        deadline = time.time() + 10
        while any(pid_alive(pid) for pid in workers.values()):
            assert time.time() < deadline, "a component outlived its launcher"
            time.sleep(0.1)
    finally:
        if launcher.poll() is None:
            launcher.kill()


def test_ctrl_c_stops_every_process_and_writes_the_summary(tiny_data, tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    launcher = subprocess.Popen([sys.executable, SCRIPT, *map(str, tiny(
        tiny_data, out, "--backend", "process", "--components", "2", "--seconds", "120"))],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=ctrl_c_reaches_child)
    try:
        wait_for_metrics(out, launcher)
        workers = json.loads((out / "workers.json").read_text())
        launcher.send_signal(signal.SIGINT)
        launcher.communicate(timeout=30)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 130
    assert read_run(out)[1]["status"] == "interrupted"
    assert not any(pid_alive(pid) for pid in workers.values())


def test_a_slow_child_does_not_hold_its_parent_back(tiny_data, tmp_path):
    # component 0 is the child of component 1; it sleeps 300 ms a loop. In student
    # mode the parent never waits: it keeps stepping and skips spikes it cannot place.
    out = tmp_path / "run"
    result = run_script(SCRIPT, *tiny(tiny_data, out, "--components", "2", "--seconds", "4",
                                      "--slow-component", "0", "--slow-ms", "300"))
    assert result.returncode == 0, result.stderr
    parts = read_run(out)[1]["components"]
    child, parent = parts["component_0"], parts["component_1"]
    assert child["steps"] <= 4 / 0.3 + 1
    assert parent["steps"] >= 3 * child["steps"]
    assert parent["spikes_skipped"] > 0


# -- bad flags -------------------------------------------------------------------
@pytest.mark.parametrize("flags, message", [
    (("--components", "0"), "--components: expected a positive integer, got 0"),
    (("--latency-ms", "-5"), "--latency-ms: expected a number >= 0, got -5"),
    (("--jitter-ms", "-1"), "--jitter-ms: expected a number >= 0"),
    (("--queue-size", "0"), "--queue-size: expected a positive integer, got 0"),
    (("--queue-order", "random"), "--queue-order: invalid choice"),
    (("--backend", "rpc"), "--backend: invalid choice"),
    (("--slow-component", "5"), "--slow-component 5: there are only 3 components"),
    (("--backend", "torchrun"), "RANK/WORLD_SIZE are not set"),
    (("--speeds", "1", "1", "1"), "--speeds is for the simulated machines: use it with --backend virtual"),
    (("--backend", "virtual", "--speeds", "1", "0.1"), "--speeds gives 2 factors for 3 components"),
    (("--backend", "virtual", "--machine", "1", "0", "1"), "--machine: expected a positive number, got 0"),
    (("--malformed-component", "3"), "--malformed-component 3: there are only 3 components"),
    (("--malformed-component", "0"), "--malformed-component sends bytes over gloo: use --backend process"),
])
def test_bad_flags_exit_2_with_one_line(tiny_data, tmp_path, capsys, monkeypatch, flags, message):
    # in-process: argparse and the checks after it run before any data or worker
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(SystemExit) as exit_:
        am.main(list(map(str, tiny(tiny_data, tmp_path / "run", *flags))))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_refused_run_exits_2_with_one_line_and_creates_nothing(tiny_data, tmp_path):
    out = tmp_path / "runs" / "refused"
    result = run_script(SCRIPT, *tiny(tiny_data, out, "--accumulate", "20", "--queue-size", "16"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--accumulate 20 is more than --queue-size 16" in lines[0]
    assert not (tmp_path / "runs").exists()


def test_help_text_on_every_flag_and_the_test_flags_hidden():
    parser = am.build_parser()
    undocumented = [a.option_strings for a in parser._actions if a.option_strings and not a.help]
    assert undocumented == []
    text = parser.format_help()
    for hidden in ("--fail-component", "--fail-after", "--slow-component", "--slow-ms",
                   "--malformed-component"):
        assert hidden not in text
    assert "--embedding-size" in text and "--backend" in text


def test_torchrun_world_size_must_match_components(tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as exit_:
        am.main(["--backend", "torchrun", "--components", "3",
                 *map(str, tiny(tiny_data, tmp_path / "run"))])
    assert exit_.value.code == 2
    assert "--components 3 but torchrun started 2 ranks" in capsys.readouterr().err


def test_a_rank_whose_peers_never_arrive_fails_with_one_line_within_the_join_bound(tiny_data, tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1")
    began = time.time()
    result = subprocess.run([sys.executable, SCRIPT, "--backend", "torchrun", "--components", "2",
                             "--join-timeout", "3", *map(str, tiny(tiny_data, out))],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and time.time() - began < 25
    last = result.stderr.strip().splitlines()[-1]
    assert "the 2 ranks did not all join within 3 s" in last and "Traceback" not in result.stderr
    assert json.loads((out / "summary.json").read_text())["status"] == "failed"


def test_a_board_that_stops_answering_fails_the_component_within_the_peer_timeout():
    """A TCPStore round trip over a link gone down waits minutes (its timeout does not bound it):
    through the AnsweringBoard a process's component gets, the pulse's stop check gives up after
    --peer-timeout and names the store; posting the failure is bounded too, and run_worker
    returns. Answers and errors pass through as they are."""
    answering, answered = threading.Event(), threading.Event()

    class StuckBoard(dict):   # answers until `answering` is cleared, then hangs like the dead link
        def check(self, keys):
            if not answering.is_set():
                answered.wait(10)
            return all(key in self for key in keys)

        def set(self, key, value):
            self.check([])
            self[key] = value

    answering.set()
    args = argparse.Namespace(peer_timeout=0.3, seconds=None, slow_ms=0, slow_component=None, fail_after=None,
                              fail_component=None, malformed_component=None, log_seconds=1.0, components=1,
                              join_timeout=5.0, out=None)

    class Worker:
        rank, board, neighbours, failure = 0, AnsweringBoard(StuckBoard(), 0.3), [], None
        transport = argparse.Namespace(clock=WALL_CLOCK)

        def __init__(self):
            self.args = args

        def send(self, dst, **message):
            pass

        def progress(self):
            return {}

        def run(self):
            beat = pulse.Pulse(self, args)
            answering.clear()
            while time.perf_counter() < began + 5:   # bounded, should the check hang after all
                beat()

    began = time.perf_counter()
    worker = Worker()
    assert pulse.run_worker(worker) is False
    assert time.perf_counter() - began < 0.3 + 0.3 + 1.5   # the check, then the post
    assert "rendezvous store (on component_0's host) did not answer for 0.3 s" in worker.failure
    answered.set()
    assert answered_within(1, lambda k: 2 * k, 21) == 42
    with pytest.raises(KeyError):
        answered_within(1, {}.__getitem__, "absent")


def test_an_accuracy_is_logged_once_when_it_is_measured_not_repeated(tiny_data, tmp_path):
    """Components that evaluate only at the start and at the end leave the merged lines in
    between without an accuracy, instead of repeating the step-0 number as if it were current."""
    out = tmp_path / "run"
    result = run_script(SCRIPT, *tiny(tiny_data, out, "--components", "2", "--seconds", "3",
                                      "--eval-every", "100000", "--log-seconds", "0.3"))
    assert result.returncode == 0, result.stderr
    _, summary, rows = read_run(out)
    assert len(rows) >= 4   # several merged lines over 3 s
    for name in ("component_0", "component_1"):
        measured = [row[f"acc/{name}"] for row in rows if row.get(f"acc/{name}")]
        assert len(measured) == 2   # step 0 and the final evaluation, each logged once
        assert float(measured[-1]) == pytest.approx(summary["test_accuracy"][name], abs=1e-5)


# -- ranks sharing a host, and what arrives from the network ---------------------
@pytest.mark.parametrize("backend, local, cores, threads", [
    ("process", None, 2, 1), ("process", None, 16, 5), ("process", None, 4, 1),
    ("torchrun", "2", 2, 1), ("torchrun", "1", 8, 8), ("torchrun", None, 8, None),   # cannot tell
    ("thread", None, 8, None), ("virtual", None, 8, None)])
def test_ranks_on_one_host_share_its_cores_unless_threads_is_given(monkeypatch, backend, local, cores, threads):
    monkeypatch.setattr(runtime_flags, "host_cores", lambda: cores)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    if local:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local)
    args = argparse.Namespace(backend=backend, components=3, threads=None)
    runtime_flags.share_cores(args)
    assert args.threads == threads
    line = runtime_flags.threads_line("component_0", args)
    ranks = {None: "3 ranks", "2": "2 ranks", "1": "1 rank"}[local]
    assert line == (None if threads is None else
                    f"component_0: {threads} torch thread{'s' * (threads > 1)} "
                    f"({cores} cores / {ranks} on this host; --threads sets it)")
    args = argparse.Namespace(backend=backend, components=3, threads=4)   # given: kept, nothing said
    runtime_flags.share_cores(args)
    assert args.threads == 4 and runtime_flags.threads_line("component_0", args) is None


def test_a_malformed_payload_in_a_live_run_is_counted_dropped_and_the_run_completes(tiny_data, tmp_path):
    """Component 1 sends component 0 a truncated message over gloo mid-run (a hidden test flag).
    Without --threads, the launcher says how many torch threads each process got."""
    out = tmp_path / "run"
    flags = list(tiny(tiny_data, out, "--backend", "process", "--components", "2",
                      "--iterations", "40", "--malformed-component", "1"))
    threads = flags.index("--threads")
    result = run_script(SCRIPT, *flags[:threads], *flags[threads + 2:])   # no --threads
    assert result.returncode == 0, result.stderr
    _, summary, rows = read_run(out)
    assert summary["status"] == "completed"
    parts = summary["components"]
    assert parts["component_0"]["bad_messages"] == 1 and parts["component_1"]["bad_messages"] == 0
    assert summary["bad_messages"] == 1 and rows[-1]["malformed"] == "1"
    # dropped, not delivered: every message counted as sent was received, and no more
    assert sum(c["messages_sent"] for c in parts.values()) == sum(c["messages_received"] for c in parts.values())
    threads = max(1, runtime_flags.host_cores() // 2)
    assert (f"component_0 to component_1: {threads} torch thread{'s' * (threads > 1)} each "
            f"({runtime_flags.host_cores()} cores / 2 ranks on this host; --threads sets it)") in result.stdout
    assert summary["threads_per_component"] == threads
