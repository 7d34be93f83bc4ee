"""K devices, one network: decoupled training raced against the pipelined and data-parallel
backprop a user would pick, each stage a real process (gloo), each rank on its own clock.

One run, one method (each stage a process; --K stages; the network split into K balanced
stages, common/stage_networks.py):

    python benchmarks/parallel_race.py run --method backprop --threads 1 --steps 300   # the reference
    python benchmarks/parallel_race.py run --method gpipe --K 2 --microbatches 4 --steps 300
    python benchmarks/parallel_race.py run --method 1f1b  --K 2 --microbatches 4 --steps 300
    python benchmarks/parallel_race.py run --method ddp   --K 2 --steps 300
    python benchmarks/parallel_race.py run --method dgl   --K 2 --steps 300    # also predsim, dni, cdni, ddg
    torchrun --nproc-per-node 2 benchmarks/parallel_race.py run --method 1f1b --K 2 --microbatches 4

  backprop, gpipe, 1f1b, ddp: the same update as one-process backprop (common/pipeline_sync.py);
  dgl, predsim, dni, cdni, ddg: decoupled stages, concurrent (common/pipeline_decoupled.py).
Every method trains the same weights from the same initialisation (--seed) on the same
batches. Each rank's clock counts only its training; the run's training seconds are its
slowest rank's. Per rank: steps per second, CPU seconds per step, the bubble = 1 - CPU / wall
seconds (idle share), peak activations held, and a timeline of compute spans, waits and
message sizes (stage_<k>_events.jsonl, for a simulator; common/stage_meters.py). Test
accuracy every --eval-every steps, off every clock (common/stage_loop.py). Processes, the
gloo group and faults (a dead stage named in one line within --peer-timeout + 5 s):
common/stage_group.py. Set before torch loads, OMP_WAIT_POLICY=PASSIVE (a waiting thread
sleeps: with spinning, one-process backprop ran up to 12x slower under load).

The race (no subcommand) runs those commands as subprocesses: per network and method, the
learning rate tuned on seed 0 over --factors x --lr (the best reaches the highest target
first, as benchmarks/race.py scores; gpipe, 1f1b, ddp and 2-thread backprop compute 1-thread
backprop's update, so they take its rate), then --seeds; one row per (network, method, K,
schedule, microbatches) in <json> (results/benchmarks/parallel_race.json) with the seconds
to each target per seed (null: not reached), final accuracy, steps/s of the busiest rank,
bubble and peak activations per rank, the ratio to the best synchronous method (gpipe,
1f1b or ddp) at the same K, and to one-process backprop on 1 thread. Cells are kept as
they finish: a stopped race resumes.

    python benchmarks/parallel_race.py --quick      # every method at K = 2, tiny: < 3 min
    python benchmarks/parallel_race.py              # K = 2, 3 seeds, 48 runs of 1200 steps: ~2 h, alone
    python benchmarks/parallel_race.py --backend virtual   # K = 2..16 in virtual time (parallel_virtual.py)

Deviations and choices: the mlp's norm is LayerNorm (per example: the pipelined and DDP
updates stay exactly backprop's; BatchNorm's would not); its Adam learning rate is 1e-4
(at 1e-3 it stalls at chance); dni's modules and heads are synthgrad_demo's, and its stages below
the last learn at --lr x --sg-scale 0.03 (at 1, seed 0, the network fell to chance within 50
steps; 0.1, 0.03 and 0.01 learnt, as synthgrad_demo scales DNI's layers down); ddg keeps a copy of a stage's weights per batch
in flight, so its delayed gradient is the paper's, taken at the weights of the forward pass.
What has been measured: benchmarks/README.md (generated from the JSON).
"""
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # read once, when torch's OpenMP starts
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from common import cli  # noqa: E402

SYNC = ("gpipe", "1f1b", "ddp")
DECOUPLED = ("dgl", "predsim", "dni", "cdni", "ddg")
METHODS = ("backprop",) + SYNC + DECOUPLED
ONLY_FOR = {"microbatches": ("gpipe", "1f1b"), "queue": DECOUPLED, "sg_lr": ("dni", "cdni"),
            "sg_scale": ("dni", "cdni"), "sg_hidden": ("dni",), "predsim_beta": ("predsim",)}   # method flags, default None
