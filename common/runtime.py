"""The runtime that starts asynchronous components, watches them and ends the
run: in threads of one process, in spawned processes, as torchrun ranks
on several hosts, or on K virtual machines simulated in one process
(--backend virtual, common/virtual_time.py). Nothing here is the idea: what a component is, what its
messages mean and how it learns live in async_mach.py, which hands this
module a worker factory

    make_worker(rank, data, transport, board, device) -> worker

A worker has `rank`, `board`, `neighbours`, `send(dst, **message)`,
`progress()` (a dict of its figures) and `run()`, its own loop, which returns
when the component has finished. The loop makes a Pulse and calls it once per
turn: the Pulse posts the worker's report, raises Stopped once the board
holds "stop", sends the neighbours heartbeats (messages of kind "beat", which
the worker may ignore), fails the run when one of them has been silent for
--peer-timeout seconds, says when --seconds are up, and applies the hidden
test flags. The board (common/transport.py) is how the runtime and the
workers talk:

    report/<rank>    the worker's progress, JSON (below), every fraction of a second
    finished/<rank>  the worker's run() returned: it has left
    failed           "component_<rank>: <error> (traceback in <run folder>/component_<rank>.log)",
                     posted when a worker raised: the cause of a failed run
    lost/<rank>      "component_<rank>: <which neighbour went silent>": a symptom; the monitor
                     waits LOST_GRACE_S for a cause (a failure, a dead process) before naming it
    stop             the run is over (a failure, Ctrl-C, or the end): every loop leaves

A report (post_report) holds the COUNTED figures (steps, messages sent and
received, queue_max, spikes_skipped, grads_lost, the last ce and distill,
eval_seconds) and learn_steps, epoch, accuracy (None before the first
evaluation), queue, drops, staleness ({staleness: gradients learned at it}),
seconds and finished. The
monitor merges the reports into one logged line every --log-seconds and
into the summary's per-component figures.

A failed run ends with ComponentFailed (a worker raised, its process died, or
a neighbour went silent with no other cause found), a cli.RunFailed: one
line on the terminal, exit 1; tracebacks (and, for processes, everything the
component wrote on stderr, gloo's C++ frames included) go to
<run folder>/component_<rank>.log, which the line names. Every wait is bounded:
joining by --join-timeout, and once joined every store call and every send by
--peer-timeout, so a host that vanishes is a fault, not a hang. A spawned
component exits with its launcher (which holds the store).
The flags of this module (--backend, --seconds, --log-seconds, the simulated
network, --peer-timeout, --join-timeout, the rendezvous address, and the test
flags hidden from --help) are added by `add_arguments` and checked by `validate`.
"""
import argparse
import ctypes
import datetime
import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

import torch

from common import cli
from common.transport import (DictBoard, GlooTransport, PeerFailure, ThreadTransport,
                              connect_store, free_port, interface_towards)


class Stopped(Exception):
    """The run was stopped from outside (another component failed, or Ctrl-C)."""


class ComponentFailed(cli.RunFailed):
    """A component raised, or its process died; the message names it."""


HEARTBEAT_S = 0.5      # a component tells its neighbours it is alive this often
LOST_GRACE_S = 2.0     # a silent neighbour is reported; this long to learn why before naming it
REPORT_S = 0.5         # and posts its progress on the board this often


