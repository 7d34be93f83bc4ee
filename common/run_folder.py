"""The run folder, the progress bar, the printed curve, the CSV, the summary
and the status a run ended with: the same in every script.

    with Run(args, "single_mach", device, total=args.iterations) as run:
        for step in run.steps():
            ...train...
            if step % args.eval_every == 0 or step == args.iterations:
                with run.evaluating():          # not counted as training time
                    acc = ...
                run.log(step, epoch, accuracy={"teacher": acc}, losses={"ce": ce})

writes, in the run folder (--out):
  config.json   the flags, torch version, device and hardware, at the start;
  metrics.csv   one row per evaluation, flushed at once;
  summary.json  script, dataset, seed, device, iterations, train_seconds (the
                whole loop's), own_train_seconds and clock_columns (each
                method's own clock, `clock_of`), status (completed |
                interrupted | diverged | failed),
                test_accuracy {component: fraction} and best_test_accuracy,
                whatever the ending (and startup_seconds where the clock was
                restarted, see restart_clock). Scripts may add keys to `run.summary`.

The folder is made when the Run starts, after every flag has been checked.
However the run ends, the summary says how (Ctrl-C: interrupted; a NaN or
inf loss given to `log`: diverged; cli.RunFailed or a bug: failed) and the
exception goes on to cli.run_script, the one place that turns it into a
line and an exit code. A UserError raised inside (say, missing data found
late) removes the folder again: a refused run leaves nothing behind.

What the README tables show is declared here too, by the script, so the
results generator needs to know no script: `run.declare_row(...)` adds a
row (by default one per component's final test accuracy), `run.baseline`
names the row the others are compared with, and `run.time_to_target(...)`
records each method's seconds (and its baseline's) to a fraction of the
baseline's final accuracy.
"""
import csv
import json
import math
import os
import platform
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm import tqdm

from common.cli import Diverged, UserError
from common.clocks import first_time_at, synchronize


