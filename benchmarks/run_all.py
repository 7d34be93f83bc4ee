"""Regenerate every benchmark figure and every results table, from scratch.

    python benchmarks/run_all.py            # benchmarks + 3-seed experiment runs (long: about an hour on 2 cores)
    python benchmarks/run_all.py --quick    # the benchmarks' quick modes only (under a minute)
    python benchmarks/run_all.py --only benchmarks   # skip the experiment runs

Each step is a subprocess, run one after another so timings do not overlap;
each writes JSON under results/ and the experiment runs write their run
folders under results/<script>/. Then benchmarks/make_results.py rewrites the
generated blocks of README.md and benchmarks/README.md from what those runs and
benchmarks declared, and copies their figures into assets/. A failed step is
reported at the end and makes the exit code non-zero; the others still run.
"""
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from common import cli  # noqa: E402

PY = sys.executable
SEEDS = (0, 1, 2)

# name -> (full flags, quick flags or None to skip in --quick); each is benchmarks/<name>.py
BENCHMARKS = {
    "data_path": ([], ["--steps", "50", "--samples", "10000"]),
    "compute_efficiency": (["--compile"], ["--seconds", "0.3", "--repeats", "1", "--scripts", "single_mach"]),
    "message_cost": ([], ["--messages", "10"]),
    "synthgrad_transport": (["--plot"], ["--skip-training", "--messages", "10"]),
    "async_efficiency": (["--plot"], None),
    "async_study": (["--plot"], None),
    "race": (["--plot"], None),   # only the cells not yet in its JSON (about three hours from scratch)
    "parallel_race": ([], None),   # only the cells not yet in its JSON (about 1 h 45 min from scratch)
    # prices the race's runs (in runs/parallel_race) on localhost gloo's measured link: seconds
    "parallel_calibration": (["--latency-ms", "0.4", "--bandwidth-gbit", "23"], None),
    # K = 2-16 in virtual time from the race's JSON (only the trainings not yet in it; about 2 h)
    "parallel_virtual": ([], None),
    "soak": ([], None),   # 4 processes for 10 minutes: does any process's memory grow?
}


def mlp_recipe(epochs, strategies=("backprop", "sim", "predsim"), output_apart=False):
    """The local-loss paper's MLP recipe (README's layerwise section) for `epochs` epochs."""
    return ["--model", "mlp", "--strategy", *strategies, "--norm", "batch", "--dropout", "0.025",
            "--sim-nonlin", "leakyrelu", "--sim-projection", "--local-before-pool", "--zero-heads",
            *(["--output-apart"] if output_apart else []), "--lr", "5e-4",
            "--batch-size", "128", "--augment", "--epochs", str(epochs), "--eval-every", "469", "--eval-size",
            "10000", "--lr-decay-at", "0.5", "0.75", "0.875", "0.94", "--plot", "--threads", "1"]