def add_arguments(parser):
    """The runtime's flags, as one argument group (returned)."""
    run = parser.add_argument_group("running (common/runtime.py)")
    run.add_argument("--backend", choices=("thread", "process", "torchrun", "virtual"), default="thread",
                     help="thread: one process; process: one per component; torchrun: ranks; "
                          "virtual: K simulated machines on virtual time (deterministic)")
    run.add_argument("--seconds", type=cli.positive_float, default=None,
                     help="stop each component after this many seconds (overrides --iterations)")
    run.add_argument("--log-seconds", type=cli.positive_float, default=2.0,
                     help="print one merged line this often")
    run.add_argument("--latency-ms", type=cli.nonnegative_float, default=0.0,
                     help="simulated network delay added to every message")
    run.add_argument("--jitter-ms", type=cli.nonnegative_float, default=0.0,
                     help="extra uniform random delay, 0 to this, per message")
    run.add_argument("--peer-timeout", type=cli.positive_float, default=6.0,
                     help="seconds of silence after which a neighbour is declared dead")
    run.add_argument("--join-timeout", type=cli.positive_float, default=30.0,
                     help="seconds a process waits for the rendezvous store and for every rank to join")
    run.add_argument("--machine", type=cli.positive_float, nargs=3, default=None,
                     metavar=("GFLOPS", "GELEMENTS", "OP_US"),
                     help="virtual: each machine's speed: matrix-multiply GFLOP/s, 1e9 elements/s "
                          "written by other ops, microseconds per op (default: this one's, measured)")
    run.add_argument("--speeds", type=cli.positive_float, nargs="+", default=None,
                     help="virtual: one speed factor per component (0.1: ten times slower)")
    run.add_argument("--stop-at-accuracy", type=cli.positive_float, default=None, metavar="A",
                     help="virtual: end the run once every component has reached test accuracy A")
    run.add_argument("--master-addr", default="127.0.0.1",
                     help="process backend: address of the rendezvous store")
    run.add_argument("--master-port", type=cli.nonnegative_int, default=0,
                     help="process backend: its port (0: pick a free one)")
    # for tests and demos, hidden from --help: slow one component down, or make one fail
    run.add_argument("--slow-component", type=cli.nonnegative_int, help=argparse.SUPPRESS)
    run.add_argument("--slow-ms", type=cli.nonnegative_float, default=0.0, help=argparse.SUPPRESS)
    run.add_argument("--fail-component", type=cli.nonnegative_int, help=argparse.SUPPRESS)
    run.add_argument("--fail-after", type=cli.positive_int, default=20, help=argparse.SUPPRESS)
    return run


def validate(args):
    """The test flags name a component that exists; --backend torchrun: this process
    is one of exactly --components ranks. Raises cli.UserError."""
    K = args.components
    for flag in ("--slow-component", "--fail-component"):
        chosen = getattr(args, flag[2:].replace("-", "_"))
        if chosen is not None and chosen >= K:
            raise cli.UserError(f"{flag} {chosen}: there are only {K} components, "
                                f"numbered 0 to {K - 1}")
    for flag in ("--machine", "--speeds", "--stop-at-accuracy"):
        if getattr(args, flag[2:].replace("-", "_")) is not None and args.backend != "virtual":
            raise cli.UserError(f"{flag} is for the simulated machines: use it with --backend virtual")
    if args.speeds is not None and len(args.speeds) != K:
        raise cli.UserError(f"--speeds gives {len(args.speeds)} factors for {K} components; "
                            f"give one per component (or pass --components {len(args.speeds)})")
    if args.backend != "torchrun":
        return
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise cli.UserError("--backend torchrun: RANK/WORLD_SIZE are not set; start it with "
                            f"torchrun --nproc-per-node K {os.path.basename(sys.argv[0])} "
                            "--backend torchrun")
    world = int(os.environ["WORLD_SIZE"])
    if world != K:
        raise cli.UserError(f"--components {K} but torchrun started {world} ranks; "
                            f"pass --components {world} or start {K} ranks")


def rank(args):
    """This process's component: its torchrun rank, else 0 (the launcher)."""
    return int(os.environ["RANK"]) if args.backend == "torchrun" else 0


def local_device(args, device):
    """Under torchrun, a bare --device cuda means this rank's own GPU, cuda:LOCAL_RANK
    (modulo the GPUs there are), not GPU 0 for every rank of a host."""
    if args.backend != "torchrun" or device.type != "cuda" or device.index is not None:
        return device
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())


