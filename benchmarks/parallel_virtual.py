"""K devices in virtual time: which method of the parallel race reaches the target first on
K = 2..16 imagined devices, against the link's latency and bandwidth. Run as

    python benchmarks/parallel_race.py --backend virtual            # the slices below, seed 0
    python benchmarks/parallel_race.py --backend virtual --full     # every (K, link) cell

A device is one core of this machine: every action is priced by running it for real here,
alone, on one thread (common/stage_prices.stage_seconds; calibrated against the real K = 2
processes in benchmarks/parallel_calibration.py). A link between neighbours carries b bytes
in latency + b / bandwidth (common/stage_virtual_time.Link; DDP's ring all-reduce on it:
2 (K-1) rounds of W / K bytes per bucket).

  synchronous (gpipe, 1f1b, ddp): their update is one-process backprop's on the same batch of
      128 (the process race's exactness tests), so their accuracy after step s is backprop's:
      the race's 1-thread backprop curves (one per seed, its tuned rate). Only the time is
      priced: step s ends at s x the priced step (every step alike; the test checks it against
      a simulated run). GPipe and 1F1B at their best M in {K, 2K, 4K}.
  decoupled (dgl, predsim, dni, cdni, ddg): simulated for the whole run on the link, then
      trained in one process in the simulation's order (common/stage_replay.py): accuracy
      after step s against the simulated second at which step s ends. dgl and predsim never
      poll: one training per (K, seed) serves every link. dni, cdni and ddg: one per distinct
      set of poll answers (cells whose simulations answer alike share it).

Each method at its learning rate tuned at K = 2 by the process race (its rows in the JSON);
--steps and --eval-every as the race's mlp budget (1200, 100), the whole test set. Cells:

  default   the K sweep (--K) at 1 ms and 10 Gbit/s, and the latency sweep (--latency-ms x
            --bandwidth-gbit) at K = 8: the slices that fit 2 cores; seed 0 for the decoupled
  --full    every K x latency x bandwidth

The results go into the process race's JSON (results/benchmarks/parallel_race.json) under
"virtual": its settings, one row per (method, K, link) with backend "virtual", and every
training's curve (kept: a stopped study resumes). benchmarks/parallel_race_report.py draws them.
"""
import hashlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from common import cli  # noqa: E402

SYNC = ("gpipe", "1f1b", "ddp")
DECOUPLED = ("dgl", "predsim", "dni", "cdni", "ddg")
POLLING = ("dni", "cdni", "ddg")   # what they train depends on the clock: on the prices and the link
SLICE_LINK, SLICE_K = (1.0, 10.0), 8   # the K sweep's link (ms, Gbit/s), the latency sweep's K


def parser():
    p = cli.Parser(prog="parallel_race.py --backend virtual", description=__doc__.split("\n\n")[0])
    add = p.add_argument
    add("--backend", choices=("virtual",), default="virtual", help="(the process race: leave it out)")
    add("--methods", nargs="+", choices=SYNC + DECOUPLED, default=list(SYNC + DECOUPLED))
    add("--K", type=cli.positive_int, nargs="+", default=[2, 4, 8, 16], help="devices (stages)")
    add("--latency-ms", type=cli.nonnegative_float, nargs="+", default=[0.0, 1.0, 10.0, 50.0], help="per hop")
    add("--bandwidth-gbit", type=cli.positive_float, nargs="+", default=[10.0, 1.0], help="per link")
    add("--full", action="store_true", help="every K x latency x bandwidth cell, not the two slices")
    add("--seeds", type=cli.nonnegative_int, nargs="+", default=[0], help="the decoupled methods' seeds")
    add("--steps", type=cli.positive_int, default=1200, help="as the process race's mlp budget")
    add("--eval-every", type=cli.positive_int, default=100)
    add("--eval-size", type=cli.positive_int, default=10_000)
    add("--dataset", choices=cli.DATASETS, default="fashion-mnist")
    add("--data-dir", default="./data")
    add("--json", default=str(ROOT / "results/benchmarks/parallel_race.json"),
        help="the process race's JSON: its rows give the rates and backprop's curves")
    return p


def grid(args):
    """[(K, latency_ms, bandwidth_gbit)]: every combination (--full), else the two slices."""
    every = [(K, lat, bw) for K in args.K for bw in args.bandwidth_gbit for lat in args.latency_ms]
    if args.full:
        return every
    return list(dict.fromkeys([(K, *SLICE_LINK) for K in args.K] + [c for c in every if c[0] == SLICE_K]))


def link_of(latency_ms, bandwidth_gbit):
    from common.stage_virtual_time import Link
    return Link(latency_ms / 1e3, bandwidth_gbit * 1e9 / 8)


def first_step(curve, target):
    """The first evaluated step whose accuracy reaches target (None: never)."""
    return next((step for step, acc in curve if acc >= target), None)


