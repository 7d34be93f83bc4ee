"""async_mach across two real network stacks: two Linux network namespaces joined by a veth
pair, each with its own address and no shared loopback, running the README's two-host
torchrun commands. Needs root and iproute2 (CI runs as root); skipped elsewhere."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, read_run

NS_A, NS_B = f"mach_a{os.getpid()}", f"mach_b{os.getpid()}"
ADDR_A, ADDR_B = "10.203.77.1", "10.203.77.2"   # private; they exist only inside the two namespaces


def ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def two_hosts():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to make network namespaces")
    try:
        ip("netns", "add", NS_A)
        ip("netns", "add", NS_B)
        ip("link", "add", f"{NS_A}v", "type", "veth", "peer", "name", f"{NS_B}v")
        for ns, address in ((NS_A, ADDR_A), (NS_B, ADDR_B)):
            ip("link", "set", f"{ns}v", "netns", ns)
            ip("-n", ns, "addr", "add", f"{address}/24", "dev", f"{ns}v")
            ip("-n", ns, "link", "set", f"{ns}v", "up")
            ip("-n", ns, "link", "set", "lo", "up")
        yield
    except subprocess.CalledProcessError as error:
        pytest.skip(f"cannot make network namespaces here: {error.stderr.decode().strip()}")
    finally:   # however the test ends: every process left in them, then the namespaces (and the veth pair)
        for ns in (NS_A, NS_B):
            kill_everything_in(ns)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def kill_everything_in(ns):
    """SIGKILL every process in namespace `ns`: torchrun starts its workers in sessions of their own."""
    for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def run_together(commands, outputs, timeout):
    """Start every command (each in its own session), wait for all; each one's output goes to
    `outputs`. Returns their exit codes; whatever is still running at the end is killed."""
    procs = [subprocess.Popen(command, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, start_new_session=True) for command, env in commands]
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=timeout)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return [proc.returncode for proc in procs]


def test_the_readme_two_host_commands_train_on_both_hosts_as_fast_as_on_one(two_hosts, tiny_data, tmp_path):
    """The README's two-host commands, one thread per rank, for 8 s; then the same two components
    under torchrun on one host (same flags, one after the other: they share the same cores). Each
    component steps at least half as fast across the link as on one host, and both learn."""
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    flags = ["async_mach.py", "--backend", "torchrun", "--components", "2", "--dataset", "mnist",
             "--data-dir", str(tiny_data), "--seconds", "8", "--eval-every", "100", "--threads", "1"]
    env = {k: v for k, v in os.environ.items() if k != "GLOO_SOCKET_IFNAME"}   # nothing set by hand
    nodes = ["--nnodes", "2", "--nproc-per-node", "1", "--master-addr", ADDR_A, "--master-port", "29533"]
    outputs = []
    codes = run_together([(["ip", "netns", "exec", ns, torchrun, "--node-rank", str(rank), *nodes, *flags,
                             "--out", str(tmp_path / ns)], env) for rank, ns in enumerate((NS_A, NS_B))],
                         outputs, timeout=120)
    assert codes == [0, 0], outputs
    codes = run_together([([torchrun, "--standalone", "--nproc-per-node", "2", *flags,
                            "--out", str(tmp_path / "one_host")], env)], outputs, timeout=120)
    assert codes == [0], outputs[-1]
    two, one = read_run(tmp_path / NS_A)[1], read_run(tmp_path / "one_host")[1]   # rank 0 writes the run
    rates = {}
    for name in ("component_0", "component_1"):
        rates[name] = (two["components"][name]["steps_per_second"], one["components"][name]["steps_per_second"])
    print("steps/s, two hosts against one:", rates)
    for summary in (two, one):
        assert summary["status"] == "completed" and set(summary["test_accuracy"]) == set(rates)
        assert min(summary["test_accuracy"].values()) > 0.5, summary["test_accuracy"]   # chance: 0.1
    assert all(across >= 0.5 * alone for across, alone in rates.values()), rates


def test_a_host_whose_network_goes_away_ends_the_run_on_both_hosts(two_hosts, tiny_data, tmp_path):
    """Host B's link goes down mid-run: each side hears nothing from the other (nor B from the
    store on A's host) for --peer-timeout, names the silent component in one line, and every
    process on both hosts ends."""
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    common = ["--nnodes", "2", "--nproc-per-node", "1", "--master-addr", ADDR_A, "--master-port", "29534",
              "async_mach.py", "--backend", "torchrun", "--components", "2", "--dataset", "mnist",
              "--data-dir", str(tiny_data), "--seconds", "120", "--peer-timeout", "4", "--threads", "1",
              "--log-seconds", "1"]
    hosts = [subprocess.Popen(["ip", "netns", "exec", ns, torchrun, "--node-rank", str(rank), *common,
                               "--out", str(tmp_path / ns)], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
             for rank, ns in enumerate((NS_A, NS_B))]
    outputs, ended = [], []
    try:
        deadline = time.time() + 60
        while not (tmp_path / NS_A / "metrics.csv").exists():   # both components are training
            assert time.time() < deadline and all(h.poll() is None for h in hosts)
            time.sleep(0.2)
        ip("-n", NS_B, "link", "set", f"{NS_B}v", "down")
        cut = time.time()
        for host, ns in zip(hosts, (NS_A, NS_B)):
            try:
                outputs.append(host.communicate(timeout=60)[0])
            except subprocess.TimeoutExpired:   # what it said before it hung is the clue
                kill_everything_in(ns)
                pytest.fail(f"{ns} still running 60 s after the cut; it printed:\n{host.communicate(timeout=10)[0]}")
            ended.append(time.time() - cut)
    finally:
        for host in hosts:
            if host.poll() is None:
                os.killpg(host.pid, signal.SIGKILL)
                host.wait()
    print("seconds from the cut to each host's end:", [round(t, 1) for t in ended])
    assert all(host.returncode != 0 for host in hosts), outputs
    assert max(ended) < 4 + 10, outputs   # --peer-timeout plus a few seconds
    for host, other in enumerate((1, 0)):   # one line on each host, naming the other side
        line = next(l for l in outputs[host].splitlines() if l.startswith("async_mach.py: failed:"))
        assert any(f"component_{other}{says}" in line for says in (" unreachable", " sent nothing", "'s host")), line
    summary = json.loads((tmp_path / NS_A / "summary.json").read_text())
    assert summary["status"] == "failed" and "component_1" in summary["error"]
    for ns in (NS_A, NS_B):   # nothing left running on either host
        assert not subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