def launch(run, args, make_worker, farewells, device, data=None, load=None):
    """Run the --components workers on --backend until all have finished.

    `farewells` = (kind, counts): component r's last messages are counts[r]
    messages of that kind (its receiver stops after them). Threads and
    torchrun ranks use `data`; each spawned process calls `load(device)`.
    On a torchrun rank other than 0, run is None: rank 0 keeps the run folder.
    """
    if run is not None:
        run.summary.update(backend=args.backend, latency_ms=args.latency_ms,
                           jitter_ms=args.jitter_ms)
    if args.backend == "thread":
        run_threads(run, args, make_worker, data, device)
    elif args.backend == "process":
        run_processes(run, args, make_worker, farewells, load)
    elif args.backend == "virtual":
        run_virtual(run, args, make_worker, data, device)
    else:
        run_torchrun(run, args, make_worker, farewells, data, device, rank(args))


class Pulse:
    """A component's side of the runtime, made when its loop starts and called once
    per turn. It uses the worker's rank, board, neighbours, `send(dst, **message)`,
    `progress()` (the worker's figures for its report, see post_report) and the clock
    of its transport, `net.clock` (wall time, or virtual time: then each call is where
    the simulator ends this component's turn and gives it the next)."""

    def __init__(self, worker, args):
        self.rank, self.board, self.neighbours = worker.rank, worker.board, worker.neighbours
        self.send, self.progress, self.clock = worker.send, worker.progress, worker.net.clock
        self.peer_timeout, self.seconds = args.peer_timeout, args.seconds
        self.slow_s = args.slow_ms / 1000 if args.slow_component == worker.rank else 0.0
        self.fail_after = args.fail_after if args.fail_component == worker.rank else None
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
                    seconds=self.clock.now() - self.start)

    def time_is_up(self, steps, iterations):
        """After --seconds if it was given, else after `iterations` steps."""
        if self.seconds is not None:
            return self.clock.now() - self.start >= self.seconds
        return steps >= iterations

    def before_step(self, steps):
        """The hidden test flags: --slow-component sleeps, --fail-component raises."""
        if self.slow_s:
            self.clock.sleep(self.slow_s)
        if self.fail_after is not None and steps >= self.fail_after:
            raise RuntimeError(f"failing on purpose after {self.fail_after} steps "
                               "(--fail-component)")


COUNTED = ("steps", "sent", "received", "queue_max",
           "spikes_skipped", "grads_lost", "ce", "distill", "eval_seconds", "evaluations")


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
    except (RuntimeError, TimeoutError):
        pass


# ============================================================================ the monitor
def fault_watch(board, K, alive=None):
    """A check to call every few ms; it raises ComponentFailed naming the cause: a dead process
    (`alive`, named before its neighbours notice), a posted failure, or a neighbour gone silent
    (a symptom: named only when no other cause came within LOST_GRACE_S)."""
    lost_since = None

    def check():
        nonlocal lost_since
        if alive is not None:
            alive()
        if board.check(["failed"]):
            raise ComponentFailed(board.get("failed").decode())
        lost = [i for i in range(K) if board.check([f"lost/{i}"])]
        if lost and lost_since is None:
            lost_since = time.perf_counter()
        if lost and time.perf_counter() - lost_since > LOST_GRACE_S:
            raise ComponentFailed(board.get(f"lost/{lost[0]}").decode())
    return check


def monitor(run, board, K, log_seconds, alive=None):
    """Once every component is ready, restart the run's clock (starting processes and loading
    data is not training); then log one merged line every log_seconds until all have finished."""
    check_faults = fault_watch(board, K, alive)
    while not board.check([f"ready/{i}" for i in range(K)]):
        check_faults()
        time.sleep(0.01)  # as often as the components look: the clocks start within a poll
    run.restart_clock()
    log = MergedLog(run, board, K)
    while True:
        deadline = time.perf_counter() + log_seconds
        finished = [f"finished/{i}" for i in range(K)]
        try:
            while time.perf_counter() < deadline and not board.check(finished):
                check_faults()
                time.sleep(0.05)
        except ComponentFailed:
            log()  # what the reports say so far, then stop the run
            raise
        if log():
            return


