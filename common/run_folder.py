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
  summary.json  script, dataset, seed, device, iterations, train_seconds,
                status (completed | interrupted | diverged | failed),
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


def synchronize(device):
    """Wait for queued GPU work so the clock reads real elapsed time."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@torch.inference_mode()
def evaluate(predict, x, y, batch_size=2000):
    """(mean cross-entropy, accuracy) of `predict(x) -> logits` over a whole split."""
    total_loss, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        logits = predict(x[start:start + batch_size])
        target = y[start:start + batch_size]
        total_loss += torch.nn.functional.cross_entropy(logits, target, reduction="sum").item()
        correct += (logits.argmax(1) == target).sum().item()
    return total_loss / len(x), correct / len(x)


@contextmanager
def eval_mode(*modules):
    """Dropout and BatchNorm in evaluation mode inside, as they were afterwards."""
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


class Clock:
    """One method's own training clock: the seconds spent inside `with clock:`.

    Several methods trained in one loop each keep one, so each curve can be
    drawn against the time its own steps took (synchronised on GPUs).
    """

    def __init__(self, device):
        self.device, self.seconds = device, 0.0

    def __enter__(self):
        synchronize(self.device)
        self._began = time.perf_counter()
        return self

    def __exit__(self, *exc):
        synchronize(self.device)
        self.seconds += time.perf_counter() - self._began
        return False


def first_time_at(rows, accuracy_column, clock_column, target):
    """The clock reading of the first row whose accuracy reaches target, else None."""
    for row in rows:
        value = row.get(accuracy_column)
        if value not in (None, "") and float(value) >= target:
            return float(row[clock_column])
    return None


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
        # Components that train on their own (async_mach) report their training time here.
        self.own_train_seconds = None
        self.progress = tqdm(total=total, disable=not sys.stdout.isatty(), leave=False,
                             dynamic_ncols=True, desc=script)
        self.clock, self.unit = time.perf_counter, "s"  # a simulation's run: virtual seconds
        self.start = self.clock()

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

    # -- logging --------------------------------------------------------------
    def log(self, iteration, epoch, accuracy=None, losses=None, extra=None):
        """One evaluation: print a fixed-format line and append a CSV row.

        accuracy: {component: test accuracy fraction}; losses: {name: value};
        extra: any other numbers worth a column. A non-finite loss raises Diverged
        after the row is written.
        """
        synchronize(self.device)
        accuracy, losses, extra = accuracy or {}, losses or {}, extra or {}
        self.iteration = iteration
        row = {"iteration": iteration, "epoch": round(epoch, 4),
               "seconds": round(self.elapsed(), 3), "train_seconds": round(self.train_seconds(), 3)}
        row.update({f"acc/{k}": round(v, 5) for k, v in accuracy.items()})
        row.update({f"loss/{k}": v for k, v in losses.items()})
        row.update(extra)
        self._write_row(row)
        for name, value in accuracy.items():
            self.best[name] = max(self.best.get(name, 0.0), value)
            self.summary["test_accuracy"][name] = value
        line = (f"iter {iteration:>7d} | epoch {epoch:6.2f} | {row['seconds']:7.1f} {self.unit}"
                + (" | acc " + " ".join(f"{k} {v:.4f}" for k, v in accuracy.items()) if accuracy else "")
                + (" | loss " + " ".join(f"{k} {v:.4g}" for k, v in losses.items()) if losses else "")
                + (" | " + " ".join(f"{k} {_fmt(v)}" for k, v in extra.items()) if extra else ""))
        self.print(line)
        bad = [name for name, value in losses.items() if not math.isfinite(value)]
        if bad:
            raise Diverged(f"loss {bad[0]} became {losses[bad[0]]} at iteration {iteration}")

    def print(self, line):
        """Print above the progress bar (or plainly when there is none)."""
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
        README's headline table shows it (beside the baseline's row of the same metric)."""
        row = {"name": name, "metric": metric, "value": value, "unit": unit, "headline": headline}
        if reference:
            row["reference"] = reference
        self.rows_declared.append(row)

    def time_to_target(self, pairs, clock_column, fraction=0.95, rows=None):
        """For each (method, baseline) pair: the seconds each of the two took until its
        test accuracy first reached `fraction` of the baseline's final accuracy, on the
        clock `clock_column(name)` of the logged rows (default: every row logged)."""
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

    def finish(self, status, error=None):
        self.summary.update(status=status, iterations=self.iteration,
                            train_seconds=round(self.train_seconds(), 3),
                            wall_seconds=round(self.elapsed(), 3),
                            best_test_accuracy=self.best)
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
                plot_run(self.dir, f"{s['script']} on {s['dataset']}, seed {s['seed']}, {s['device']}")
        figures = sorted(p.name for p in self.dir.glob("*.png"))
        self.summary["results"] = {"baseline": self.baseline, "rows": rows, "figures": figures}
        (self.dir / "summary.json").write_text(json.dumps(self.summary, indent=2) + "\n")
        self.print_table(status)

    def print_table(self, status):
        acc = self.summary["test_accuracy"]
        self.print(f"== {self.script} {status}: {self.iteration} iterations, "
                   f"{self.summary['train_seconds']:.1f} {self.unit} training, "
                   f"{self.summary['wall_seconds']:.1f} {self.unit} wall, run folder {self.dir} ==")
        if acc:
            width = max(len("component"), *(len(k) for k in acc))
            self.print(f"{'component':<{width}}  final acc  best acc")
            for name, value in acc.items():
                self.print(f"{name:<{width}}  {value:9.4f}  {self.best.get(name, value):8.4f}")


