"""The parallel race (benchmarks/parallel_race.py) as README.md's parallel_race block, from
results/benchmarks/parallel_race.json; benchmarks/make_results.py, the one entry point, calls it.

Per network and K, a table of its rows (each method at its tuned learning rate, the network's
one-process backprop references on top): seconds to each target (mean ± sample std over the
seeds that reached it), the row's ratios as parallel_race.py computed them (its mean seconds ÷
the best synchronous method's at that K, and ÷ one-process backprop on 1 thread's), final
accuracy, steps/s, bubble and peak activations per rank. Then one figure per K (seed 0's test
accuracy against training seconds) and, per target, a sentence on who got there first and who
did not get there, read off the rows.
"""
import json
import os
from pathlib import Path

from benchmarks.make_results import fmt, reached, table

MISSING = "(no parallel race yet: python benchmarks/parallel_race.py)"


def name(row):
    """'backprop, 1 thread', 'gpipe, M = 4', 'dgl': the row's method as parallel_race.py names
    the best synchronous one (ratio_to)."""
    if row["method"] == "backprop":
        return f"backprop, {row['threads_per_rank']} thread" + "s" * (row["threads_per_rank"] > 1)
    return row["method"] + (f", M = {row['microbatches']}" if row["microbatches"] else "")


def run_of(data, row, seed):
    """The row's run (cell) on `seed`, at the row's tuned learning rate."""
    return next(c for c in data["cells"].values() if c["seed"] == seed and c["lr"] == row["lr"]
                and (c["network"], c["method"], c["K"], c["microbatches"], c["threads"])
                == (row["network"], row["method"], row["K"], row["microbatches"], row["threads_per_rank"]))


def budget(data, network):
    """'1200 steps': the --steps every run of the network had."""
    flags = data["settings"]["budgets"][network]
    return f"{flags[flags.index('--steps') + 1]} steps"


def groups(data):
    """{(network, K): rows}, the network's one-process (K = 1) rows first in each K's."""
    out = {}
    for network in dict.fromkeys(row["network"] for row in data["rows"]):
        mine = [row for row in data["rows"] if row["network"] == network]
        for K in sorted({row["K"] for row in mine} - {1}) or [1]:
            out[network, K] = [row for row in mine if row["K"] in (1, K)]
    return out


def percent(target):
    return f"{100 * float(target):g} %"


def reference(rows):
    """One-process backprop on 1 thread, the second ratio's baseline (None if not raced)."""
    return next((r for r in rows if r["method"] == "backprop" and r["threads_per_rank"] == 1), None)


def cells(data, row, targets, to):
    """A row's cells; `to`: {target: the best synchronous methods its table's rows name}. Per
    target one cell: the seconds, then (÷ the best synchronous method's, ÷ 1-thread backprop's)."""
    within = budget(data, row["network"])

    def ratio(t, key):  # the best synchronous method in the cell only when the header cannot name it
        named = key != "ratio" or len(to[t]) == 1
        value = row[key][t]
        return "-" if value is None else fmt([value], "x") + ("" if named else f" {row['ratio_to'][t]}'s")

    def per_rank(values, scale, unit):
        return " / ".join(fmt([scale * v], unit) for v in values or []) or "-"
    return [name(row), f"{row['lr']:.3g} (x{run_of(data, row, row['seeds'][0])['factor']:.3g})",
            *(f"{reached(row['seconds'][t], within)} ({ratio(t, 'ratio')}, {ratio(t, 'ratio_to_backprop')})"
              for t in targets),
            fmt([100 * a for a in row["final"]], "%"),
            fmt([row["steps_per_second"]] if row["steps_per_second"] else [], "steps/s"),
            per_rank(row["bubble"], 100, "%"), per_rank(row["peak_activations"], 2 ** -20, "MiB"),
            ", ".join(map(str, row["seeds"]))]


def tables(data):
    """A table per (network, K), its title in the first header cell."""
    lines, targets = [], list(data["rows"][0]["seconds"])
    for (network, K), rows in groups(data).items():
        # parallel_race.py finds the best synchronous method per (network, K, target): one name a column
        to = {t: {r["ratio_to"][t] for r in rows} - {None} for t in targets}
        header = [f"{network}, K = {K}, {budget(data, network)}", "lr (× the network's)",
                  *(f"s to {percent(t)} (÷ best synchronous{f' = {next(iter(to[t]))}' if len(to[t]) == 1 else ''}, "
                    "÷ backprop on 1 thread)" for t in targets),
                  "final accuracy", "steps/s", "bubble per rank", "peak activations per rank", "seeds"]
        lines += [*table(header, [cells(data, r, targets, to) for r in rows]), ""]
    return lines


