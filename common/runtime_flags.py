"""The flags of async_mach's runtime (--backend, --seconds, --log-seconds, the simulated
network, the simulated machines, --peer-timeout, --join-timeout, the rendezvous address,
and the test flags hidden from --help), their checks, and how many torch threads a
component takes when --threads is not given. No torch here: a bad flag is refused before
torch loads (2-3 s).
"""
import argparse
import os
import sys

from common import cli

# --backend virtual's default prices: the calibration's (common/virtual_time.py says how
# they were measured; results/benchmarks/async_study.json).
DEFAULT_MACHINE = dict(gflops=83.46, gelements=8.466, op_us=6.41)


def machine_price(text):
    """One word of --machine: `measure`, or a price (GFLOPS, GELEMENTS or OP_US)."""
    return text if text == "measure" else cli.positive_float(text)

def add_arguments(parser):
    """The runtime's flags, as one argument group (returned), and what the merged line says."""
    parser.epilog = (
        "The merged line, every --log-seconds: iter = own steps per component (mean over "
        "components; --iterations counts each component's), epoch = mean passes over the "
        "training set, s = seconds since every component was ready (virtual s with --backend "
        "virtual), acc = each test accuracy measured since the last line, loss ce = mean "
        "cross-entropy of the components' latest steps, msg/s = messages received per second "
        "(heartbeats not counted), stale = mean staleness of the gradients learned since the "
        "last line (optimizer steps between a gradient's forward pass and its use), queue = "
        "gradients waiting in all queues now, drops = gradients dropped by full queues so far, "
        "malformed = payloads that could not be parsed, dropped (only once one arrives).")
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
    run.add_argument("--machine", type=machine_price,
                     nargs="+", default=None, metavar="PRICE",
                     help="virtual: each machine's speed, GFLOPS GELEMENTS OP_US: matrix-multiply "
                          "GFLOP/s, 1e9 elements/s written by other ops, microseconds per op; or "
                          "`measure`: probe this machine (default: 83.46 8.466 6.41, fixed, see "
                          "common/virtual_time.py)")
    run.add_argument("--speeds", type=cli.positive_float, nargs="+", default=None,
                     help="virtual: one speed factor per component (0.1: ten times slower)")
    run.add_argument("--stop-at-accuracy", type=cli.fraction, default=None, metavar="A",
                     help="virtual: end the run once every component has reached test accuracy A, "
                          "a fraction such as 0.85 (default: run every step)")
    run.add_argument("--master-addr", default="127.0.0.1",
                     help="process backend: address of the rendezvous store")
    run.add_argument("--master-port", type=cli.nonnegative_int, default=0,
                     help="process backend: its port (0: pick a free one)")
    # for tests and demos, hidden from --help: slow one component down, or make one fail
    run.add_argument("--slow-component", type=cli.nonnegative_int, help=argparse.SUPPRESS)
    run.add_argument("--slow-ms", type=cli.nonnegative_float, default=0.0, help=argparse.SUPPRESS)
    run.add_argument("--fail-component", type=cli.nonnegative_int, help=argparse.SUPPRESS)
    run.add_argument("--fail-after", type=cli.positive_int, default=20, help=argparse.SUPPRESS)
    # ... or send each neighbour one malformed payload after MALFORMED_AFTER steps (gloo backends)
    run.add_argument("--malformed-component", type=cli.nonnegative_int, help=argparse.SUPPRESS)
    return run


def validate(args):
    """The test flags name a component that exists; --backend torchrun: this process
    is one of exactly --components ranks. Raises cli.UserError."""
    K = args.components
    for flag in ("--slow-component", "--fail-component", "--malformed-component"):
        chosen = getattr(args, flag[2:].replace("-", "_"))
        if chosen is not None and chosen >= K:
            raise cli.UserError(f"{flag} {chosen}: there are only {K} components, "
                                f"numbered 0 to {K - 1}")
    for flag in ("--machine", "--speeds", "--stop-at-accuracy"):
        if getattr(args, flag[2:].replace("-", "_")) is not None and args.backend != "virtual":
            raise cli.UserError(f"{flag} is for the simulated machines: use it with --backend virtual")
    if args.malformed_component is not None and args.backend not in ("process", "torchrun"):
        raise cli.UserError("--malformed-component sends bytes over gloo: use --backend process or torchrun")
    share_cores(args)
    if args.speeds is not None and len(args.speeds) != K:
        raise cli.UserError(f"--speeds gives {len(args.speeds)} factors for {K} components; "
                            f"give one per component (or pass --components {len(args.speeds)})")
    if args.machine not in (None, ["measure"]) and (len(args.machine) != 3 or "measure" in args.machine):
        given = " ".join(v if v == "measure" else f"{v:g}" for v in args.machine)
        raise cli.UserError(f"--machine {given}: give three prices, GFLOPS GELEMENTS OP_US, "
                            "or `measure` alone to probe this machine")
    if args.backend == "virtual" and args.machine is None:   # the prices, into config.json
        args.machine = list(DEFAULT_MACHINE.values())
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


def host_cores():
    """The cores this process may run on: its affinity mask, which a container or taskset narrows."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        return os.cpu_count() or 1


def share_cores(args):
    """Without --threads, a rank that can tell how many ranks share its host (the process
    backend: its --components; torchrun: LOCAL_WORLD_SIZE) takes max(1, cores // ranks)
    torch threads. torch's own default, one thread per core in every rank, oversubscribes
    the cores: two ranks of 2 OpenMP threads on 2 cores ran at 3 steps/s, at 47 with one
    each. Sets args.threads (cli.setup applies it to this process) and args.threads_from,
    the reason, which the backend prints; the thread and virtual backends keep torch's."""
    args.threads_from = getattr(args, "threads_from", None)   # validate may run twice on these args
    local = {"process": args.components, "torchrun": os.environ.get("LOCAL_WORLD_SIZE")}.get(args.backend)
    if args.threads is not None or local is None:
        return
    cores, local = host_cores(), int(local)
    args.threads = max(1, cores // local)
    args.threads_from = f"{cores} cores / {local} rank{'s' * (local > 1)} on this host; --threads sets it"


def threads_line(who, args, each=""):
    """The line that says what share_cores chose, or None when --threads (or torch) did."""
    if args.threads_from is None:
        return None
    plural = "" if args.threads == 1 else "s"
    return f"{who}: {args.threads} torch thread{plural}{each} ({args.threads_from})"