def _fmt(value):
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# -- A race: methods trained one after another, each on its own clock --------------
# (layerwise_demo.py's clock; its figure is common.plots.draw_race)

class RaceCurve:
    """One method's turn in a race of methods trained one after another on the same
    budget: its own training clock (a Clock), its budget (steps, or seconds on that
    clock), when its next test point is due, and the points so far.

        curve = RaceCurve(run, "backprop", test=(x, y), epoch_size=60000, budget_steps=False,
                          every_seconds=10, eval_size=2000, targets=[0.85, 0.88])
        while curve.used() < budget:
            with curve.clock:
                ...one training step...
            curve.tick(batch_size, {"local_loss/1": loss.item()})
            if curve.due():
                curve.point(model, [model], stage="all")
        curve.final(model, [model], test_x, test_y, stage="final")

    A point evaluates on the first `eval_size` images of `test` (a slice keeps the race
    fast) and logs a row with the column acc/<name>: the run's best accuracy and time to
    target see points only. With `targets`, a point whose slice accuracy reaches a target
    not yet confirmed is evaluated again on the whole of `test`, logged as
    full_test_accuracy: a crossing counts once confirmed there.
    `final` evaluates on the split it is given, records that as the
    method's test accuracy, and logs its row without acc/<name>. Rows carry <kind>,
    stage, <kind>_seconds (the clock), cpu_seconds, test_loss, test_accuracy,
    eval_examples, and the means of what `tick` was given since the last point.
    """

    def __init__(self, run, name, test, epoch_size, budget_steps, every_steps=None,
                 every_seconds=None, kind="method", eval_size=None, targets=()):
        self.run, self.name, self.test, self.kind = run, name, test, kind
        self.eval_size, self.unconfirmed = eval_size or len(test[1]), sorted(targets)
        self.epoch_size, self.budget_steps = epoch_size, budget_steps
        self.every_steps, self.every_seconds = every_steps, every_seconds
        self.clock = Clock(run.device)
        self.steps = self.samples = 0
        # CPU seconds of this process (all threads), evaluation excluded: on a shared
        # machine they show how much of the wall-clock budget the method really got.
        self.cpu_start, self.cpu_eval = time.process_time(), 0.0
        self.means = {}   # column: [sum, count] since the last point
        self.points = []  # (seconds on the clock, test loss, test accuracy)
        self.next_point = every_steps or every_seconds

    def cpu_seconds(self):
        return time.process_time() - self.cpu_start - self.cpu_eval

    def used(self):
        """Budget spent: steps, or seconds on the method's clock."""
        return self.steps if self.budget_steps else self.clock.seconds

    def tick(self, batch_size, values=None):
        """After a step: count it, and add `values` ({column: number}) to the means."""
        self.steps += 1
        self.samples += batch_size
        for column, value in (values or {}).items():
            total = self.means.setdefault(column, [0.0, 0])
            total[0] += value
            total[1] += 1

    def _now(self):
        return self.steps if self.every_steps else self.clock.seconds

    def due(self):
        return self._now() >= self.next_point

    def point(self, predict, modules, stage, inputs=None):
        """Log a curve point: predict's loss and accuracy on the slice, `modules` in eval mode.
        `inputs`: what predict takes in place of test's images, one row per image (say,
        indices into features computed once)."""
        x, y = self.test
        loss, accuracy = self._log(predict, modules, x if inputs is None else inputs, y,
                                   stage, curve=True)
        self.points.append((self.clock.seconds, loss, accuracy))
        self.next_point = self._now() + (self.every_steps or self.every_seconds)
        return accuracy

    def final(self, predict, modules, x, y, stage):
        """The method's test accuracy, on (x, y): recorded, logged, not a curve point."""
        loss, accuracy = self._log(predict, modules, x, y, stage, curve=False)
        self.run.summary["test_accuracy"][self.name] = accuracy
        return accuracy

    def _log(self, predict, modules, x, y, stage, curve):
        seconds, cpu, began = self.clock.seconds, self.cpu_seconds(), time.process_time()
        n, full = (self.eval_size if curve else len(y)), {}
        with self.run.evaluating(), eval_mode(*modules):
            loss, accuracy = evaluate(predict, x[:n], y[:n])
            if curve and self.unconfirmed and accuracy >= self.unconfirmed[0]:
                full["full_test_accuracy"] = round(evaluate(predict, x, y)[1], 5)
                self.unconfirmed = [t for t in self.unconfirmed if t > full["full_test_accuracy"]]
        self.cpu_eval += time.process_time() - began
        extra = {self.kind: self.name, "stage": stage,
                 f"{self.kind}_seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3),
                 "test_loss": round(loss, 5), "test_accuracy": round(accuracy, 5),
                 "eval_examples": n, **full}
        extra.update({column: round(total / count, 5)
                      for column, (total, count) in self.means.items()})
        self.means = {}
        self.run.log(self.steps, self.samples / self.epoch_size,
                     accuracy={self.name: accuracy} if curve else None,
                     losses={"test": loss}, extra=extra)
        return loss, accuracy


