"""The monitor of async_mach's runtime: it watches the board for faults (a dead process,
a posted failure, a neighbour gone silent), starts the run's clock once every
component is ready, and merges the components' reports into one logged line (and
metrics row) every --log-seconds and into the summary's per-component figures.
"""
import json
import time

from common import cli

LOST_GRACE_S = 2.0     # a silent neighbour is reported; this long to learn why before naming it


class ComponentFailed(cli.RunFailed):
    """A component raised, or its process died; the message names it."""


def fault_watch(board, K, alive=None):
    """A check to call every few ms; it raises ComponentFailed naming the cause: a dead process
    (`alive`, named before its neighbours notice), a posted failure, or a neighbour gone silent
    (a symptom: named only when no other cause came within LOST_GRACE_S)."""
    lost_since = None

    def check():
        nonlocal lost_since
        if alive is not None:
            alive()
        if board.check(["failed"]):
            raise ComponentFailed(board.get("failed").decode())
        lost = [i for i in range(K) if board.check([f"lost/{i}"])]
        if lost and lost_since is None:
            lost_since = time.perf_counter()
        if lost and time.perf_counter() - lost_since > LOST_GRACE_S:
            raise ComponentFailed(board.get(f"lost/{lost[0]}").decode())
    return check


def monitor(run, board, K, log_seconds, alive=None):
    """Once every component is ready, restart the run's clock (starting processes and loading
    data is not training); then log one merged line every log_seconds until all have finished."""
    check_faults = fault_watch(board, K, alive)
    while not board.check([f"ready/{i}" for i in range(K)]):
        check_faults()
        run.still_working(lambda: f"starting the components: {sum(board.check([f'ready/{i}']) for i in range(K))}"
                                  f" of {K} ready (each loads its data first)")
        time.sleep(0.01)  # as often as the components look: the clocks start within a poll
    run.restart_clock()
    log = MergedLog(run, board, K)
    while True:
        deadline = time.perf_counter() + log_seconds
        finished = [f"finished/{i}" for i in range(K)]
        try:
            while time.perf_counter() < deadline and not board.check(finished):
                check_faults()
                time.sleep(0.05)
        except ComponentFailed:
            log()  # what the reports say so far, then stop the run
            raise
        if log():
            return


class MergedLog:
    """One line (and metrics row) from the components' latest reports: their steps, the mean
    ce, the accuracies measured since the last line, msg/s, staleness, queues, drops."""

    def __init__(self, run, board, K):
        self.run, self.board, self.K = run, board, K
        self.reports, self.seen = {}, {}  # seen: evaluations already logged, per component
        self.target = getattr(run.args, "stop_at_accuracy", None)
        self.reached = set()  # components whose accuracy has reached --stop-at-accuracy
        self.last_t, self.last_msgs, self.last_stale = run.elapsed(), 0, (0, 0)

    def __call__(self):
        """Log a line; True once every component has finished."""
        reports = self.reports
        for i in range(self.K):
            if self.board.check([f"report/{i}"]):
                reports[i] = json.loads(self.board.get(f"report/{i}"))
        now = self.run.elapsed()
        msgs = sum(r["received"] for r in reports.values())
        totals = [staleness_totals(r) for r in reports.values()]
        stale = (sum(t[0] for t in totals), sum(t[1] for t in totals))
        d_stale = (stale[0] - self.last_stale[0]) / max(1, stale[1] - self.last_stale[1])
        row_extra = {"msg/s": round((msgs - self.last_msgs) / max(now - self.last_t, 1e-9), 1),
                     "stale": round(d_stale, 2),
                     "queue": sum(r["queue"] for r in reports.values()),
                     "drops": sum(r["drops"] for r in reports.values())}
        bad = sum(r["bad_messages"] for r in reports.values())
        if bad:  # a column from the first malformed payload on (it should never appear)
            row_extra["malformed"] = bad
        self.last_t, self.last_msgs, self.last_stale = now, msgs, stale
        # Only accuracies measured since the last line: a component that evaluates rarely
        # leaves its cell empty rather than repeat an old number as if it were current.
        accuracy = {f"component_{i}": r["accuracy"] for i, r in sorted(reports.items())
                    if r["accuracy"] is not None and r["evaluations"] > self.seen.get(i, 0)}
        self.seen.update({i: r["evaluations"] for i, r in reports.items()})
        self.reached.update(i for i, r in reports.items()
                            if self.target and (r["accuracy"] or 0) >= self.target)
        epoch = sum(r["epoch"] for r in reports.values()) / max(1, len(reports))
        # iter: each component's own steps (--iterations counts them), the mean over components
        steps = round(sum(r["steps"] for r in reports.values()) / max(1, len(reports)))
        ce = [r["ce"] for r in reports.values() if r["ce"]]
        self.run.log(steps, epoch, accuracy=accuracy,
                     losses={"ce": sum(ce) / len(ce)} if ce else None, extra=row_extra)
        summarise(self.run, reports, stale)
        return len(reports) == self.K and all(r["finished"] for r in reports.values())


def staleness_totals(report):
    """(sum of the staleness of every gradient learned, how many) from a report's histogram."""
    counts = report["staleness"]
    return sum(int(k) * n for k, n in counts.items()), sum(counts.values())


def summarise(run, reports, stale):
    """Per-component figures and the run's totals, into run.summary."""
    run.summary["components"] = {
        f"component_{i}": dict(steps=r["steps"], learn_steps=r["learn_steps"],
                               steps_per_second=round(r["steps"] / max(r["seconds"], 1e-9), 2),
                               train_steps_per_second=round(
                                   r["steps"] / max(r["seconds"] - r["eval_seconds"], 1e-9), 2),
                               messages_received=r["received"], messages_sent=r["sent"],
                               mean_staleness=round(staleness_totals(r)[0] / max(1, staleness_totals(r)[1]), 3),
                               staleness=dict(sorted(r["staleness"].items(), key=lambda kv: int(kv[0]))),
                               queue_max=r["queue_max"], drops=r["drops"],
                               spikes_skipped=r["spikes_skipped"], grads_lost=r["grads_lost"],
                               bad_messages=r["bad_messages"], seconds=round(r["seconds"], 3))
        for i, r in sorted(reports.items())}
    seconds = max((r["seconds"] for r in reports.values()), default=0) or 1e-9
    run.summary["messages_per_second"] = round(sum(r["received"] for r in reports.values()) / seconds, 1)
    run.summary["steps_per_second"] = round(sum(r["steps"] for r in reports.values()) / seconds, 2)
    run.summary["mean_staleness"] = round(stale[0] / max(1, stale[1]), 3)
    run.summary["bad_messages"] = sum(r["bad_messages"] for r in reports.values())
    # Training time: the longest component's own clock less its evaluations (which the
    # components run themselves, outside the run's evaluating()).
    run.own_train_seconds = max((r["seconds"] - r["eval_seconds"] for r in reports.values()), default=0.0)
