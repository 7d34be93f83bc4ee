"""The K processes of a parallel-race run and their gloo group: started here by a local
launcher, or by torchrun (the same command on K hosts); bounded waits, a dead stage named
in one line, and nothing left running. Nothing here is a training method: those live in
common/pipeline_sync.py and common/pipeline_decoupled.py, the loop every rank runs in
common/stage_loop.py. A process is a "stage" (DDP's rank k is stage_k too).

Local launcher (without torchrun): the run's process forks K children (fork:
they inherit the loaded data and imports, and start in a fraction of a second), then
serves the rendezvous store on --master-addr. Each child:
    stderr -> <run folder>/stage_<k>.log; exits when the launcher does (PR_SET_PDEATHSIG);
    one torch thread; waits at most --join-timeout for all K to post ready/<k>;
    joins the gloo group with timeout --peer-timeout: every collective and every
    point-to-point operation, torch's pipelining engine's included, waits at most that long.
The launcher logs the rows rank 0 posts (row/<n>, JSON) and watches the children. When
one exits non-zero or posts failed/<k>, it waits up to FAULT_GRACE_S for the cause and
names it: a process killed by a signal, else a stage's own error, else a stage that lost
its neighbour (a symptom, which names the silent peer). Then it kills every child and
joins each with a bound. The run ends in one line (cli.RunFailed), metrics so far kept.

torchrun (detected from RANK/WORLD_SIZE): this process is one rank; rank 0 keeps the run
folder and logs its rows itself; a rank that fails raises, and torchrun ends the others.
"""
import contextlib
import datetime
import json
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
import traceback

import torch
import torch.distributed as dist

from common import cli
from common.rendezvous import connect_store, free_port, interface_towards
from common.runtime import exit_with_launcher

FAULT_GRACE_S = 1.0   # after the first sign of a fault, how long to wait for its cause
POLL_S = 0.05


class PeerLost(cli.RunFailed):
    """A neighbour stage went silent or its link broke: a symptom; the message names the peer."""


class StageFailed(cli.RunFailed):
    """The run failed; the message names the stage that did and how."""


def under_torchrun():
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def stage_log(out, k):
    return os.path.join(out, f"stage_{k}.log")


# ============================================================================ bounded waits and links
def wait(work, peer, timeout_s, timeline=None, what="recv"):
    """Wait for one gloo operation with a neighbour, at most timeout_s; a timeout or a broken
    connection is PeerLost naming the neighbour. Time spent blocked goes on the timeline."""
    span = timeline.span("wait", what, peer=peer) if timeline else contextlib.nullcontext()
    try:
        with span:
            work.wait(datetime.timedelta(seconds=timeout_s))
    except RuntimeError as error:
        if "Timed out" in str(error):
            cause = f"{'sent' if what == 'recv' else 'took'} nothing for {timeout_s:g} s: it died or hangs"
        else:
            cause = f"broke its link ({str(error).strip().splitlines()[0][-120:]})"
        raise PeerLost(f"stage_{peer} {cause}") from None


class Link:
    """One direction between neighbour ranks: float32 tensors of one shape, first in first out.

    The receiving end's thread takes the link's `total` messages one after another, each into
    a queue that holds `capacity` (gloo's receive work cannot be polled, only waited on). A
    gloo send completes only once a receive for it is posted, and the sending end keeps at
    most one send unfinished: a sender capacity + 2 messages ahead (the queue, the one being
    received, its own) blocks. That is the bounded queue between two stages.
    """

    def __init__(self, peer, shape, capacity, total, tag, timeline, timeout_s, what, receiving):
        self.peer, self.shape, self.tag, self.what = peer, tuple(shape), tag, what
        self.timeline, self.timeout_s, self.unfinished = timeline, timeout_s, None
        if receiving:
            self.arrived, self.error = queue.Queue(maxsize=capacity), None
            threading.Thread(target=self._receive, args=(total,), daemon=True,
                             name=f"{what}-from-{peer}").start()

    # -- the sending end
    def send(self, tensor):
        tensor = tensor.detach().contiguous()
        self.flush()
        self.unfinished = (dist.isend(tensor, self.peer, tag=self.tag), tensor)
        self.timeline.message(self.what, self.peer, tensor.numel() * tensor.element_size())

    def flush(self):
        """Wait until the last send has been received."""
        if self.unfinished is not None:
            wait(self.unfinished[0], self.peer, self.timeout_s, self.timeline, "send")
            self.unfinished = None

    # -- the receiving end
    def _receive(self, total):
        try:
            for _ in range(total):
                buffer = torch.empty(self.shape)
                wait(dist.irecv(buffer, self.peer, tag=self.tag), self.peer, self.timeout_s)
                self.arrived.put(buffer)   # blocks while `capacity` wait: the next receive is not posted
        except BaseException as error:   # handed to the stage's own thread by get()
            self.error = error
            self.arrived.put(None)

    def get(self):
        """The next message, waiting for it at most timeout_s."""
        try:
            buffer = self.arrived.get_nowait()
        except queue.Empty:
            with self.timeline.span("wait", "recv", peer=self.peer):
                try:
                    buffer = self.arrived.get(timeout=self.timeout_s)
                except queue.Empty:
                    raise PeerLost(f"stage_{self.peer} sent nothing for {self.timeout_s:g} s: "
                                   "it died or hangs") from None
        if buffer is None:
            raise self.error
        self.timeline.message(self.what, self.peer, buffer.numel() * 4, sent=False)
        return buffer

    def poll(self):
        """The next message if it has arrived, else None."""
        return self.get() if not self.arrived.empty() else None