DEFAULTS = dict(queue=2, sg_lr=1e-3, sg_scale=0.03, sg_hidden=256, predsim_beta=0.99)   # microbatches: 2K
SCHEDULE = {"gpipe": "GPipe", "1f1b": "1F1B"}
NETWORKS = {   # Adam's learning rate (at 1e-3 the 16-block mlp stalls at chance), the budgets, --quick's
    "mlp": dict(lr=1e-4, budget=["--steps", "1200", "--eval-every", "100"],   # 2.6 epochs, the whole test set
                quick=["--width", "256", "--steps", "300", "--eval-every", "50", "--eval-size", "2000"]),
    "tfcnn": dict(lr=1e-3, budget=["--steps", "3000", "--eval-every", "100"],
                  quick=["--steps", "60", "--eval-every", "20", "--eval-size", "2000"])}


# ============================================================================ one run
def run_parser():
    parser = cli.Parser(prog="parallel_race.py run", formatter_class=cli._DefaultsFormatter,
                        description="One run of one method, each stage a process, each rank on its own clock "
                                    "(the module docstring says more).")
    add = parser.add_argument
    add("--method", choices=METHODS, required=True, help="backprop: one process; the others: K processes")
    add("--K", type=cli.positive_int, default=None, help="stages (processes); backprop: 1, others: 2")
    add("--microbatches", type=cli.positive_int, help="gpipe, 1f1b: microbatches M per batch (default 2K)")
    add("--queue", type=cli.positive_int, help="decoupled: receives a stage keeps posted for activations (2)")
    add("--sg-lr", type=cli.positive_float, help="dni, cdni: the modules' learning rate (1e-3)")
    add("--sg-scale", type=cli.positive_float, help="dni, cdni: stages below the last learn at --lr x this (0.03)")
    add("--sg-hidden", type=cli.positive_int, help="dni: units of the module's 2 hidden layers (256)")
    add("--predsim-beta", type=cli.fraction, help="predsim: weight of the similarity loss (0.99)")
    add("--network", choices=("mlp", "tfcnn"), default="mlp", help="mlp: --depth blocks of --width; tfcnn: 3 blocks")
    add("--width", type=cli.positive_int, default=1024, help="mlp: units per block")
    add("--depth", type=cli.positive_int, default=16, help="mlp: blocks")
    add("--steps", type=cli.positive_int, default=300, help="training steps (batches) of every rank")
    add("--batch-size", type=cli.positive_int, default=128, help="the global batch B (ddp: B/K per rank)")
    add("--optimizer", choices=("adam", "sgd"), default="adam", help="every method's (sgd: no momentum)")
    add("--lr", type=cli.positive_float, default=None, help="learning rate (mlp 1e-4, tfcnn 1e-3)")
    add("--eval-every", type=cli.positive_int, default=50, help="evaluate every this many steps")
    add("--eval-size", type=cli.positive_int, default=10_000, help="test images an evaluation uses")
    add("--dataset", choices=cli.DATASETS, default="mnist", help="MNIST-family dataset")
    add("--data-dir", default="./data", help="where to look for the dataset files")
    add("--device", choices=("cpu",), default="cpu", help="the ranks talk over gloo, on CPUs")
    add("--seed", type=cli.nonnegative_int, default=0, help="weights and batch order")
    add("--threads", type=cli.positive_int, default=None, help="torch threads per rank (default 1)")
    add("--out", default=None, help="run folder (default: runs/parallel_race/<time>-seed<seed>)")
    add("--plot", action="store_true", help="also draw the curve as a PNG in the run folder")
    add("--peer-timeout", type=cli.positive_float, default=30.0, help="longest wait on another rank")
    add("--join-timeout", type=cli.positive_float, default=60.0, help="longest wait for all ranks to start")
    add("--master-addr", default="127.0.0.1", help="local launcher: address of the rendezvous store")
    add("--master-port", type=cli.nonnegative_int, default=0, help="its port (0: a free one)")
    add("--save-weights", action="store_true", help="each rank saves its final weights (stage_<k>.pt)")
    return parser


