"""Calibration of the K-device pricing model (common/stage_virtual_time.py) against the real
processes of the parallel race at K = 2 (benchmarks/parallel_race.py).

For each method's K = 2 run on seed 0 at its tuned rate (the cells of
results/benchmarks/parallel_race.json; their run folders under --runs), and one-process
backprop on 1 thread as the reference:

  real     seconds per step: the slowest rank's training seconds ÷ steps; per rank its CPU
           seconds per step and its bubble (1 - CPU ÷ wall); per rank and action (forward,
           backward, update, synthetic, synthetic_learn) the median seconds of its compute
           spans in stage_<k>_events.jsonl over the second half of training
  measured stage_virtual_time.price(method, K = 2, M, machine="measured"): every action run
           for real, alone, on this CPU (one thread, median of 5): the prices the study uses
  machine  the same with every action priced from its op counts at --machine's prices
  schedule the same with every action at its real median seconds in the run: the schedule
           model alone (for DDP the real backward span holds the all-reduce it overlaps)

The link is localhost gloo, as measured here with two processes (--latency-ms 0.4,
--bandwidth-gbit 23): its bytes are copied by the ranks' own cores, so a DDP all-reduce is
priced as busy time after the backward (Link(on_cpu=True); 2 (K-1) rounds, each sending and
receiving W/K); the schedule rows take a plain link, their backward spans already hold it.
The ratios priced ÷ real of the seconds per step and of each rank's CPU seconds per step
(priced: its busy seconds). The issue's goal: within 15 % (0.85-1.15) for every method.
Ranks on this VM share 2 cores with the OS: a rank's wall seconds in its compute spans exceed
its CPU seconds (descheduled time), which the real bubble counts as idle.

    python benchmarks/parallel_calibration.py                   # about a minute
    python benchmarks/parallel_calibration.py --machine measure # this machine's probed prices
"""
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from common import cli  # noqa: E402
from common.runtime_flags import machine_price  # noqa: E402  (torch-free)

ACTIONS = ("forward", "backward", "update", "synthetic", "synthetic_learn")
GOAL = (0.85, 1.15)


def action_seconds(folder, K, steps):
    """{(rank, action): median seconds of its compute spans in the second half of training}."""
    out = {}
    for k in range(K):
        spans = {}
        for line in (folder / f"stage_{k}_events.jsonl").read_text().splitlines():
            event = json.loads(line)
            if event["kind"] == "compute" and event.get("step", 0) > steps // 2:
                spans.setdefault(event["what"], []).append(event["t1"] - event["t0"])
        out.update({(k, what): statistics.median(seconds) for what, seconds in spans.items()})
    return out


def real_figures(folder):
    """(summary, seconds per step of the slowest rank, CPU seconds per step per rank)."""
    summary = json.loads((folder / "summary.json").read_text())
    ranks = summary["ranks"]
    return summary, max(r["seconds"] for r in ranks) / summary["iterations"], [r["cpu_seconds_per_step"]
                                                                             for r in ranks]


def calibrate(cell, folder, machine, link):
    """One row: the real figures, the machine-priced and the schedule-priced ones, ratios."""
    from common.stage_virtual_time import Link, price
    summary, real_step, real_cpu = real_figures(folder)
    config = json.loads((folder / "config.json").read_text())   # the network's shape, the batch, the queue
    shape = {key: config[key] for key in ("network", "width", "depth", "batch_size")}
    if config.get("queue"):
        shape["queue"] = config["queue"]
    K, M = cell["K"], cell["microbatches"]
    measured = action_seconds(folder, K, summary["iterations"])
    if cell["method"] == "backprop":
        measured = {(0, what): s for (k, what), s in measured.items()}
    if cell["method"] == "ddp":
        measured[(0, "bucket_copy")] = 0.0   # the real backward span holds the reducer's copies too
    sync = cell["method"] in ("backprop", "gpipe", "1f1b", "ddp")
    plain = Link(link.latency_s, link.bandwidth)
    priced = {name: price(cell["method"], K=K, microbatches=M, machine=prices, steps=8 if sync else 60,
                          seconds=seconds, link=on, **shape)
              for name, prices, seconds, on in (("measured", "measured", None, link), ("machine", machine, None, link),
                                                ("schedule", machine, measured, plain))}
    row = dict(method=cell["method"], K=K, microbatches=M, real_seconds_per_step=round(real_step, 5),
               real_cpu_per_step=real_cpu, real_bubble=summary["bubble"])
    for name, p in priced.items():
        row[f"{name}_seconds_per_step"] = round(p["seconds_per_step"], 5)
        row[f"{name}_busy_per_step"] = [round(s, 5) for s in p["compute_seconds"]]
        row[f"{name}_bubble"] = [round(max(0.0, b), 4) for b in p["bubble"]]
        row[f"{name}_ratio"] = round(p["seconds_per_step"] / real_step, 3)
        row[f"{name}_cpu_ratio"] = [round(b / c, 3) for b, c in zip(p["compute_seconds"], real_cpu)]
    row["measured_action_seconds"] = {f"{k}/{what}": round(s, 5) for (k, what), s in sorted(measured.items())}
    return row