def backprop_curves(race, seeds, eval_every):
    """{seed: [(step, accuracy)]} of the race's 1-thread backprop at its tuned rate, and the rate."""
    row = next(r for r in race["rows"] if r["method"] == "backprop" and r["threads_per_rank"] == 1)
    cells = {c["seed"]: c for c in race["cells"].values() if (c["method"], c["threads"], c["lr"]) ==
             ("backprop", 1, row["lr"]) and c["seed"] in seeds}
    return {s: [(i * eval_every, acc) for i, (_, acc) in enumerate(c["curve"])] for s, c in cells.items()}, row["lr"]


def sync_row(method, K, link, curves, targets, shape):
    """A synchronous method's row: its best M's priced step, and per seed the seconds to each
    target (backprop's step reaching it x the step)."""
    from common.stage_virtual_time import price
    options = [M for M in (K, 2 * K, 4 * K) if 128 % M == 0] if method != "ddp" else [None]
    priced = min((price(method, K=K, microbatches=M, link=link, machine="measured", steps=8, **shape)
                  for M in options), key=lambda p: p["seconds_per_step"])
    step = priced["seconds_per_step"]
    seconds = {f"{t:g}": [None if (s := first_step(c, t)) is None else round(s * step, 2) for c in curves.values()]
               for t in targets}
    return dict(microbatches=priced["microbatches"] if method != "ddp" else None, seconds_per_step=round(step, 5),
                bubble=[round(b, 4) for b in priced["bubble"]], seeds=list(curves), seconds=seconds,
                final=[c[-1][1] for c in curves.values()])


def decoupled_row(args, method, K, link, lr, data, replays, targets, shape, save):
    """A decoupled method's row: the whole run simulated on the link, trained in its order."""
    from benchmarks.parallel_race import run_parser, validate
    from common.stage_replay import train
    from common.stage_virtual_time import price
    priced = price(method, K=K, link=link, machine="measured", steps=args.steps, trace=True, **shape)
    answers = json.dumps(priced["polls"]).encode()
    seconds, finals, keys = {f"{t:g}": [] for t in targets}, [], []
    for seed in args.seeds:
        key = f"{method}/K{K}/seed{seed}/steps{args.steps}/polls-{hashlib.sha1(answers).hexdigest()[:12]}"
        if key not in replays:
            flags = ["--method", method, "--K", str(K), "--steps", str(args.steps), "--lr", f"{lr:.6g}",
                     "--seed", str(seed), "--dataset", args.dataset, "--data-dir", args.data_dir]
            run_args = run_parser().parse_args(flags)
            validate(run_args)
            began = time.perf_counter()
            accuracy, _ = train(run_args, data, priced["polls"], args.eval_every, args.eval_size)
            replays[key] = dict(curve=[[s, round(a, 4)] for s, a in accuracy.items()],
                                wall_seconds=round(time.perf_counter() - began, 1))
            save()
            print(f"    trained {key}: final {accuracy[args.steps]:.4f} in {replays[key]['wall_seconds']:.0f} s",
                  flush=True)
        curve, finish = replays[key]["curve"], priced["finish"]
        for t in targets:
            s = first_step(curve, t)
            seconds[f"{t:g}"].append(None if s is None else round(finish[s - 1], 2))
        finals.append(curve[-1][1])
        keys.append(key)
    return dict(microbatches=None, seconds_per_step=round(priced["seconds_per_step"], 5),
                bubble=[round(b, 4) for b in priced["bubble"]], seeds=list(args.seeds), seconds=seconds,
                final=finals, replays=keys)