def validate(args):
    """How the flags combine; cli.UserError (exit 2, nothing written) before torch loads."""
    parallel = args.method != "backprop"
    args.K = args.K if args.K is not None else (2 if parallel else 1)
    if not parallel and args.K != 1:
        raise cli.UserError(f"--method backprop runs in one process: leave --K out (got {args.K})")
    if parallel and args.K < 2:
        raise cli.UserError(f"--method {args.method} --K {args.K}: K = 1 is --method backprop; use 2 or more")
    blocks = 3 if args.network == "tfcnn" else args.depth   # tfcnn: conv, conv, dense
    if args.K > blocks:
        raise cli.UserError(f"--K {args.K}: {args.network} has {blocks} blocks, so at most {blocks} stages")
    for flag, methods in ONLY_FOR.items():
        if getattr(args, flag) is not None and args.method not in methods:
            raise cli.UserError(f"--{flag.replace('_', '-')}: --method {args.method} has none; it is for "
                                f"{', '.join(methods)}")
        if getattr(args, flag) is None and args.method in methods:   # (validate may run twice on these args)
            setattr(args, flag, 2 * args.K if flag == "microbatches" else DEFAULTS[flag])
    M = args.microbatches
    if args.method == "1f1b" and M < args.K:
        raise cli.UserError(f"--microbatches {M}: 1F1B needs at least one per stage, M >= K = {args.K}")
    if args.method in SCHEDULE and args.batch_size % M:
        raise cli.UserError(f"--batch-size {args.batch_size} does not split into {M} equal microbatches")
    if args.method == "ddp" and args.batch_size % args.K:
        raise cli.UserError(f"--batch-size {args.batch_size} does not split into {args.K} equal shards")
    if args.network == "tfcnn" and (args.width, args.depth) != (1024, 16):
        raise cli.UserError("--width/--depth shape the mlp; tfcnn's blocks are fixed")
    world = os.environ.get("WORLD_SIZE") if "RANK" in os.environ else None   # set by torchrun
    if world is not None and (not parallel or int(world) != args.K):
        raise cli.UserError(f"torchrun started {world} ranks for --method {args.method} --K {args.K}; "
                            "start K ranks of a parallel method")
    args.threads = args.threads or 1
    args.lr = args.lr or NETWORKS[args.network]["lr"]


def trainer_class(method):
    if method in DECOUPLED:
        from common.pipeline_decoupled import TRAINERS
        return TRAINERS[method]
    from common import pipeline_sync
    return {"backprop": pipeline_sync.Backprop, "ddp": pipeline_sync.DataParallel}.get(method,
                                                                                      pipeline_sync.Pipelined)