class MergedLog:
    """One line (and metrics row) from the components' latest reports: their steps, the mean
    ce, the accuracies measured since the last line, msg/s, staleness, queues, drops."""

    def __init__(self, run, board, K):
        self.run, self.board, self.K = run, board, K
        self.reports, self.seen = {}, {}  # seen: evaluations already logged, per component
        self.target = getattr(run.args, "stop_at_accuracy", None)
        self.reached = set()  # components whose accuracy has reached --stop-at-accuracy
        self.last_t, self.last_msgs, self.last_stale = run.elapsed(), 0, (0, 0)

    def __call__(self):
        """Log a line; True once every component has finished."""
        reports = self.reports
        for i in range(self.K):
            if self.board.check([f"report/{i}"]):
                reports[i] = json.loads(self.board.get(f"report/{i}"))
        now = self.run.elapsed()
        msgs = sum(r["received"] for r in reports.values())
        totals = [staleness_totals(r) for r in reports.values()]
        stale = (sum(t[0] for t in totals), sum(t[1] for t in totals))
        d_stale = (stale[0] - self.last_stale[0]) / max(1, stale[1] - self.last_stale[1])
        row_extra = {"msg/s": round((msgs - self.last_msgs) / max(now - self.last_t, 1e-9), 1),
                     "stale": round(d_stale, 2),
                     "queue": sum(r["queue"] for r in reports.values()),
                     "drops": sum(r["drops"] for r in reports.values())}
        self.last_t, self.last_msgs, self.last_stale = now, msgs, stale
        # Only accuracies measured since the last line: a component that evaluates rarely
        # leaves its cell empty rather than repeat an old number as if it were current.
        accuracy = {f"component_{i}": r["accuracy"] for i, r in sorted(reports.items())
                    if r["accuracy"] is not None and r["evaluations"] > self.seen.get(i, 0)}
        self.seen.update({i: r["evaluations"] for i, r in reports.items()})
        self.reached.update(i for i, r in reports.items()
                            if self.target and (r["accuracy"] or 0) >= self.target)
        epoch = sum(r["epoch"] for r in reports.values()) / max(1, len(reports))
        steps = sum(r["steps"] for r in reports.values())
        ce = [r["ce"] for r in reports.values() if r["ce"]]
        self.run.log(steps, epoch, accuracy=accuracy,
                     losses={"ce": sum(ce) / len(ce)} if ce else None, extra=row_extra)
        summarise(self.run, reports, stale)
        return len(reports) == self.K and all(r["finished"] for r in reports.values())


def staleness_totals(report):
    """(sum of the staleness of every gradient learned, how many) from a report's histogram."""
    counts = report["staleness"]
    return sum(int(k) * n for k, n in counts.items()), sum(counts.values())


def summarise(run, reports, stale):
    """Per-component figures and the run's totals, into run.summary."""
    run.summary["components"] = {
        f"component_{i}": dict(steps=r["steps"], learn_steps=r["learn_steps"],
                               steps_per_second=round(r["steps"] / max(r["seconds"], 1e-9), 2),
                               train_steps_per_second=round(
                                   r["steps"] / max(r["seconds"] - r["eval_seconds"], 1e-9), 2),
                               messages_received=r["received"], messages_sent=r["sent"],
                               mean_staleness=round(staleness_totals(r)[0] / max(1, staleness_totals(r)[1]), 3),
                               staleness=dict(sorted(r["staleness"].items(), key=lambda kv: int(kv[0]))),
                               queue_max=r["queue_max"], drops=r["drops"],
                               spikes_skipped=r["spikes_skipped"], grads_lost=r["grads_lost"],
                               seconds=round(r["seconds"], 3))
        for i, r in sorted(reports.items())}
    seconds = max((r["seconds"] for r in reports.values()), default=0) or 1e-9
    run.summary["messages_per_second"] = round(sum(r["received"] for r in reports.values()) / seconds, 1)
    run.summary["steps_per_second"] = round(sum(r["steps"] for r in reports.values()) / seconds, 2)
    run.summary["mean_staleness"] = round(stale[0] / max(1, stale[1]), 3)
    # Training time: the longest component's own clock less its evaluations (which the
    # components run themselves, outside the run's evaluating()).
    run.own_train_seconds = max((r["seconds"] - r["eval_seconds"] for r in reports.values()), default=0.0)