def formulas(Ks, shape):
    """What the simulator confirms at each K, for the projection to large K: the pipeline bubble
    on a free link (0 ms, unlimited) against (K-1)/(M+K-1); at the K sweep's link, DDP's
    all-reduce against its ring formula
    2(K-1) (buckets x latency + W / (K x bandwidth)) (the step beyond its compute: what the
    backward did not hide); a decoupled step against its slowest stage's compute."""
    from common.stage_networks import build_network
    from common.stage_virtual_time import price
    link, out = link_of(*SLICE_LINK), []
    weights = 4 * sum(p.numel() for p in build_network("mlp", 0, shape["width"], shape["depth"])
                      .backprop_net().parameters())
    buckets = -(-(weights - 2 ** 20) // (25 * 2 ** 20)) + 1   # DDP's: 1 MiB, then 25 MiB each
    for K in Ks:
        M = 4 * K if 128 % (4 * K) == 0 else K
        pipe = price("1f1b", K=K, microbatches=M, machine="measured", steps=8, **shape)   # a free link: the schedule
        ddp = price("ddp", K=K, link=link, machine="measured", steps=8, **shape)
        ring = 2 * (K - 1) * (buckets * link.latency_s + weights / K / link.bandwidth)
        dgl = price("dgl", K=K, link=link, machine="measured", steps=40, **shape)
        out.append(dict(K=K, microbatches=M, bubble_1f1b=round(min(pipe["bubble"]), 4),   # the busiest stage
                        bubble_formula=round((K - 1) / (M + K - 1), 4),
                        ddp_beyond_compute_s=round(ddp["seconds_per_step"] - ddp["compute_seconds"][0], 5),
                        ddp_ring_formula_s=round(ring, 5), dgl_step_s=round(dgl["seconds_per_step"], 5),
                        dgl_slowest_stage_s=round(max(dgl["compute_seconds"]), 5)))
    return out


def main(argv):
    args = parser().parse_args(argv)
    for K in args.K:   # the race's mlp: 16 blocks, a batch of 128 (DDP splits it K ways)
        if K < 2 or K > 16 or 128 % K:
            raise cli.UserError(f"--K {K}: the race's network splits into 2 to 16 stages, K dividing the batch "
                                "of 128 (2, 4, 8, 16)")
    path = Path(args.json)
    if not path.is_file():
        raise cli.UserError(f"--json {path}: no such file; run benchmarks/parallel_race.py (the process race) first")
    race = json.loads(path.read_text())
    if not any(r["method"] == "backprop" for r in race.get("rows", [])):
        raise cli.UserError(f"--json {path}: no one-process backprop row; its curves price the synchronous methods")
    import torch
    from benchmarks.parallel_race import mean
    from common.data import load_data
    torch.set_num_threads(1)   # a device is one core; the stages' threads share the machine's
    targets = race["settings"]["targets"]
    curves, backprop_lr = backprop_curves(race, args.seeds, args.eval_every)
    rates = {r["method"]: r["lr"] for r in race["rows"] if r["K"] == 2}
    shape = dict(network="mlp", width=1024, depth=16, batch_size=128)
    settings = dict(grid="full" if args.full else f"K sweep at {SLICE_LINK[0]:g} ms, {SLICE_LINK[1]:g} Gbit/s; "
                    f"latency sweep at K = {SLICE_K}", eval_every=args.eval_every,
                    eval_size=args.eval_size, prices="measured on this CPU, one thread per device",
                    **shape, dataset=args.dataset)
    virtual = race.setdefault("virtual", {})
    replays = virtual.setdefault("replays", {})
    rows = {(r["method"], r["K"], r["latency_ms"], r["bandwidth_gbit"]): r for r in virtual.get("rows", [])}

    from common import stage_prices
    from common.stage_virtual_time import price

    def save():
        virtual.update(settings=settings, rows=list(rows.values()), replays=replays, prices=stage_prices.MEASURED)
        path.write_text(json.dumps(race, indent=1) + "\n")
    data, began = None, time.perf_counter()
    stage_prices.MEASURED.update(virtual.get("prices", {}))   # measured once: every invocation prices alike
    for K, method in dict.fromkeys((K, m) for K, _, _ in grid(args) for m in args.methods):   # prices first,
        for M in ((K, 2 * K, 4 * K) if method in ("gpipe", "1f1b") else (None,)):      # while nothing trains
            price(method, K=K, microbatches=M, machine="measured", steps=2, **shape)
    print(f"every action priced in {time.perf_counter() - began:.0f} s", flush=True)
    for K, latency, bandwidth in grid(args):
        link = link_of(latency, bandwidth)
        print(f"K = {K}, {latency:g} ms, {bandwidth:g} Gbit/s", flush=True)
        for method in args.methods:
            kept = rows.get((method, K, latency, bandwidth))
            if method in POLLING and kept and kept["steps"] == args.steps:
                continue   # trained in an order its prices decided: kept as it is
            cell_began = time.perf_counter()
            if method in SYNC:
                row = sync_row(method, K, link, curves, targets, shape)
                lr = backprop_lr
            else:
                data = data or load_data(args.dataset, args.data_dir, torch.device("cpu"), flat=False)
                lr = rates[method]
                row = decoupled_row(args, method, K, link, lr, data, replays, targets, shape, save)
            row = dict(network="mlp", method=method, K=K, latency_ms=latency, bandwidth_gbit=bandwidth,
                       backend="virtual", lr=lr, **row,
                       steps=curves[args.seeds[0]][-1][0] if method in SYNC else args.steps,
                       mean_seconds={t: mean(v) for t, v in row["seconds"].items()},
                       wall_seconds=round(time.perf_counter() - cell_began, 1))
            rows[method, K, latency, bandwidth] = row
            save()
            print(f"  {method:8} M {row['microbatches'] or '-':>3} {1e3 * row['seconds_per_step']:8.2f} ms/step  "
                  + "  ".join(f"{t}: {row['mean_seconds'][t] or '-'} s" for t in row["mean_seconds"])
                  + f"  final {100 * mean(row['final'], 6):.2f} %", flush=True)
    virtual["formulas"] = formulas(sorted({key[1] for key in rows}), shape)
    save()
    print(f"written: {path} ({time.perf_counter() - began:.0f} s)")


if __name__ == "__main__":
    cli.run_script(lambda: main(sys.argv[1:]))