def run_main(argv):
    import functools
    from common.clocks import first_time_at
    from common.data import load_data
    from common.run_folder import Run
    from common.stage_group import join_torchrun, launch_local, under_torchrun
    from common.stage_loop import log_row, run_rank
    parser = run_parser()
    args, device = cli.setup(parser, "parallel_race", argv, validate=validate)
    args.out_path = Path(args.out)
    data = load_data(args.dataset, args.data_dir, device, flat=False)   # a bad file: one line, nothing written
    trainer = trainer_class(args.method)
    if under_torchrun() and join_torchrun(args) != 0:   # a plain rank: rank 0 keeps the run folder
        args.out_path.mkdir(parents=True, exist_ok=True)
        return run_rank(args, data, trainer, int(os.environ["RANK"]), None)
    with Run(args, "parallel_race", device) as run:
        from common.stage_networks import build_network, split
        bounds = split(build_network(args.network, args.seed, args.width, args.depth), args.K)[0]
        run.summary.update(network=args.network, method=args.method, K=args.K, schedule=SCHEDULE.get(args.method),
                           microbatches=args.microbatches, backend="torchrun" if under_torchrun() else "process",
                           threads_per_rank=args.threads, stage_blocks=[list(b) for b in bounds],
                           omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"))

        def on_row(row):
            if row["step"] == 0:
                run.restart_clock()   # forking, joining and loading were startup, not training
            log_row(run, row)
        if args.method == "backprop" or under_torchrun():
            run_rank(args, data, trainer, 0, on_row)
        else:
            launch_local(args, functools.partial(run_rank, args, data, trainer), on_row)
        run.summary["seconds_to"] = {f"{t:g}": first_time_at(run.rows, "acc/network", "train_seconds", t)
                                     for t in (0.85, 0.87)}
        run.declare_row(f"{args.method}, K = {args.K}", "test accuracy",
                        round(100 * run.summary["test_accuracy"]["network"], 4), "%", headline=True)


# ============================================================================ the race
def configurations(args):
    """(network, method, K, microbatches, threads): the one-process references, then every
    parallel method at each --K (gpipe and 1f1b at each of their --microbatches)."""
    out = []
    for network in args.networks:
        if "backprop" in args.methods:
            out += [(network, "backprop", 1, None, threads) for threads in args.reference_threads]
        for K, method in ((K, m) for K in args.K for m in args.methods if m != "backprop"):
            Ms = [M or 2 * K for M in args.microbatches] if method in SCHEDULE else [None]
            out += [(network, method, K, M, 1) for M in Ms if not (method == "1f1b" and M < K)]
    return out


def key(config, factor, seed):
    network, method, K, M, threads = config
    where = f"threads{threads}" if method == "backprop" else f"K{K}" + (f"/M{M}" if M else "")
    return f"{network}/{method}/{where}/x{factor:g}/seed{seed}"


def run_cell(args, config, factor, seed):
    """One `run` command, as a user types it; what its run folder says."""
    import subprocess
    import time
    from common.clocks import first_time_at
    network, method, K, M, threads = config
    out = Path(args.out) / key(config, factor, seed).replace("/", "-")
    lr = NETWORKS[network]["lr"] * factor
    command = [sys.executable, str(Path(__file__).resolve()), "run", "--method", method, "--network", network,
               "--dataset", args.dataset, "--data-dir", args.data_dir, "--seed", str(seed),
               "--threads", str(threads), "--lr", f"{lr:.6g}", *budget(args, network),
               *(["--K", str(K)] if method != "backprop" else []), *(["--microbatches", str(M)] if M else []),
               "--out", str(out)]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS=str(threads))
    began = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    summary, rows = read_folder(out)
    if result.returncode != 0 and summary.get("status") != "diverged":   # a diverged run keeps its curve
        sys.exit(f"parallel_race: {' '.join(command[1:])} failed:\n{result.stderr.strip()[-600:]}")
    points = [r for r in rows if r.get("acc/network")]
    cell = dict(network=network, method=method, K=K, microbatches=M, threads=threads, factor=factor, lr=lr,
                seed=seed, status=summary["status"], steps=summary["iterations"],
                seconds={f"{t:g}": first_time_at(points, "acc/network", "train_seconds", t) for t in args.targets},
                final=summary["test_accuracy"].get("network", 0.0),
                steps_per_second=summary.get("steps_per_second"), bubble=summary.get("bubble"),
                cpu_seconds_per_step=summary.get("cpu_seconds_per_step"),
                peak_activations=summary.get("peak_activation_bytes"),
                curve=[(float(r["train_seconds"]), float(r["acc/network"])) for r in points],
                wall_seconds=round(time.perf_counter() - began, 1),
                command=" ".join(["python", "benchmarks/parallel_race.py", *command[2:-2]]))   # no --out: it is ours
    reached = ", ".join(f"{t}: {'-' if v is None else f'{v:.1f} s'}" for t, v in cell["seconds"].items())
    print(f"  {key(config, factor, seed)}: {reached}, final {cell['final']:.4f}, "
          f"{cell['steps_per_second']} steps/s, wall {cell['wall_seconds']:.0f} s", flush=True)
    return cell


def budget(args, network):
    """The network's budget flags (--quick's, or --steps in place of its steps)."""
    flags = list(NETWORKS[network]["quick" if args.quick else "budget"])
    if args.steps:
        flags[flags.index("--steps") + 1] = str(args.steps)
    return flags


def read_folder(out):
    """(summary, metrics rows) of a run folder; ({}, []) where the run wrote none."""
    import csv
    import json
    if not (out / "summary.json").exists():
        return {}, []
    with open(out / "metrics.csv", newline="") as f:
        return json.loads((out / "summary.json").read_text()), list(csv.DictReader(f))


def tuned_on(args, config):
    """Whose grid sets this configuration's rate: gpipe, 1f1b, ddp and backprop on 2 threads
    make one-process backprop's update exactly, so they take its rate (1 thread) when the
    race runs it; every other configuration is tuned on its own grid."""
    network, method, K, M, threads = config
    shared = method in SYNC or (method == "backprop" and threads != 1)
    return (network, "backprop", 1, None, 1) if shared and "backprop" in args.methods else config


def tuned(args, cells, config):
    """The factor of the grid that won on seed 0 (benchmarks/race.py's score: the highest
    target reached first, then the lower, then the final accuracy); None until all ran."""
    from benchmarks.race import score
    grid = [cells.get(key(tuned_on(args, config), f, 0)) for f in args.factors]
    return min(grid, key=lambda c: score(c, args.targets))["factor"] if all(grid) else None


