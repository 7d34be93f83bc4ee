"""Soak: K = 4 components of `async_mach.py --backend process` train for 10 minutes while
the resident memory (RSS, VmRSS in /proc/<pid>/status) of each process is sampled every
10 s. Target: after the first minute of training (loading the data, the first evaluations
and the allocator's pools come before), no component's RSS grows beyond 10 %:

    growth = max RSS over the samples from 1 min of training on ÷ RSS at 1 min <= 1.10

Times are seconds since the processes started; training starts once all have loaded their
data (the run's clock, read from the first row of its metrics.csv).

Also from the run's summary.json: messages sent against received (every message a component
counted as sent must arrive: target received ÷ sent = 1), gradients lost (a grad message whose
answer the child had already forgotten), gradient-queue drops (the oldest gradient pushed out
of a full queue) and malformed payloads dropped, each reported without a target; the run
must end with status completed and leave no process behind.

Each component runs one torch thread with OMP_WAIT_POLICY=PASSIVE (4 processes may share
fewer cores). The run is started in its own session; the soak stops only that session (the
launcher on Ctrl-C or after its deadline, then SIGKILL to the session if it has not ended
within 30 s) and nothing else. Its run folder is a temporary one, kept only if the run
failed; --out names one to keep.

    python benchmarks/soak.py                            # 10 minutes -> results/benchmarks/soak.json
    python benchmarks/soak.py --minutes 1 --settle-minutes 0.5 --json /tmp/soak.json   # a smoke run
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from common import cli  # noqa: E402

GROWTH_LIMIT = 1.10   # RSS after the first minute ÷ RSS at the first minute
START_BOUND_S = 180   # the processes must be up (workers.json written) within this
END_GRACE_S = 120     # after --minutes, the run has this long to end cleanly


def build_parser():
    parser = cli.Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=cli.positive_float, default=10.0,
                        help="how long each component trains (async_mach --seconds), default 10")
    parser.add_argument("--components", type=cli.positive_int, default=4, help="K processes, default 4")
    parser.add_argument("--sample-seconds", type=cli.positive_float, default=10.0,
                        help="seconds between two RSS samples, default 10")
    parser.add_argument("--settle-minutes", type=cli.nonnegative_float, default=1.0,
                        help="minutes of training after which growth is measured, default 1")
    parser.add_argument("--dataset", choices=cli.DATASETS, default="fashion-mnist",
                        help="async_mach's --dataset, default fashion-mnist")
    parser.add_argument("--data-dir", default=None, help="async_mach's --data-dir (default: its own)")
    parser.add_argument("--out", default=None,
                        help="keep the run folder here (default: a temporary one, removed unless the run failed)")
    parser.add_argument("--json", default="results/benchmarks/soak.json",
                        help="where to write the figures as JSON, default results/benchmarks/soak.json")
    return parser


# ---------------------------------------------------------------------------- /proc
def rss_mib(pid, parent):
    """VmRSS of `pid` in MiB if it is still the child of `parent` (a reused pid is not ours)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if int(stat.rsplit(")", 1)[1].split()[1]) != parent:
            return None
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)   # kB
    except (OSError, IndexError, ValueError):
        pass
    return None


def alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop(launcher):
    """Ctrl-C to the launcher (it stops its components and writes its summary); after 30 s,
    SIGKILL to its session, which holds only it and its components."""
    if launcher.poll() is None:
        launcher.send_signal(signal.SIGINT)
        try:
            launcher.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait(timeout=30)


# ---------------------------------------------------------------------------- the run
def workers(out):
    """{component_<i>: pid} from the run folder's workers.json; {} until it is whole."""
    try:
        return json.loads((out / "workers.json").read_text())
    except (OSError, ValueError):
        return {}


def training_began(out, now):
    """When the run's clock started (every component ready), on our clock; None before its
    first logged row: the row's `seconds` is the run's clock when it was written."""
    try:
        rows = (out / "metrics.csv").read_text().splitlines()
        header, first = rows[0].split(","), rows[1].split(",")
        return now - float(first[header.index("seconds")])
    except (OSError, IndexError, ValueError):
        return None


def soak(args, out, log):
    """Run async_mach and sample its processes' RSS; returns (samples, pids, the seconds
    from the processes' start to training's, exit code)."""
    command = [sys.executable, "async_mach.py", "--backend", "process", "--components", str(args.components),
               "--threads", "1", "--seconds", str(args.minutes * 60), "--dataset", args.dataset,
               "--log-seconds", "10", "--out", str(out)] + (["--data-dir", args.data_dir] if args.data_dir else [])
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", PYTHONUNBUFFERED="1")
    print(" ".join(command[1:]), flush=True)
    launcher = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    samples, pids = [], {}
    try:
        began = time.perf_counter()
        while not (pids := workers(out)):   # written once every process has started
            if launcher.poll() is not None or time.perf_counter() - began > START_BOUND_S:
                return samples, pids, None, launcher.poll()
            time.sleep(0.2)
        pids["launcher"] = launcher.pid
        start, trained = time.perf_counter(), None
        deadline = start + args.minutes * 60 + START_BOUND_S + END_GRACE_S
        while launcher.poll() is None and time.perf_counter() < deadline:
            sample = {"t_s": round(time.perf_counter() - start, 1)}
            sample.update({name: rss_mib(pid, launcher.pid if name != "launcher" else os.getpid())
                           for name, pid in pids.items()})
            samples.append(sample)
            print(f"{sample['t_s']:7.1f} s  RSS MiB  " + "  ".join(
                f"{name} {sample[name]}" for name in pids), flush=True)
            next_at = start + len(samples) * args.sample_seconds
            while launcher.poll() is None and time.perf_counter() < next_at:
                if trained is None and (at := training_began(out, time.perf_counter())) is not None:
                    trained = round(at - start, 1)
                    print(f"training began {trained} s after the processes started", flush=True)
                time.sleep(0.2)
    finally:
        stop(launcher)   # at once after Ctrl-C or the deadline; a no-op when it has ended
    return samples, pids, trained, launcher.returncode


