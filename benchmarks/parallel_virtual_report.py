"""K devices in virtual time (benchmarks/parallel_virtual.py) as README.md's parallel_virtual
block and benchmarks/README.md's table, from the "virtual" part of
results/benchmarks/parallel_race.json; benchmarks/make_results.py calls it.

The table: every (K, link, method) row. The block: the figures (seconds to each target against
K at the K sweep's link; against latency at the latency sweep's K, a panel per bandwidth and
target; the first method to each target in every cell, as a map) and one sentence per cell of
the K sweep: the first decoupled method against the first synchronous one, read off the rows;
the table carries every cell's sentence.
"""
import json
import os
from pathlib import Path

from benchmarks.make_results import table
from benchmarks.parallel_virtual import SYNC
MISSING = "(no virtual study yet: python benchmarks/parallel_race.py --backend virtual)"


def rows_of(data):
    return data.get("virtual", {}).get("rows", [])


def label(row):
    return row["method"] + (f" (M = {row['microbatches']})" if row["microbatches"] else "")


def link(row):
    return f"{row['latency_ms']:g} ms, {row['bandwidth_gbit']:g} Gbit/s"


def cells(data):
    """{(K, latency, bandwidth): rows}, in the study's order."""
    out = {}
    for row in sorted(rows_of(data), key=lambda r: (r["K"], -r["bandwidth_gbit"], r["latency_ms"])):
        out.setdefault((row["K"], row["latency_ms"], row["bandwidth_gbit"]), []).append(row)
    return out


def first(rows, target):
    """The row with the fewest mean seconds to target (every seed reached it), or None."""
    done = [r for r in rows if r["mean_seconds"][target] is not None]
    return min(done, key=lambda r: r["mean_seconds"][target]) if done else None


def tables(data):
    groups = cells(data)
    rows = [r for group in groups.values() for r in group]
    if not rows:
        return []
    targets = list(rows[0]["seconds"])
    header = ["K", "link", "method", "ms per step", "largest bubble", *(f"s to {100 * float(t):g} %" for t in targets),
              "steps", "final %", "seeds"]
    body = [[str(r["K"]), link(r), label(r), f"{1e3 * r['seconds_per_step']:.1f}", f"{100 * max(r['bubble']):.0f} %",
             *("-" if r["mean_seconds"][t] is None else f"{r['mean_seconds'][t]:.1f}" for t in targets),
             str(r["steps"]), f"{100 * sum(r['final']) / len(r['final']):.2f}", ", ".join(map(str, r["seeds"]))] for r in rows]
    lines = ["", *table(header, body), "", caption(data), "", "*The first decoupled method against the first "
             "synchronous one, in every cell*", "", *(sentence(k, g, targets) for k, g in groups.items()), ""]
    checks = data["virtual"].get("formulas", [])
    if checks:
        lines += ["*What the simulator confirms (the projection to large K below uses these formulas; 1F1B on a "
                  "free link, DDP and DGL at 1 ms, 10 Gbit/s)*", "", *table(
                      ["K", "1F1B: M", "its busiest stage's bubble", "(K-1)/(M+K-1)", "DDP: step beyond its compute (s)",
                       "ring formula 2(K-1)(buckets x latency + W/(K bandwidth)) (s)", "DGL: step (s)",
                       "its slowest stage's compute (s)"],
                      [[str(c["K"]), str(c["microbatches"]), f"{c['bubble_1f1b']:.3f}", f"{c['bubble_formula']:.3f}",
                        f"{c['ddp_beyond_compute_s']:.4f}", f"{c['ddp_ring_formula_s']:.4f}",
                        f"{c['dgl_step_s']:.4f}", f"{c['dgl_slowest_stage_s']:.4f}"] for c in checks]), ""]
    return lines


def caption(data):
    s = data["virtual"]["settings"]
    return (f"Virtual time: {s['grid']}; a device is one core of this machine ({data.get('hardware', '?')}, every "
            f"action priced by running it here: {s['prices']}); links carry b bytes in latency + b / bandwidth. "
            f"Synchronous rows: one-process backprop's curve (their update is its update) at the priced step, at "
            f"their best M in {{K, 2K, 4K}}. Decoupled rows: trained in the simulated order (common/stage_replay.py). "
            f"Each row trains its steps (the table's column), evaluated every {s['eval_every']} on {s['eval_size']} test images, "
            f"{s['dataset']}; seconds: when the step that first reached the target ended, mean over the seeds. "
            "Reproduce: `python benchmarks/parallel_race.py --backend virtual` (resumes from the JSON).")