def print_race_table(run, curves, n_eval, n_test):
    """The race's table: final accuracy (whole test set) apart from the best curve point
    (first n_eval), steps, CPU seconds, and seconds to the target of run.time_to_target."""
    timed = run.summary["time_to_target"]
    seconds = {p["baseline"]: p["baseline_seconds"] for p in timed["pairs"]}
    seconds.update({p["method"]: p["seconds"] for p in timed["pairs"]})
    run.print(f"{'strategy':<14} {'final acc':>9} {'best point':>10} {'steps':>6} {'cpu s':>6} "
              f"{'s to target':>11} {'x backprop':>10}")
    for c in curves:
        t, base = seconds.get(c.name), seconds.get("backprop")
        run.print(f"{c.name:<14} {run.summary['test_accuracy'][c.name]:9.4f} "
                  f"{max(p[2] for p in c.points):10.4f} {c.steps:6d} "
                  f"{run.summary['cpu_seconds'][c.name]:6.0f} {'-' if t is None else f'{t:.1f}':>11} "
                  f"{f'{t / base:.2f}' if t is not None and base else '-':>10}")
    run.print(f"final acc: all {n_test} test images; best point: the best curve point, on the "
              f"first {n_eval}; s to target: strategy seconds to the first curve point at "
              f"{timed['fraction']:.0%} of backprop's final acc ('-': never)")
