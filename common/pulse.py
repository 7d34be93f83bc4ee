"""A component's side of async_mach's runtime: the Pulse its loop calls once per turn
(report, stop, heartbeats, dead neighbours, --seconds, the hidden test flags), the
report it posts on the board, and `run_worker`, which runs one component and posts
how it ended. The board's keys and the report's fields: common/runtime.py.
"""
import json
import time
import traceback
from pathlib import Path

import torch

from common.transport import PeerFailure, encode


class Stopped(Exception):
    """The run was stopped from outside (another component failed, or Ctrl-C)."""


HEARTBEAT_S = 0.5      # a component tells its neighbours it is alive this often
MALFORMED_AFTER = 10   # --malformed-component: steps before its malformed payloads
REPORT_S = 0.5         # and posts its progress on the board this often


class Pulse:
    """A component's side of the runtime, made when its loop starts and called once
    per turn. It uses the worker's rank, board, neighbours, `send(dst, **message)`,
    `progress()` (the worker's figures for its report, see post_report) and the clock
    of its transport, `transport.clock` (wall time, or virtual time: then each call is where
    the simulator ends this component's turn and gives it the next)."""

    def __init__(self, worker, args):
        self.rank, self.board, self.neighbours = worker.rank, worker.board, worker.neighbours
        self.send, self.progress, self.clock = worker.send, worker.progress, worker.transport.clock
        self.transport = worker.transport
        self.peer_timeout, self.seconds = args.peer_timeout, args.seconds
        self.slow_s = args.slow_ms / 1000 if args.slow_component == worker.rank else 0.0
        self.fail_after = args.fail_after if args.fail_component == worker.rank else None
        self.malformed = args.malformed_component == worker.rank
        self.start = now = self.clock.now()
        self.last = {n: now for n in self.neighbours}
        self.next_beat = self.next_report = now
        self.evaluations = 0  # a new accuracy is reported at once
        self.report_every = min(REPORT_S, args.log_seconds)

    def due(self, transport, idle):
        """Every message that is due now; an idle loop waits a few ms for the first."""
        while (m := transport.receive(0.005 if idle else 0.0)) is not None:
            self.last[m["src"]] = self.clock.now()
            yield m
            idle = False

    def __call__(self, quiet=()):
        """Report, stop, beat, and check for silence (except from the `quiet` neighbours)."""
        self.clock.tick()
        now = self.clock.now()
        progress = self.progress()
        if now >= self.next_report or progress.get("evaluations", 0) > self.evaluations:
            if self.board.check(["stop"]):
                raise Stopped()
            self.report(progress)
            self.next_report, self.evaluations = now + self.report_every, progress.get("evaluations", 0)
        if now >= self.next_beat:
            for n in self.neighbours:
                self.send(n, kind="beat")
            self.next_beat = now + HEARTBEAT_S
        for n in self.neighbours:
            if n not in quiet and now - self.last[n] > self.peer_timeout:
                raise PeerFailure(f"component_{n} sent nothing for {self.peer_timeout:g} s "
                                  "(it died or the link is down)")

    def report(self, progress=None, finished=False):
        post_report(self.board, self.rank, progress or self.progress(), finished=finished,
                    seconds=self.clock.now() - self.start,
                    bad_messages=getattr(self.transport, "bad_messages", 0))   # dropped by the transport

    def time_is_up(self, steps, iterations):
        """After --seconds if it was given, else after `iterations` steps."""
        if self.seconds is not None:
            return self.clock.now() - self.start >= self.seconds
        return steps >= iterations

    def before_step(self, steps):
        """The hidden test flags: --slow-component sleeps, --fail-component raises,
        --malformed-component sends each neighbour a truncated message (it must be dropped)."""
        if self.malformed and steps >= MALFORMED_AFTER:
            self.malformed = False
            payload = encode({"kind": "grad", "key": 0, "grad": torch.zeros(8)})[:-4]
            for n in self.neighbours:
                self.transport.send_payload(n, payload)
        if self.slow_s:
            self.clock.sleep(self.slow_s)
        if self.fail_after is not None and steps >= self.fail_after:
            raise RuntimeError(f"failing on purpose after {self.fail_after} steps "
                               "(--fail-component)")


COUNTED = ("steps", "sent", "received", "queue_max", "spikes_skipped", "grads_lost",
           "ce", "distill", "eval_seconds", "evaluations", "bad_messages")


def post_report(board, rank, progress, **fields):
    """Post a worker's report: its progress (each COUNTED figure 0 until counted) and fields."""
    report = dict({"staleness": {}, **{k: 0 for k in COUNTED}}, **progress, **fields)
    board.set(f"report/{rank}", json.dumps(report))


def component_log(args, rank):
    """Where component <rank>'s tracebacks (and, for a process, its stderr) go: the run
    folder (made here too on a host whose rank 0 runs elsewhere)."""
    Path(args.out).mkdir(parents=True, exist_ok=True)
    return Path(args.out) / f"component_{rank}.log"


def run_worker(worker):
    """Run one worker; True when it finished. A failure is posted on the board under the
    component's name, its traceback in its log, so the monitor can stop the others and name it;
    a neighbour gone silent is posted as `lost`: a symptom, whose cause the monitor looks for."""
    try:
        wait_for_the_others(worker)
        worker.run()
        worker.board.set(f"finished/{worker.rank}", "1")
        return True
    except Stopped:
        return False
    except PeerFailure as error:
        worker.failure = f"component_{worker.rank}: {error}"
        post(worker.board, f"lost/{worker.rank}", worker.failure)
        return False
    except BaseException as error:
        log = component_log(worker.args, worker.rank)
        with open(log, "a") as f:
            traceback.print_exc(file=f)
        worker.failure = f"component_{worker.rank}: {type(error).__name__}: {error} (traceback in {log})"
        post(worker.board, "failed", worker.failure)
        return False


def wait_for_the_others(worker):
    """Post ready/<rank> and start only when every component has: all clocks start together."""
    board, K, bound = worker.board, worker.args.components, worker.args.join_timeout
    board.set(f"ready/{worker.rank}", "1")
    deadline = time.perf_counter() + bound
    while not board.check([f"ready/{i}" for i in range(K)]):
        if board.check(["stop"]):
            raise Stopped()
        if time.perf_counter() > deadline:
            missing = [i for i in range(K) if not board.check([f"ready/{i}"])]
            raise PeerFailure(f"component(s) {missing} not ready within --join-timeout {bound:g} s")
        time.sleep(0.01)


def post(board, key, value):
    """Tell the board, if it can still be reached: the store may be what went away."""
    try:
        board.set(key, value)
    except (RuntimeError, TimeoutError, PeerFailure):
        pass