def hardware(device):
    """A short description of what the run ran on, for tables."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


class Run:
    def __init__(self, args, script, device, total=None):
        self.args, self.script, self.device, self.total = args, script, device, total
        self.dir = Path(args.out)
        self.made_dir = not self.dir.exists()
        self.dir.mkdir(parents=True, exist_ok=True)
        config = dict(vars(args), script=script, torch=torch.__version__,
                      device_used=str(device), hardware=hardware(device),
                      command=" ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]))
        (self.dir / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
        self.rows, self.columns = [], []
        self.best = {}
        self.eval_seconds = 0.0
        self.iteration = 0
        self.summary = {"script": script, "dataset": getattr(args, "dataset", None),
                        "seed": getattr(args, "seed", None), "device": str(device),
                        "hardware": config["hardware"], "iterations": 0,
                        "train_seconds": 0.0, "status": "running", "test_accuracy": {}}
        self.rows_declared, self.baseline = [], None
        # --plot draws this at the end: curves.png by default; a script whose curves need
        # another clock or other panels puts its own `draw(folder)` here.
        self.draw = None
        # The one table printed at the end: final and best accuracy per component, unless
        # the script puts its own `end_table()` here.
        self.end_table = None
        # Components that train on their own (async_mach) report their training time here.
        self.own_train_seconds = None
        # Each method's own training clock: the logged column its seconds are read from, by
        # the figures, the times to target and the closing line. Several methods trained in
        # one loop keep one Clock each (sec/<clock>) and say here which is whose.
        self.clock_of = lambda name: "train_seconds"
        self.progress = tqdm(total=total, disable=not sys.stdout.isatty(), leave=False,
                             dynamic_ncols=True, desc=script)
        self.clock, self.unit = time.perf_counter, "s"  # a simulation's run: virtual seconds
        self.start = self.wall_start = self.last_line = self.clock()

    # -- timing ---------------------------------------------------------------
    def elapsed(self):
        return self.clock() - self.start

    def restart_clock(self, clock=None, unit="s"):
        """From now on: what came before (starting processes, loading data) was not the run's
        training; how long it took stays in the summary as startup_seconds. A simulation
        passes its own clock, and its unit for the printed lines (virtual s)."""
        self.summary["startup_seconds"] = round(self.elapsed(), 3)
        self.clock, self.unit = clock or self.clock, unit
        self.start = self.clock()

    def train_seconds(self):
        if self.own_train_seconds is not None:   # components that keep their own clocks
            return self.own_train_seconds
        return self.elapsed() - self.eval_seconds

    @contextmanager
    def evaluating(self):
        """Time spent inside does not count as training time."""
        synchronize(self.device)
        began = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            self.eval_seconds += time.perf_counter() - began

    def steps(self):
        """Yield step numbers 1..total, advancing the progress bar."""
        for step in range(1, self.total + 1):
            self.iteration = step
            yield step
            self.progress.update(1)
            self.still_working(f"iter {step} of {self.total}")

    def still_working(self, what):
        """Without a progress bar (no terminal), a line at least every 10 s of wall time,
        so that a log or a CI job never looks hung. `what`: a text, or a function making it."""
        if self.progress.disable and time.perf_counter() - self.last_line >= 10:
            what = what() if callable(what) else what
            self.print(f"... {what}, {time.perf_counter() - self.wall_start:.0f} s wall")

    # -- logging --------------------------------------------------------------
    def log(self, iteration, epoch, accuracy=None, losses=None, extra=None, quiet=None):
        """One evaluation: print a fixed-format line and append a CSV row.

        accuracy: {component: test accuracy fraction}; losses: {name: per-example value};
        extra: other numbers worth a column, printed too; quiet: columns for the CSV only.
        A non-finite loss raises Diverged after the row is written.
        """
        synchronize(self.device)
        accuracy, losses, extra = accuracy or {}, losses or {}, extra or {}
        self.iteration = iteration
        row = {"iteration": iteration, "epoch": round(epoch, 4),
               "seconds": round(self.elapsed(), 3), "train_seconds": round(self.train_seconds(), 3)}
        row.update({f"acc/{k}": round(v, 5) for k, v in accuracy.items()})
        row.update({f"loss/{k}": v for k, v in losses.items()})
        row.update(extra)
        row.update(quiet or {})
        self._write_row(row)
        for name, value in accuracy.items():
            self.best[name] = max(self.best.get(name, 0.0), value)
            self.summary["test_accuracy"][name] = value
        parts = [("acc", [f"{k} {v:.4f}" for k, v in accuracy.items()]),
                 ("loss", [f"{k} {v:.4g}" for k, v in losses.items()]),
                 ("", [f"{k} {_fmt(v)}" for k, v in extra.items()])]
        for line in wrap(f"iter {iteration:>7d} | epoch {epoch:6.2f} | {row['seconds']:7.1f} {self.unit}",
                         parts):
            self.print(line)
        bad = [name for name, value in losses.items() if not math.isfinite(value)]
        if bad:
            raise Diverged(f"loss {bad[0]} became {losses[bad[0]]} at iteration {iteration}")

    def print(self, line):
        """Print above the progress bar (or plainly when there is none)."""
        self.last_line = time.perf_counter()
        if self.progress.disable:
            print(line, flush=True)
        else:
            self.progress.write(line)

    def _write_row(self, row):
        self.rows.append(row)
        path = self.dir / "metrics.csv"
        new = [k for k in row if k not in self.columns]
        if new:  # a new column: rewrite the (small) file with the wider header
            self.columns += new
            with open(path, "w", newline="") as f:
                writer = csv.DictWriter(f, self.columns)
                writer.writeheader()
                writer.writerows(self.rows)
        else:
            with open(path, "a", newline="") as f:
                csv.DictWriter(f, self.columns).writerow(row)

    # -- what the README tables show ------------------------------------------
    def declare_row(self, name, metric, value, unit="", reference=None, headline=False):
        """A row for the results table: `name`'s `metric` (value in `unit`: %, points, s,
        ms, x or ''), what the original or paper reported, if anything, and whether the
        README shows it where a script block has one line per command."""
        row = {"name": name, "metric": metric, "value": value, "unit": unit, "headline": headline}
        if reference:
            row["reference"] = reference
        self.rows_declared.append(row)

    def time_to_target(self, pairs, fraction=0.95, rows=None):
        """For each (method, baseline) pair: the seconds each of the two took until its
        test accuracy first reached `fraction` of the baseline's final accuracy, each on
        its own clock (`clock_of`), in the logged rows (default: every row logged)."""
        clock_column = self.clock_of
        accuracy, rows = self.summary["test_accuracy"], self.rows if rows is None else rows
        records = []
        for method, baseline in pairs:
            if method not in accuracy or baseline not in accuracy:
                continue
            target = fraction * accuracy[baseline]
            records.append({"method": method, "baseline": baseline, "target": round(target, 5),
                            "seconds": first_time_at(rows, f"acc/{method}", clock_column(method), target),
                            "baseline_seconds": first_time_at(rows, f"acc/{baseline}",
                                                              clock_column(baseline), target)})
        self.summary["time_to_target"] = {"fraction": fraction, "pairs": records}
        if self.baseline is None and records:
            self.baseline = records[0]["baseline"]

    # -- ending ---------------------------------------------------------------
    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        self.progress.close()
        if kind is not None and issubclass(kind, UserError):
            if self.made_dir:  # refused after all: leave nothing behind
                shutil.rmtree(self.dir, ignore_errors=True)
            return False
        if kind is None:
            status = "completed"
        elif issubclass(kind, KeyboardInterrupt):
            status = "interrupted"
        elif issubclass(kind, Diverged):
            status = "diverged"
        else:  # RunFailed, or a bug (which keeps its traceback)
            status = "failed"
        self.finish(status, error)
        return False  # cli.run_script turns the ending into one line and an exit code

    def own_seconds(self):
        """{method: seconds on its own clock at its last logged accuracy}."""
        seconds = {}
        for name in self.summary["test_accuracy"]:
            column = self.clock_of(name)
            logged = [r[column] for r in self.rows if r.get(f"acc/{name}") not in (None, "")
                      and r.get(column) not in (None, "")]
            if logged:
                seconds[name] = float(logged[-1])
        return seconds

    def finish(self, status, error=None):
        self.summary.update(status=status, iterations=self.iteration,
                            train_seconds=round(self.train_seconds(), 3),
                            wall_seconds=round(self.elapsed(), 3),
                            best_test_accuracy=self.best,
                            clock_columns={n: self.clock_of(n) for n in self.summary["test_accuracy"]},
                            own_train_seconds=self.own_seconds())
        if error is not None and status != "completed":
            self.summary["error"] = str(error) or type(error).__name__
        rows = self.rows_declared or [
            {"name": name, "metric": "test accuracy", "value": round(100 * value, 4), "unit": "%",
             "headline": True} for name, value in self.summary["test_accuracy"].items()]
        if getattr(self.args, "plot", False):
            from common.plots import plot_run
            if self.draw is not None:
                self.draw(self.dir)
            elif any(c.startswith("acc/") for c in self.columns):
                s = self.summary
                plot_run(self.dir, f"{s['script']} on {s['dataset']}, seed {s['seed']}, {s['device']}",
                         s["clock_columns"])
        figures = sorted(p.name for p in self.dir.glob("*.png"))
        self.summary["results"] = {"baseline": self.baseline, "rows": rows, "figures": figures}
        (self.dir / "summary.json").write_text(json.dumps(self.summary, indent=2) + "\n")
        self.print_table(status)

    def print_table(self, status):
        acc, clocks = self.summary["test_accuracy"], self.summary["clock_columns"]
        own = ""
        if any(column != "train_seconds" for column in clocks.values()):
            # methods on their own clocks: each one's seconds, never their sum
            by_seconds = {}
            for name, seconds in self.summary["own_train_seconds"].items():
                by_seconds.setdefault((clocks[name], seconds), []).append(name)
            own = "own training seconds: " + ", ".join(
                f"{'/'.join(names)} {seconds:.1f} {self.unit}" for (_, seconds), names in by_seconds.items())
        steps = f"{self.iteration} iterations, " if self.total else ""   # else: the script's table says
        self.print(f"== {self.script} {status}: {steps}"
                   f"{self.summary['train_seconds']:.1f} {self.unit} training in all, "
                   f"{self.summary['wall_seconds']:.1f} {self.unit} wall ==")
        if own:
            self.print(own)
        self.print(f"run folder: {self.dir}")
        if self.end_table is not None and status == "completed":
            self.end_table()
        elif acc:
            width = max(len("component"), *(len(k) for k in acc))
            self.print(f"{'component':<{width}}  final acc  best acc")
            for name, value in acc.items():
                self.print(f"{name:<{width}}  {value:9.4f}  {self.best.get(name, value):8.4f}")


def _fmt(value):
    return f"{value:.4g}" if isinstance(value, float) else str(value)


LINE_WIDTH = 120


def wrap(head, parts):
    """The printed curve line, head | acc ... | loss ... | extra ..., cut at item boundaries
    into lines of at most LINE_WIDTH characters; a continuation line is indented, and
    joining each to the one before with a space gives the whole line back."""
    lines, indent = [head], " " * 12
    for label, items in parts:
        for n, item in enumerate(items):
            text = (f"| {label} " if label else "| ") + item if n == 0 else item
            if len(lines[-1]) + 1 + len(text) > LINE_WIDTH:
                lines.append(indent + text)
            else:
                lines[-1] += " " + text
    return lines
