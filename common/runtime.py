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
eval_seconds, bad_messages: payloads its transport could not parse and dropped)
and learn_steps, epoch, accuracy (None before the first
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
import ctypes
import datetime
import json
import os
import signal
import sys
import threading
import time
import traceback

import torch

from common import cli
from common.monitor import ComponentFailed, MergedLog, fault_watch, monitor
from common.pulse import Stopped, component_log, run_worker
from common.runtime_flags import threads_line
from common.rendezvous import AnsweringBoard, DictBoard, connect_store, free_port, interface_towards
from common.transport import GlooTransport, ThreadTransport


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
    from common.runtime_flags import DEFAULT_MACHINE
    from common.machine_prices import measure_machine
    from common.virtual_time import VirtualWorld
    K, board, began = args.components, DictBoard(), time.perf_counter()
    measured = args.machine == ["measure"]  # else validate() put the defaults or the given prices there
    machine = (measure_machine(args.batch_size) if measured
               else dict(zip(("gflops", "gelements", "op_us"), args.machine)))
    source = "measured here" if measured else "the defaults" if machine == DEFAULT_MACHINE else "given"
    run.print(f"virtual machines: {machine['gflops']:g} GFLOPS, {machine['gelements']:g} Gelem/s, "
              f"{machine['op_us']:g} us per op ({source}); the same numbers elsewhere: the same "
              f"flags with --machine {' '.join(f'{v:.15g}' for v in machine.values())}")
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
            run.still_working(lambda: f"simulating: {world.now():.1f} virtual s")
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
        if run_worker(make_worker(rank, data, transport, AnsweringBoard(board, args.peer_timeout), device)):
            transport.close()
    except BaseException:
        code = 1
        traceback.print_exc()   # into the component's log
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(code)  # the receiver thread may sit in gloo; do not wait for it


def run_processes(run, args, make_worker, farewells, load):
    """One spawned process per component; each loads its own data with load(device)."""
    import torch.multiprocessing as mp
    load(torch.device("cpu"))  # read once here: a bad file is one line (cli.UserError), not K dead processes
    port = args.master_port or free_port(args.master_addr)
    store = connect_store(args.master_addr, port, True, args.join_timeout)
    board = torch.distributed.PrefixStore("board/", store)
    context = mp.get_context("spawn")
    if line := threads_line(f"component_0 to component_{args.components - 1}", args, " each"):
        run.print(line)
    run.summary["threads_per_component"] = args.threads
    # The children read this when their OpenMP (torch's libgomp) starts: a thread out of work
    # then sleeps at once instead of spinning for a while (libgomp's default) on cores that
    # the other components need when they outnumber the cores. A value the user set is kept.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
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
                raise ComponentFailed(f"component_{i}: process {reason} (what it wrote on stderr: "
                                      f"{component_log(args, i)})")

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
    if line := threads_line(f"component_{rank}", args):   # each rank has its own stdout
        print(line, flush=True)
    store = torchrun_store(rank, args.join_timeout)
    board = torch.distributed.PrefixStore("board/", store)
    transport = gloo_transport(store, rank, args, farewells)
    worker = make_worker(rank, data, transport, AnsweringBoard(board, args.peer_timeout), device)
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
