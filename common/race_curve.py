"""A race of methods trained one after another on the same budget, each on its own
clock: the curve of test points each method logs (layerwise_demo.py's measurement,
its figure common.plots.draw_race), and the race's table at the end.
"""
import time

from common.clocks import Clock
from common.evaluation import eval_mode, evaluate


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
        self.run.still_working(f"{self.name}: step {self.steps}")
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
        printed = {self.kind: self.name, "stage": stage, f"{self.kind}_seconds": round(seconds, 3)}
        if not curve:   # the final row has no acc/<name> (curve points only): say it here
            printed["test_accuracy"] = round(accuracy, 5)
        quiet = {"cpu_seconds": round(cpu, 3), "test_loss": round(loss, 5),
                 "test_accuracy": round(accuracy, 5), "eval_examples": n, **full}
        quiet.update({column: round(total / count, 5) for column, (total, count) in self.means.items()})
        self.means = {}
        self.run.log(self.steps, self.samples / self.epoch_size,
                     accuracy={self.name: accuracy} if curve else None,
                     losses={"test": loss}, extra=printed, quiet=quiet)
        return loss, accuracy


def block_stats(k, local, logits, y):
    """Block k's local loss and its head's training accuracy, for RaceCurve.tick's means."""
    return {f"local_loss/{k + 1}": local.item(),
            f"head_acc/{k + 1}": (logits.argmax(1) == y).float().mean().item()}


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