# ============================================================================ backends
def run_threads(run, args, make_worker, data, device):
    """Every component a thread of this process; one dataset in memory for all."""
    board = DictBoard()
    transports = ThreadTransport.group(args.components, args.latency_ms / 1000,
                                       args.jitter_ms / 1000, args.seed)
    # Built one after another here: seeding is global, threads would race for it.
    workers = [make_worker(i, data, transports[i], board, device) for i in range(args.components)]
    threads = [threading.Thread(target=run_worker, args=(w,), daemon=True, name=f"component_{w.rank}")
               for w in workers]
    for t in threads:
        t.start()
    try:
        monitor(run, board, args.components, args.log_seconds)
    finally:
        board.set("stop", "1")
        for t in threads:
            t.join(timeout=args.peer_timeout + 5)


def run_virtual(run, args, make_worker, data, device):
    """K virtual machines in this process (common/virtual_time.py): every component a thread,
    but only the one with the earliest virtual clock runs, one turn at a time. The run's clock
    is virtual (the earliest component's); summary.real_seconds is what the simulation took."""
    from common.virtual_time import VirtualWorld, measure_machine
    K, board, began = args.components, DictBoard(), time.perf_counter()
    machine = (dict(zip(("gflops", "gelements", "op_us"), args.machine)) if args.machine
               else measure_machine(args.batch_size))
    world = VirtualWorld(K, machine, args.speeds or [1.0] * K, args.latency_ms / 1000,
                         args.jitter_ms / 1000, args.seed, Stopped)
    workers = [make_worker(i, data, world.transports[i], board, device) for i in range(K)]
    threads = [threading.Thread(target=world.run_component, args=(w.rank, run_worker, w),
                                daemon=True, name=f"component_{w.rank}") for w in workers]
    run.summary.update(clock="virtual", machine=machine, speeds=args.speeds or [1.0] * K)
    for t in threads:
        t.start()
    run.restart_clock(world.now, unit="virtual s")
    check_faults, log, next_line = fault_watch(board, K), MergedLog(run, board, K), 0.0
    target = args.stop_at_accuracy
    try:
        while world.next_turn():
            check_faults()
            if world.now() >= next_line:
                log()
                next_line += args.log_seconds
                if target and len(log.reached) == K:
                    run.summary["stopped_at_accuracy"] = target
                    break
        check_faults()
        log()
    finally:
        world.stop()
        for t in threads:
            t.join(timeout=args.peer_timeout + 5)
        run.summary["real_seconds"] = round(time.perf_counter() - began, 3)


def gloo_transport(store, rank, args, farewells):
    # gloo listens on the interface that routes to the master (GLOO_SOCKET_IFNAME overrides):
    # its own choice, the host name's address, is 127.0.0.1 on many machines.
    master = os.environ.get("MASTER_ADDR", args.master_addr) if args.backend == "torchrun" else args.master_addr
    if "GLOO_SOCKET_IFNAME" not in os.environ and (interface := interface_towards(master)):
        os.environ["GLOO_SOCKET_IFNAME"] = interface
    kind, counts = farewells  # after its neighbours' last messages the receiver thread ends
    transport = GlooTransport(torch.distributed.PrefixStore("pg/", store), rank, args.components,
                              args.peer_timeout, (kind, counts[rank]), args.latency_ms / 1000,
                              args.jitter_ms / 1000, args.seed, join_timeout_s=args.join_timeout)
    store.set_timeout(datetime.timedelta(seconds=args.peer_timeout))   # joined: a lost store is a fault
    return transport