def plan(args, cells):
    """The cells still to run: each tuned configuration's grid on seed 0, then every
    configuration's tuned factor on the seeds (known once its grid has run)."""
    todo = []
    for config in configurations(args):
        if tuned_on(args, config) == config:
            todo += [(config, f, 0) for f in args.factors if key(config, f, 0) not in cells]
        if (best := tuned(args, cells, config)) is not None:
            todo += [(config, best, s) for s in args.seeds if key(config, best, s) not in cells]
    return todo


def mean(values, digits=2):
    """The mean, or None when a value is missing (a target not reached on some seed)."""
    import statistics
    return None if not values or None in values else round(statistics.mean(values), digits)


def summarise(args, cells):
    """One row per configuration at its tuned factor. ratio[target]: its mean seconds ÷ those
    of the best synchronous method (gpipe, 1f1b, ddp) at the same network and K (ratio_to
    names it); ratio_to_backprop: ÷ one-process backprop on 1 thread's."""
    rows = []
    for config in configurations(args):
        if (best := tuned(args, cells, config)) is None:
            continue
        runs = [cells[k] for s in args.seeds if (k := key(config, best, s)) in cells]
        if not runs:
            continue
        network, method, K, M, threads = config

        def per_rank(name, combine):   # each rank's figure, combined over the seeds
            return [combine(list(v)) for v in zip(*(r[name] for r in runs))] if runs[0][name] else None
        targets = list(runs[0]["seconds"])
        rows.append(dict(network=network, method=method, K=K, schedule=SCHEDULE.get(method), microbatches=M,
                         backend="process", threads_per_rank=threads, lr=runs[0]["lr"],
                         seeds=[r["seed"] for r in runs],
                         seconds={t: [r["seconds"][t] for r in runs] for t in targets},
                         mean_seconds={t: mean([r["seconds"][t] for r in runs]) for t in targets},
                         final=[round(r["final"], 4) for r in runs],
                         steps_per_second=mean([r["steps_per_second"] for r in runs], 3),
                         bubble=per_rank("bubble", lambda v: mean(v, 4)),
                         cpu_seconds_per_step=per_rank("cpu_seconds_per_step", lambda v: mean(v, 5)),
                         peak_activations=per_rank("peak_activations", max),
                         commands=[r["command"] for r in runs]))
    for row in rows:
        same_k = [r for r in rows if r["method"] in SYNC and (r["network"], r["K"]) == (row["network"], row["K"])]
        reference = next((r for r in rows if r["method"] == "backprop" and r["threads_per_rank"] == 1
                          and r["network"] == row["network"]), None)
        row.update(ratio={}, ratio_to={}, ratio_to_backprop={})
        for t, seconds in row["mean_seconds"].items():
            reached = [r for r in same_k if r["mean_seconds"][t] is not None]
            base = min(reached, key=lambda r: r["mean_seconds"][t]) if reached else None
            row["ratio"][t] = round(seconds / base["mean_seconds"][t], 3) if base and seconds else None
            row["ratio_to"][t] = base and base["method"] + (f", M = {base['microbatches']}" if base["microbatches"]
                                                            else "")
            ref = reference and reference["mean_seconds"][t]
            row["ratio_to_backprop"][t] = round(seconds / ref, 3) if ref and seconds else None
    return rows


def print_rows(rows, targets):
    """One line per row: mean seconds to each target and the ratio to the best synchronous
    method at its K, the mean final accuracy, steps/s of the busiest rank, each rank's bubble."""
    print(f"{'network':8} {'method':9} {'K':>2} {'M':>3} {'thr':>3} {'lr':>8} "
          + " ".join(f"{'s to ' + format(t, 'g'):>10} {'ratio':>6}" for t in targets)
          + f" {'final %':>8} {'steps/s':>8}  bubble per rank")
    for r in rows:
        cells = " ".join(f"{str(r['mean_seconds'][f'{t:g}'] or '-'):>10} {str(r['ratio'][f'{t:g}'] or '-'):>6}"
                         for t in targets)
        print(f"{r['network']:8} {r['method']:9} {r['K']:>2} {r['microbatches'] or '-':>3} "
              f"{r['threads_per_rank']:>3} {r['lr']:>8.2g} {cells} {100 * mean(r['final'], 6):>8.2f} "
              f"{str(r['steps_per_second'] or '-'):>8}  {r['bubble']}")