def main(argv=None):
    parser = cli.Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--race", default=str(ROOT / "results/benchmarks/parallel_race.json"),
                        help="the parallel race's JSON: its cells name the runs")
    parser.add_argument("--runs", default=str(ROOT / "runs/parallel_race"), help="the race's run folders (its --out)")
    parser.add_argument("--machine", type=machine_price, nargs="+", default=None, metavar="PRICE",
                        help="GFLOPS GELEMENTS OP_US, or `measure` (probe this machine, 1 thread, batch 128), as "
                             "async_mach's --machine (default: its fixed prices)")
    parser.add_argument("--latency-ms", type=cli.nonnegative_float, default=0.4,
                        help="the priced link's latency (localhost gloo, measured here: 0.4)")
    parser.add_argument("--bandwidth-gbit", type=cli.positive_float, default=23.0,
                        help="the priced link's bandwidth; localhost gloo measured here: one-way sends of "
                             "4-32 MiB at 2.7-3.0 GiB/s, about 23 Gbit/s")
    parser.add_argument("--json", default=str(ROOT / "results/benchmarks/parallel_calibration.json"))
    args = parser.parse_args(argv)
    if not Path(args.race).is_file():
        raise cli.UserError(f"--race {args.race}: no such file; run benchmarks/parallel_race.py first")
    import torch
    from benchmarks.async_efficiency import machine as hardware
    from benchmarks.parallel_race import key
    from common.runtime_flags import DEFAULT_MACHINE
    torch.set_num_threads(1)
    if args.machine == ["measure"]:
        from common.machine_prices import measure_machine
        machine = measure_machine(128)   # refuses an implausible probe itself
    elif args.machine:
        if len(args.machine) != 3 or "measure" in args.machine:
            raise cli.UserError("--machine: give three prices, GFLOPS GELEMENTS OP_US, or `measure` alone")
        machine = dict(zip(("gflops", "gelements", "op_us"), args.machine))
    else:
        machine = DEFAULT_MACHINE
    from common.stage_virtual_time import Link
    link = Link(args.latency_ms / 1e3, args.bandwidth_gbit and args.bandwidth_gbit * 1e9 / 8, on_cpu=True)
    race = json.loads(Path(args.race).read_text())
    rows = []
    for row in race.get("rows", []):
        if row["K"] > 2 or (row["method"] == "backprop" and row["threads_per_rank"] != 1) or 0 not in row["seeds"]:
            continue
        cell = next(c for c in race["cells"].values() if c["seed"] == 0 and c["lr"] == row["lr"] and
                    (c["method"], c["K"], c["microbatches"], c["threads"]) ==
                    (row["method"], row["K"], row["microbatches"], row["threads_per_rank"]))
        config = (cell["network"], cell["method"], cell["K"], cell["microbatches"], cell["threads"])
        folder = Path(args.runs) / key(config, cell["factor"], 0).replace("/", "-")
        if not (folder / "stage_0_events.jsonl").exists():
            print(f"  {folder}: no timeline, left out", flush=True)
            continue
        rows.append(calibrate(cell, folder, machine, link))
        r = rows[-1]
        print(f"  {r['method']:8} real {1e3 * r['real_seconds_per_step']:7.1f} ms/step, measured-priced "
              f"{1e3 * r['measured_seconds_per_step']:7.1f} ({r['measured_ratio']}x), machine-priced "
              f"{1e3 * r['machine_seconds_per_step']:7.1f} ({r['machine_ratio']}x), schedule-priced "
              f"{1e3 * r['schedule_seconds_per_step']:7.1f} ({r['schedule_ratio']}x); CPU per rank ratio "
              f"{r['machine_cpu_ratio']} / {r['schedule_cpu_ratio']}", flush=True)
    within = lambda ratios: all(GOAL[0] <= x <= GOAL[1] for x in ratios)
    targets = [dict(figure=f"{name}-priced ÷ real seconds per step, every method at K = 2", target="0.85-1.15",
                    value=[r[f"{name}_ratio"] for r in rows], met=within([r[f"{name}_ratio"] for r in rows]))
               for name in ("measured", "machine", "schedule")]
    out = dict(benchmark="parallel_calibration", **hardware(), machine=machine, race=Path(args.race).name,
               link=dict(latency_ms=args.latency_ms, bandwidth_gbit=args.bandwidth_gbit),
               targets=targets, rows=[{k: v for k, v in r.items() if k != "measured_action_seconds"} for r in rows],
               measured_action_seconds={r["method"]: r["measured_action_seconds"] for r in rows})
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    print(f"written: {args.json}")


if __name__ == "__main__":
    cli.run_script(main)