# (script, run name, extra flags, seeds): each seed runs into results/<script>/<name>-seed<k>.
# One seed where a run is long and the figure of interest is its time or its curve.
EXPERIMENTS = [
    ("single_mach", "defaults", ["--plot"], SEEDS),
    ("sequential_mach", "defaults", ["--plot"], (0,)),
    ("sequential_mach", "baseline-3k", ["--baseline", "--iterations", "3000", "--eval-every", "100",
                                        "--plot"], SEEDS),
    ("kgraph_mach", "defaults", ["--plot"], (0,)),
    ("kgraph_mach", "tf-init-1k", ["--init", "tf", "--iterations", "1000"], (0,)),  # the divergence
    ("synthgrad_demo", "defaults", ["--plot"], SEEDS),
    ("synthgrad_demo", "lumpy", ["--task", "lumpy", "--plot"], (0,)),
    ("synthgrad_demo", "lumpy-async", ["--task", "lumpy", "--async", "--plot"], (0,)),
    # the cause of DNI's shortfall: its layers at the paper's rate, then all of the paper's settings
    ("synthgrad_demo", "dni-paper-rates", ["--method", "dni", "--first-lr-scale", "1", "--hidden-lr-scale", "1",
                                           "--iterations", "8000", "--plot"], (0,)),
    ("synthgrad_demo", "dni-paper-settings", ["--method", "dni", "--first-lr-scale", "1", "--hidden-lr-scale", "1",
                                              "--sg-hidden", "1024", "--sg-lr", "3e-5", "--iterations", "6000",
                                              "--plot"], (0,)),
    ("async_mach", "defaults", ["--plot"], (0,)),
    # --forward child is slow, not stalled: the async study's K = 4, 0 ms cell given 6000 steps
    ("async_mach", "child-6000", ["--backend", "virtual", "--threads", "1", "--components", "4", "--forward", "child",
                                  "--latency-ms", "0", "--iterations", "6000", "--eval-every", "100",
                                  "--stop-at-accuracy", "0.85", "--machine", "83.46", "8.466", "6.41"], (0,)),
    ("layerwise_demo", "defaults", ["--plot"], (0,)),
    # the seed's questions: does the time per layer matter, and does fine-tuning pay?
    ("layerwise_demo", "submodel-front", ["--strategy", "submodel", "--layer-budget", "4", "1", "1"], (0,)),
    ("layerwise_demo", "submodel-back", ["--strategy", "submodel", "--layer-budget", "1", "1", "4"], (0,)),
    ("layerwise_demo", "finetune20", ["--strategy", "submodel", "maxdiff", "--finetune-seconds", "20"], (0,)),
    ("layerwise_demo", "maxdiff-pull", ["--strategy", "maxdiff", "--maxdiff-pull"], (0,)),
    # sim and predsim end far below their paper at 60 s: do they keep climbing with 5 minutes?
    ("layerwise_demo", "predsim-300s", ["--strategy", "backprop", "sim", "predsim", "--seconds", "300",
                                        "--plot"], (0,)),
    # ... and with BatchNorm before each nonlinearity, as the local-loss paper's blocks
    ("layerwise_demo", "bn-300s", ["--norm", "batch", "--strategy", "backprop", "sim", "predsim", "--seconds",
                                   "300", "--plot"], SEEDS),
    # the local-loss paper's Fashion-MNIST MLP recipe, its 200 epochs (and decay points) scaled to 10,
    # then 30 (about half an hour a seed); one thread each, as logged (the three seeds ran side by side)
    ("layerwise_demo", "mlp-paper-10ep", mlp_recipe(10), SEEDS),
    ("layerwise_demo", "mlp-paper-30ep", mlp_recipe(30), SEEDS),
    # ... at 10 epochs with the output layer apart from the last block's head, as the authors' code
    ("layerwise_demo", "mlp-paper-10ep-apart", mlp_recipe(10, ("sim", "predsim"), output_apart=True), SEEDS),
]


def completed(folder):
    summary = folder / "summary.json"
    return summary.exists() and json.loads(summary.read_text()).get("status") == "completed"


def run(name, command):
    print(f"\n=== {name}: {' '.join(map(str, command))}", flush=True)
    began = time.perf_counter()
    code = subprocess.call(command, cwd=ROOT)
    print(f"=== {name}: exit {code} after {time.perf_counter() - began:.0f} s", flush=True)
    return code


def main(argv=None):
    parser = cli.Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="benchmarks' quick modes only")
    parser.add_argument("--only", choices=["benchmarks", "experiments"], default=None,
                        help="run only the benchmarks or only the experiment runs (default: both)")
    parser.add_argument("--experiments", nargs="+", default=None, metavar="SCRIPT",
                        help="only these scripts' experiment runs (default: all)")
    parser.add_argument("--resume", action="store_true",
                        help="keep experiment runs whose folder already says status completed")
    parser.add_argument("--dataset", default="fashion-mnist", help="dataset of the experiment runs")
    parser.add_argument("--json-dir", default=None,
                        help="where benchmark JSON goes (default results/benchmarks, "
                             "or a temporary folder with --quick so real results stay)")
    args = parser.parse_args(argv)
    failed = []
    if args.only != "experiments":
        json_dir = Path(args.json_dir or (tempfile.mkdtemp() if args.quick else
                                          ROOT / "results" / "benchmarks"))
        for name, (full, quick) in BENCHMARKS.items():
            flags = quick if args.quick else full
            if flags is None:
                continue
            command = [PY, f"benchmarks/{name}.py", *flags, "--json", str(json_dir / f"{name}.json")]
            if run(name, command) != 0:
                failed.append(name)
        print(f"benchmark JSON in {json_dir}")
    if not args.quick and args.only != "benchmarks":
        for script, label, flags, seeds in EXPERIMENTS:
            if args.experiments and script not in args.experiments:
                continue
            for seed in seeds:
                out = ROOT / "results" / script / f"{label}-seed{seed}"
                if args.resume and completed(out):
                    print(f"=== {script} {label} seed {seed}: kept (completed in {out})")
                    continue
                shutil.rmtree(out, ignore_errors=True)
                # the lumpy task makes its own data and refuses --dataset
                dataset = [] if "lumpy" in flags else ["--dataset", args.dataset]
                command = [PY, f"{script}.py", *dataset, *flags,
                           "--seed", str(seed), "--out", str(out.relative_to(ROOT))]
                if run(f"{script} {label} seed {seed}", command) != 0:
                    failed.append(f"{script} {label} seed {seed}")
    if not args.quick:
        run("make_results", [PY, "benchmarks/make_results.py"])
    print("\nrun_all: " + (f"FAILED: {', '.join(failed)}" if failed else "all steps succeeded"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