def sentence(key, rows, targets):
    K, latency, bandwidth = key
    parts = []
    for t in targets:
        fast = first([r for r in rows if r["method"] not in SYNC], t)
        sync = first([r for r in rows if r["method"] in SYNC], t)
        pct = f"{100 * float(t):g} %"
        if fast and sync:
            parts.append(f"{pct}: {label(fast)} in {fast['mean_seconds'][t]:.1f} s, {label(sync)} in "
                         f"{sync['mean_seconds'][t]:.1f} s ({fast['mean_seconds'][t] / sync['mean_seconds'][t]:.2f}x)")
        elif sync:
            parts.append(f"{pct}: no decoupled method; {label(sync)} in {sync['mean_seconds'][t]:.1f} s")
        elif fast:
            parts.append(f"{pct}: {label(fast)} in {fast['mean_seconds'][t]:.1f} s; no synchronous method")
    return f"- K = {K}, {latency:g} ms, {bandwidth:g} Gbit/s: " + "; ".join(parts) + "."


def block(results, readme_dir, assets, bench_readme):
    """(the block's lines, pictures for draw())."""
    path = Path(results, "benchmarks", "parallel_race.json")
    data = json.loads(path.read_text()) if path.exists() else {}
    groups = cells(data)
    if not groups:
        return [MISSING], []
    rows = [r for g in groups.values() for r in g]
    targets, methods = list(rows[0]["seconds"]), list(dict.fromkeys(r["method"] for r in rows))
    Ks = sorted({K for K, _, _ in groups})
    links = list(dict.fromkeys((lat, bw) for _, lat, bw in sorted(groups, key=lambda c: (-c[2], c[1]))))
    sweep_link = max(links, key=lambda lb: sum((K, *lb) in groups for K in Ks))
    sweep_K = max(Ks, key=lambda K: (sum((K, *lb) in groups for lb in links), K))

    def lines(keys, t):
        """{method: (xs, seconds)}; a method that reached the target nowhere says so."""
        out = {}
        for m in methods:
            got = [(x, next((r["mean_seconds"][t] for r in groups.get(key, []) if r["method"] == m), None))
                   for x, key in keys]
            reached = any(s is not None for _, s in got)
            out[m + ("" if reached else " (not reached)")] = ([x for x, _ in got], [s for _, s in got])
        return out
    by_K = {f"{100 * float(t):g} %, {sweep_link[0]:g} ms, {sweep_link[1]:g} Gbit/s":
            lines([(K, (K, *sweep_link)) for K in Ks], t) for t in targets}
    bandwidths = sorted({bw for _, bw in links}, reverse=True)
    by_latency = {f"{100 * float(t):g} %, K = {sweep_K}, {bw:g} Gbit/s":
                  lines([(lat, (sweep_K, lat, bw)) for lat, b in links if b == bw], t)
                  for t in targets for bw in bandwidths}
    maps = {t: {(f"K = {K}", f"{lat:g} ms, {bw:g} Gbit/s"): (label(f) if (f := first(g, t)) else "none")
                for (K, lat, bw), g in groups.items()} for t in targets}
    out = {name: Path(assets) / f"parallel_virtual_{name}.png" for name in ("k", "latency", *(f"first{100 * float(t):g}"
                                                                                             for t in targets))}
    pictures = [("panels", out["k"], by_K, "K (devices)", True),
                ("panels", out["latency"], by_latency, "latency per hop (ms)", False),
                *(("map", out[f"first{100 * float(t):g}"], (maps[t], [f"K = {K}" for K in Ks],
                                                              [f"{lat:g} ms, {bw:g} Gbit/s" for lat, bw in links]),
                   f"first to {100 * float(t):g} %", None) for t in targets)]
    rel = lambda p: Path(os.path.relpath(p, readme_dir)).as_posix()
    figures = [f"![seconds to each target against K, one line per method]({rel(out['k'])}) "
               f"![seconds to each target against latency at K = {sweep_K}]({rel(out['latency'])})",
               " ".join(f"![the first method to {100 * float(t):g} % in each cell]({rel(out[f'first{100 * float(t):g}'])})"
                        for t in targets)]
    sweep = [sentence(k, g, targets) for k, g in groups.items() if k[1:] == sweep_link]  # every cell's: benchmarks/
    return [caption(data), "", *figures, "", *sweep, f"Every cell's sentence (the latency sweep at K = {sweep_K} too): "
            f"[benchmarks/README.md]({rel(bench_readme)}), parallel_race's tables."], pictures


def draw(pictures):
    if not pictures:
        return
    from common.plots import plot_map, plot_panels
    for kind, out, content, xlabel, logx in pictures:
        out.parent.mkdir(parents=True, exist_ok=True)
        if kind == "panels":
            plot_panels(out, content, xlabel, "seconds to the target (virtual)", logx=logx, logy=True)
        else:
            plot_map(out, content[1], content[2], content[0], title=xlabel)