def race_main(argv):
    import json
    import time
    parser = cli.Parser(description=__doc__.split("\n\n")[0],
                        epilog="One run of one method, as the race runs it: parallel_race.py run --help")
    add = parser.add_argument
    add("--networks", nargs="+", choices=tuple(NETWORKS), default=["mlp"])
    add("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    add("--K", type=cli.positive_int, nargs="+", default=[2], help="stages (processes)")
    add("--microbatches", type=cli.nonnegative_int, nargs="+", default=[0], help="gpipe, 1f1b: each M (0: 2K)")
    add("--reference-threads", type=cli.positive_int, nargs="+", default=[1, 2],
        help="threads of the one-process backprop references")
    add("--factors", type=cli.positive_float, nargs="+", default=[1 / 3, 1.0, 3.0],
        help="the tuning grid: learning rate x the network's (mlp 1e-4, tfcnn 1e-3)")
    add("--seeds", type=cli.nonnegative_int, nargs="+", default=[0, 1, 2])
    add("--targets", type=cli.fraction, nargs="+", default=None, help="test accuracies (0.85 0.87; --quick 0.7 0.8)")
    add("--steps", type=cli.positive_int, default=None, help="steps of every run (default: mlp 1200, --quick 300)")
    add("--quick", action="store_true", help="every method at K = 2 once (seed 0, x1), tiny budgets: < 3 minutes")
    add("--dataset", choices=cli.DATASETS, default="fashion-mnist")
    add("--data-dir", default="./data")
    add("--out", default="runs/parallel_race", help="the runs' folders go under it")
    add("--json", default=None, help="default: results/benchmarks/parallel_race.json (--quick: <out>/quick.json)")
    add("--fresh", action="store_true", help="forget the cells already in the JSON")
    add("--backend", choices=("process", "virtual"), default="process",
        help="virtual: K = 2..16 in virtual time (benchmarks/parallel_virtual.py; its own flags)")
    args = parser.parse_args(argv)
    if 0 not in args.seeds:
        parser.error("--seeds: the tuning runs on seed 0; include 0")
    if args.quick:
        args.K, args.factors, args.seeds = [2], [1.0], [0]
    args.targets = args.targets or ([0.7, 0.8] if args.quick else [0.85, 0.87])
    default = Path(args.out, "quick.json") if args.quick else ROOT / "results/benchmarks/parallel_race.json"
    path = Path(args.json or default)
    settings = dict(dataset=args.dataset, targets=args.targets, factors=args.factors,
                    budgets={n: budget(args, n) for n in args.networks})
    kept = {} if args.fresh or not path.exists() else json.loads(path.read_text())
    if kept.get("cells") and kept.get("settings") != settings:
        parser.error(f"{path} holds cells measured with other settings ({kept.get('settings')}); "
                     "give those again, or --fresh, or another --json")
    from benchmarks.async_efficiency import machine
    cells, began = kept.get("cells", {}), time.perf_counter()
    results = dict(benchmark="parallel_race", **machine(), omp_wait_policy="PASSIVE", settings=settings,
                   cells=cells, **{k: v for k, v in kept.items() if k == "virtual"})   # --backend virtual's
    path.parent.mkdir(parents=True, exist_ok=True)

    def write():
        results["rows"] = summarise(args, cells)
        path.write_text(json.dumps(results, indent=1) + "\n")
    for _ in range(2):   # the second round: the seeds of the factors the first chose
        for config, factor, seed in plan(args, cells):
            cells[key(config, factor, seed)] = run_cell(args, config, factor, seed)
            write()
    write()
    print_rows(results["rows"], args.targets)
    print(f"written: {path} ({time.perf_counter() - began:.0f} s)")


if __name__ == "__main__":
    if sys.argv[1:2] == ["run"]:
        cli.check_flags(run_parser(), validate, sys.argv[2:])   # bad flags: refused before torch loads
        cli.run_script(lambda: run_main(sys.argv[2:]))
    elif "--backend" in sys.argv and "virtual" in sys.argv:   # K devices in virtual time
        from benchmarks import parallel_virtual
        cli.run_script(lambda: parallel_virtual.main(sys.argv[1:]))
    else:
        cli.run_script(lambda: race_main(sys.argv[1:]))