def exit_with_launcher(launcher, log):
    """A component outlives no launcher: the launcher holds the store and the run folder.
    On Linux the kernel sends SIGTERM when it dies (even while C++ holds the GIL)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    while os.getppid() == launcher:   # (also when it died before we asked)
        time.sleep(0.5)
    print("the launcher (which held the store) is gone: exiting", file=log, flush=True)
    os._exit(1)


def process_worker(rank, args, make_worker, farewells, load, port, launcher):
    """A spawned process: one component, gloo point-to-point to its neighbours."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher stops us, not the terminal
    log = open(component_log(args, rank), "a")  # everything on stderr, C++ included, goes there
    os.dup2(log.fileno(), 2)
    threading.Thread(target=exit_with_launcher, args=(launcher, log), daemon=True).start()
    code = 0
    try:
        torch.set_num_threads(args.threads or 1)
        device = cli.resolve_device(args.device)
        data = load(device)
        store = connect_store(args.master_addr, port, False, args.join_timeout)
        board = torch.distributed.PrefixStore("board/", store)
        transport = gloo_transport(store, rank, args, farewells)
        if run_worker(make_worker(rank, data, transport, board, device)):
            transport.close()
    except BaseException:
        code = 1
        traceback.print_exc()   # into the component's log
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(code)  # the receiver thread may sit in gloo; do not wait for it


def run_processes(run, args, make_worker, farewells, load):
    """One spawned process per component; each loads its own data with load(device)."""
    import torch.multiprocessing as mp
    port = args.master_port or free_port(args.master_addr)
    store = connect_store(args.master_addr, port, True, args.join_timeout)
    board = torch.distributed.PrefixStore("board/", store)
    context = mp.get_context("spawn")
    procs = [context.Process(target=process_worker, name=f"component_{i}",
                             args=(i, args, make_worker, farewells, load, port, os.getpid()))
             for i in range(args.components)]
    for p in procs:
        p.start()
    # who is who, for `kill` in demos and tests
    (run.dir / "workers.json").write_text(json.dumps(
        {f"component_{i}": p.pid for i, p in enumerate(procs)}) + "\n")

    def alive():
        for i, p in enumerate(procs):
            if p.exitcode not in (None, 0) and not board.check(["failed"]):
                reason = (f"killed by signal {-p.exitcode}" if p.exitcode < 0
                          else f"exited with code {p.exitcode}")
                raise ComponentFailed(f"component_{i}: process {reason}")

    try:
        monitor(run, board, args.components, args.log_seconds, alive)
    finally:
        board.set("stop", "1")
        deadline = time.perf_counter() + 5
        for p in procs:
            p.join(timeout=max(0.1, deadline - time.perf_counter()))
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()


def torchrun_store(rank, join_timeout_s):
    """The store torchrun set up: its agent's store, or one rank 0 hosts (as env:// does)."""
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    use_agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = connect_store(host, port, rank == 0 and not use_agent, join_timeout_s)
    return torch.distributed.PrefixStore("components/", store)


def run_torchrun(run, args, make_worker, farewells, data, device, rank):
    """This process is torchrun rank `rank`, one component. Rank 0 also runs the
    monitor and keeps the run folder (`run`); the other ranks pass run=None."""
    store = torchrun_store(rank, args.join_timeout)
    board = torch.distributed.PrefixStore("board/", store)
    transport = gloo_transport(store, rank, args, farewells)
    worker = make_worker(rank, data, transport, board, device)
    if rank != 0:  # a plain component: it ends quietly when told to stop, with one line when it failed
        if run_worker(worker):
            transport.close()
        elif getattr(worker, "failure", None):
            raise cli.RunFailed(worker.failure)
        return
    thread = threading.Thread(target=run_worker, args=(worker,), daemon=True)
    thread.start()
    try:
        monitor(run, board, args.components, args.log_seconds)
        thread.join()
        transport.close()
    finally:
        board.set("stop", "1")