# ============================================================================ joining the group
def join_group(store, rank, K, args):
    """Post ready/<rank>, wait (--join-timeout) for all K, then join the gloo group whose every
    operation waits at most --peer-timeout."""
    gloo_interface(args.master_addr)
    store.set(f"ready/{rank}", "1")
    try:
        store.wait([f"ready/{k}" for k in range(K)], datetime.timedelta(seconds=args.join_timeout))
    except RuntimeError:
        missing = [k for k in range(K) if not store.check([f"ready/{k}"])]
        raise PeerLost(f"stage(s) {missing} not ready within --join-timeout {args.join_timeout:g} s") from None
    dist.init_process_group("gloo", store=dist.PrefixStore("group/", store), rank=rank, world_size=K,
                            timeout=datetime.timedelta(seconds=args.peer_timeout))


def join_torchrun(args):
    """This process is a torchrun rank: join the group torchrun's environment describes."""
    gloo_interface(os.environ["MASTER_ADDR"])
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=args.peer_timeout))
    return dist.get_rank()


def gloo_interface(master):
    """gloo listens on the interface that routes to the master (GLOO_SOCKET_IFNAME overrides):
    its own pick, the host name's address, is 127.0.0.1 on many machines, unreachable from others."""
    if "GLOO_SOCKET_IFNAME" not in os.environ and (interface := interface_towards(master)):
        os.environ["GLOO_SOCKET_IFNAME"] = interface


class StoreSink:
    """Rank 0's rows, posted for the launcher to log (row/0, row/1, ...)."""

    def __init__(self, store):
        self.store, self.n = store, 0

    def __call__(self, row):
        self.store.set(f"row/{self.n}", json.dumps(row))
        self.n += 1


# ============================================================================ the local launcher
def _child(k, args, port, rank_main, launcher):
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # the launcher stops us, not the terminal
    signal.signal(signal.SIGTERM, signal.SIG_DFL)   # not the launcher's handler, inherited by fork
    log = open(stage_log(args.out, k), "a")
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    threading.Thread(target=exit_with_launcher, args=(launcher, log), daemon=True).start()
    code, store = 1, None
    try:
        torch.set_num_threads(args.threads or 1)
        store = connect_store(args.master_addr, port, False, args.join_timeout)
        join_group(store, k, args.K, args)
        rank_main(k, StoreSink(store) if k == 0 else None)
        code = 0
    except BaseException as error:
        traceback.print_exc()
        if store is not None:
            symptom = isinstance(error, PeerLost) or "gloo" in str(error)
            line = f"stage_{k}: {error}" if isinstance(error, cli.RunFailed) else (
                f"stage_{k}: {type(error).__name__}: {str(error).strip()[:300]} "
                f"(traceback in {stage_log(args.out, k)})")
            try:
                store.set(f"failed/{k}", json.dumps({"line": line, "symptom": symptom}))
            except (RuntimeError, TimeoutError):
                pass
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(code)   # gloo's threads may be blocked; do not wait for them


def launch_local(args, rank_main, on_row):
    """Fork K stage processes running rank_main(k, sink); log rank 0's rows with on_row(row)
    until all have finished; raise StageFailed naming the first fault. Nothing outlives this."""
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    port = args.master_port or free_port(args.master_addr)
    procs = [context.Process(target=_child, args=(k, args, port, rank_main, os.getpid()), name=f"stage_{k}")
             for k in range(args.K)]
    for p in procs:
        p.start()
    try:
        store = connect_store(args.master_addr, port, True, args.join_timeout)   # after the fork: not inherited
        with open(os.path.join(args.out, "stages.json"), "w") as f:   # who is who, for `kill` in tests and demos
            json.dump({f"stage_{k}": p.pid for k, p in enumerate(procs)}, f)
        rows, finished = 0, False
        while not finished:
            finished = all(p.exitcode == 0 for p in procs)   # then the rows below are all there is
            while store.check([f"row/{rows}"]):
                on_row(json.loads(store.get(f"row/{rows}")))
                rows += 1
            if any(p.exitcode not in (None, 0) for p in procs) or any(
                    store.check([f"failed/{k}"]) for k in range(args.K)):
                raise StageFailed(first_fault(args, store, procs))
            time.sleep(0 if finished else POLL_S)
    finally:
        stop(procs)


def first_fault(args, store, procs):
    """The cause among what went wrong, within FAULT_GRACE_S: a process killed by a signal,
    else a stage's own error (or exit), else a lost neighbour."""
    deadline = time.perf_counter() + FAULT_GRACE_S
    while time.perf_counter() < deadline and any(p.exitcode is None for p in procs):
        time.sleep(POLL_S)
    found = []
    for k, p in enumerate(procs):
        posted = json.loads(store.get(f"failed/{k}")) if store.check([f"failed/{k}"]) else None
        if p.exitcode is not None and p.exitcode < 0:
            found.append((0, f"stage_{k}: process killed by signal {-p.exitcode} "
                             f"(its log: {stage_log(args.out, k)})"))
        elif posted:
            found.append((2 if posted["symptom"] else 1, posted["line"]))
        elif p.exitcode not in (None, 0):
            found.append((1, f"stage_{k}: exited with code {p.exitcode} (its log: {stage_log(args.out, k)})"))
    return min(found)[1] if found else "a stage failed without saying why"


def stop(procs):
    """Terminate every child still running, then kill what is left; each join is bounded."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.perf_counter() + 1
    for p in procs:
        p.join(timeout=max(0.05, deadline - time.perf_counter()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(timeout=2)