def growth(samples, name, settle_s):
    """(RSS at the first sample from settle_s on, the largest from there, their ratio);
    None where there is no such sample (a run shorter than the settling time)."""
    later = [s[name] for s in samples if s["t_s"] >= settle_s and s[name] is not None]
    if not later:
        return None, None, None
    return later[0], max(later), round(max(later) / later[0], 3)


def figures(args, samples, pids, trained, code, summary, config, left):
    """The JSON: the targets with verdicts, the memory curve, the message counts."""
    settle_s = float("inf") if trained is None else trained + args.settle_minutes * 60
    names = [n for n in pids if n != "launcher"]
    parts = (summary or {}).get("components")
    parts = parts if isinstance(parts, dict) else {}   # a run that failed before any report: K
    targets = [{"figure": "soak: the run ends with status completed", "value": (summary or {}).get("status"),
                "target": "completed", "met": (summary or {}).get("status") == "completed"},
               {"figure": "soak: processes of the run left running after it", "value": len(left),
                "target": "0", "met": not left}]
    memory = []
    for name in names + ["launcher"]:
        first, peak, ratio = growth(samples, name, settle_s)
        memory.append({"process": name, "rss_mib_at_settle": first, "rss_mib_max_after": peak, "growth": ratio})
        targets.append({"figure": f"soak: {name} RSS, max from {args.settle_minutes:g} min of training on ÷ at "
                                  f"{args.settle_minutes:g} min ({args.components} processes, {args.minutes:g} min)",
                        "value": ratio, "target": f"<= {GROWTH_LIMIT}",
                        "met": None if ratio is None else ratio <= GROWTH_LIMIT})
    sent = sum(c["messages_sent"] for c in parts.values())
    received = sum(c["messages_received"] for c in parts.values())
    targets.append({"figure": f"soak: messages received ÷ sent, all components ({received} of {sent})",
                    "value": round(received / sent, 6) if sent else None, "target": "1",
                    "met": None if not sent else received == sent})
    totals = {key: sum(c.get(key, 0) for c in parts.values())
              for key in ("grads_lost", "drops", "spikes_skipped", "bad_messages", "steps")}
    for key, what in (("grads_lost", "gradients lost (their answer forgotten)"),
                      ("drops", "gradient-queue drops (oldest pushed out)"),
                      ("bad_messages", "malformed payloads dropped")):
        targets.append({"figure": f"soak: {what}, all components", "value": totals[key], "target": None, "met": None})
    every = max(1, round(60 / args.sample_seconds))   # the README's table: one row a minute
    return {"benchmark": "soak", "hardware": config.get("hardware"), "torch": config.get("torch"),
            "components": args.components, "minutes": args.minutes, "sample_seconds": args.sample_seconds,
            "settle_minutes": args.settle_minutes, "training_began_s": trained, "exit_code": code, "left_running": left,
            "totals": totals, "messages_sent": sent, "messages_received": received, "targets": targets,
            "rows": {"RSS (MiB) of each process, one sample a minute": samples[::every],
                     "growth after the settling time": memory,
                     "per component, from summary.json": [
                         {"component": name, "steps": c["steps"], "steps/s": c["steps_per_second"],
                          "sent": c["messages_sent"], "received": c["messages_received"],
                          "grads lost": c["grads_lost"], "queue drops": c["drops"],
                          "malformed dropped": c.get("bad_messages", 0)} for name, c in parts.items()]},
            "samples": samples}


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.settle_minutes >= args.minutes:
        parser.error(f"--settle-minutes {args.settle_minutes:g} is not below --minutes {args.minutes:g}: "
                     "growth is measured after the settling time")
    keep = args.out is not None
    out = Path(args.out) if keep else Path(tempfile.mkdtemp(prefix="soak-")) / "run"
    log_path = out.parent / f"{out.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        try:
            samples, pids, trained, code = soak(args, out, log)
        except KeyboardInterrupt:   # the run has been stopped; its folder says how far it got
            print(f"run folder {out}, launcher output {log_path}", flush=True)
            raise
    if not pids:   # it never started its processes: nothing measured, no figures written
        raise cli.RunFailed(f"the run did not start (exit code {code}); see {log_path}")
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    config = json.loads((out / "config.json").read_text()) if (out / "config.json").exists() else {}
    time.sleep(1)   # a component's os._exit after the launcher's last join: give /proc a moment
    left = [pid for name, pid in pids.items() if alive(pid)]
    result = figures(args, samples, pids, trained, code, summary, config, left)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    for t in result["targets"]:
        verdict = ("reported" if t["target"] is None else "not measured" if t["met"] is None
                   else "met" if t["met"] else "MISSED")
        print(f"  {t['figure']}: {t['value']} (target {t['target'] or '-'}) {verdict}")
    failed = code != 0 or summary is None or summary.get("status") != "completed"
    if failed or keep:
        print(f"run folder {out}, launcher output {log_path}")
    else:
        shutil.rmtree(out.parent, ignore_errors=True)
    print(f"figures in {args.json}")
    if failed:
        raise cli.RunFailed(f"the soak run ended with exit code {code}; see {log_path}")
    return result


if __name__ == "__main__":
    cli.run_script(main)