def caption(data):
    """What the table's figures are, the machine and the command that reproduces them."""
    factors = ", ".join(f"x{f:.3g}" for f in data["settings"]["factors"])
    return (
        "Seconds: the run's training seconds until the test accuracy first reached the target; each rank's clock "
        "counts only its training (evaluation is off every clock) and a run's seconds are its slowest rank's; mean "
        "± sample std over the seeds that reached it. Ratios: the mean seconds ÷ those of the best synchronous "
        "method at the same K (named in the header) or of one-process backprop on 1 thread; - where a side missed "
        f"the target on some seed. lr: tuned on seed 0 over {factors} of the network's rate (the methods whose update "
        "is one-process backprop's took 1-thread backprop's). steps/s: steps ÷ the slowest rank's seconds; "
        "bubble: 1 − CPU ÷ wall seconds of each rank, mean over the seeds; peak activations: the most bytes "
        "autograd held per rank, the "
        f"largest over the seeds. {data['settings']['dataset']}, {data.get('hardware', 'hardware not recorded')}, "
        f"torch {data.get('torch', 'not recorded')}, OMP_WAIT_POLICY={data.get('omp_wait_policy', 'not recorded')}, "
        "one torch thread per rank (backprop: as named). Reproduce: `python benchmarks/parallel_race.py` "
        "(it resumes from `results/benchmarks/parallel_race.json`, which holds each row's command per seed).")


def findings(data, K, rows):
    """Per target: the fastest method at K on the mean over its seeds (each seed reached it), its
    ratios with their baselines' seconds; and the rows that missed the target on some seed."""
    bullets, ref, within = [], reference(rows), budget(data, rows[0]["network"])
    for t in rows[0]["seconds"]:
        done = [r for r in rows if r["K"] == K and r["mean_seconds"][t] is not None]
        if done:
            first = min(done, key=lambda r: r["mean_seconds"][t])
            n, to = len(first["seeds"]), first["ratio_to"][t]
            text = (f"At {percent(t)}, K = {K}: {name(first)} first, {first['mean_seconds'][t]:.1f} s "
                    f"(mean of {n} seed{'s' * (n > 1)})")
            if to == name(first):
                text += ", the best synchronous method"
            elif first["ratio"][t] is not None:
                base = next(r for r in rows if r["K"] == K and name(r) == to)
                text += (f", {first['ratio'][t]:.2f}x the best synchronous method ({to}, "
                         f"{base['mean_seconds'][t]:.1f} s)")
            if first["ratio_to_backprop"][t] is not None and first is not ref:
                text += (f" and {first['ratio_to_backprop'][t]:.2f}x one-process backprop on 1 thread "
                         f"({ref['mean_seconds'][t]:.1f} s)")
            text += "."
        else:
            text = f"At {percent(t)}, K = {K}: no method reached it on every seed."
        missed = []  # "dni" (no seed reached it), "ddp (1 of 3 seeds)"
        for r in rows:
            k = sum(s is not None for s in r["seconds"][t])
            if k < len(r["seeds"]):
                missed.append(name(r) + (f" ({k} of {len(r['seeds'])} seeds)" if k else ""))
        bullets.append(f"- {text}" + (f" Not reached within {within}: {'; '.join(missed)}." if missed else ""))
    return bullets


def block(results, readme_dir, assets):
    """(the block's lines, [(figure path, {label: (seconds, accuracies)}, title)] for draw() to
    draw once every block of the README is found)."""
    path = Path(results, "benchmarks", "parallel_race.json")
    data = json.loads(path.read_text()) if path.exists() else {}
    if not data.get("rows"):
        return [MISSING], []
    lines, pictures, figures, bullets = tables(data), [], [], []
    networks = {network for network, _ in groups(data)}
    for (network, K), rows in groups(data).items():
        bullets += findings(data, K, rows)
        ref = reference(rows)
        if K > 1:
            out = Path(assets) / (f"parallel_race_k{K}.png" if len(networks) == 1 else
                                  f"parallel_race_{network}_k{K}.png")
            drawn = [r for r in rows if (r["K"] == K or r is ref) and 0 in r["seeds"]]
            series = {name(r): tuple(map(list, zip(*run_of(data, r, 0)["curve"]))) for r in drawn}
            pictures.append((out, series, f"{network}, K = {K}: each method at its tuned rate, seed 0"))
            figures += [f"![test accuracy against training seconds (the slowest rank's clock), {network}, K = {K}, "
                        f"seed 0, each method at its tuned rate]({Path(os.path.relpath(out, readme_dir)).as_posix()})",
                        ""]
    return lines + [caption(data), "", *figures, *bullets], pictures


def draw(pictures):
    """block()'s figures, through common/plots.py."""
    if not pictures:
        return
    from common.plots import plot_series  # matplotlib and torch: only when there is a figure
    for out, series, title in pictures:
        out.parent.mkdir(parents=True, exist_ok=True)
        plot_series(out, series, "training seconds (the run's: its slowest rank's clock)", "test accuracy",
                    title=title, ylow=0.7)   # the race is decided above 70 %; the start at chance is off the axis
