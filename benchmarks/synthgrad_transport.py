"""Benchmark for synthgrad_demo.py --task lumpy --async: what one message costs, and what decoupling costs.

1. Transport: one request/answer round trip of the array the input process
   sends the oracle (batch x 24 float32), between two processes on this
   machine, (a) through common.shm_channel.Channel (shared-memory tensors, slot
   numbers on torch.multiprocessing queues) and (b) as JSON over HTTP on
   127.0.0.1 (standard library http.server and urllib, as the reference did).
   Prints microseconds per round trip and the ratio HTTP / Channel.
2. Time to reach backprop's final test MSE, as a ratio to backprop's time,
   for synchronous DNI and for the three-process --async run (runs the
   script twice, same seed, and reads its summary.json).

    python benchmarks/synthgrad_transport.py

writes the numbers as JSON to --json (default results/benchmarks/synthgrad_transport.json).
"""
import http.server
import json
import os
import queue
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import torch
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from common import cli  # noqa: E402
from common.shm_channel import Channel  # noqa: E402
from synthgrad_demo import build_parser, validate  # noqa: E402


def channel_echo(ask, answer, stop):
    torch.set_num_threads(1)
    while not stop.is_set():
        try:
            (h,) = ask.receive(timeout=0.1)
        except queue.Empty:
            continue
        answer.send(h)


def channel_round_trips(shape, n):
    ctx = mp.get_context("fork")
    ask, answer, stop = Channel(ctx, 1, shape), Channel(ctx, 1, shape), ctx.Event()
    server = ctx.Process(target=channel_echo, args=(ask, answer, stop), daemon=True)
    server.start()
    h = torch.randn(*shape)
    try:
        for i in range(n + 50):   # the first 50 warm up
            if i == 50:
                began = time.perf_counter()
            ask.send(h)
            (back,) = answer.receive(timeout=10)
        assert torch.equal(back, h)
        return (time.perf_counter() - began) / n
    finally:
        stop.set()
        server.join(timeout=5)


class Echo(http.server.BaseHTTPRequestHandler):
    """The reference implementation's protocol in miniature: POST a JSON array, get one back."""

    def do_POST(self):
        array = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        body = json.dumps(array).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def http_serve(port_queue):
    server = http.server.HTTPServer(("127.0.0.1", 0), Echo)
    port_queue.put(server.server_address[1])
    server.serve_forever()


def http_round_trips(shape, n):
    ctx = mp.get_context("fork")
    ports = ctx.Queue(1)
    server = ctx.Process(target=http_serve, args=(ports,), daemon=True)
    server.start()
    url = f"http://127.0.0.1:{ports.get(timeout=10)}/"
    h = torch.randn(*shape)
    try:
        for i in range(n + 50):
            if i == 50:
                began = time.perf_counter()
            body = json.dumps(h.tolist()).encode()
            request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=10) as response:
                back = torch.tensor(json.loads(response.read()))
        assert torch.allclose(back, h)
        return (time.perf_counter() - began) / n
    finally:
        server.terminate()
        server.join(timeout=5)


def lumpy_ratios(seed, extra, runs_dir):
    """Run the script sync and --async; return their summaries (run folders kept in runs_dir)."""
    out = {}
    for name, flags in (("sync", []), ("async", ["--async"])):
        folder = str(Path(runs_dir) / f"synthgrad_{name}")
        command = [sys.executable, str(ROOT / "synthgrad_demo.py"), "--task", "lumpy", "--seed", str(seed),
                   "--out", folder, *flags, *extra]
        print("$", " ".join(command[1:]), flush=True)
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        print("\n".join(line for line in result.stdout.splitlines() if not line.startswith("iter")))
        if result.returncode != 0:
            raise SystemExit(f"synthgrad_demo.py failed:\n{result.stderr}")
        out[name] = json.loads((Path(folder) / "summary.json").read_text())
    return out


def targets(results):
    """The goal: three-process DNI reaches backprop's final test MSE within twice backprop's
    time (met None when the lumpy runs were skipped)."""
    ratio = results.get("time_ratio_to_backprop", {}).get("dni_async")
    return [{"figure": "lumpy: async DNI time to backprop's final MSE ÷ backprop's",
             "value": ratio, "target": "<= 2x", "met": None if ratio is None else ratio <= 2}]


def main(argv=None):
    parser = cli.Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=cli.positive_int, default=100, help="rows of the 24-wide array sent")
    parser.add_argument("--messages", type=cli.positive_int, default=2000, help="round trips timed per transport")
    parser.add_argument("--seed", type=int, default=0, help="seed of the two lumpy runs")
    parser.add_argument("--skip-training", action="store_true", help="only measure the transports")
    parser.add_argument("--json", "--out", dest="out", default="results/benchmarks/synthgrad_transport.json",
                        help="JSON file to write (the two lumpy run folders go beside it)")
    args, extra = parser.parse_known_args(argv)   # other flags go to synthgrad_demo.py
    for mode in ([], ["--async"]) if not args.skip_training else ():  # a bad one stops us before any work
        try:
            validate(build_parser().parse_args(["--task", "lumpy", *mode, *extra]))
        except cli.UserError as error:
            parser.error(f"synthgrad_demo.py flags: {error}")
    channel = channel_round_trips((args.batch_size, 24), args.messages)
    http = http_round_trips((args.batch_size, 24), max(200, args.messages // 4))
    from common.run_folder import hardware
    results = {"benchmark": "synthgrad_transport", "hardware": hardware(torch.device("cpu")),
               "array": [args.batch_size, 24], "channel_us_per_round_trip": round(channel * 1e6, 1),
               "json_http_us_per_round_trip": round(http * 1e6, 1),
               "http_over_channel": round(http / channel, 2), "cpu_threads": torch.get_num_threads(),
               "cpus": os.cpu_count(), "torch": torch.__version__}
    print(f"transport, one round trip of a {args.batch_size}x24 float32 array on this machine:\n"
          f"  Channel (shared memory + mp queues) {channel * 1e6:9.1f} us\n"
          f"  JSON over HTTP on 127.0.0.1          {http * 1e6:9.1f} us\n"
          f"  ratio HTTP / Channel                 {http / channel:9.1f}x", flush=True)
    if not args.skip_training:
        runs = lumpy_ratios(args.seed, extra, Path(args.out).parent)
        results["backprop_target_mse"] = runs["sync"]["test_mse"]["backprop"]
        results["time_ratio_to_backprop"] = {"dni_sync": runs["sync"]["time_ratio_to_backprop"]["dni"],
                                             "dni_async": runs["async"]["time_ratio_to_backprop"]["dni_async"]}
        results["seconds_to_target"] = {"backprop_sync_run": runs["sync"]["seconds_to_target"]["backprop"],
                                        "dni_sync": runs["sync"]["seconds_to_target"]["dni"],
                                        "backprop_async_run": runs["async"]["seconds_to_target"]["backprop"],
                                        "dni_async": runs["async"]["seconds_to_target"]["dni_async"]}
        results["final_test_mse"] = {**runs["sync"]["test_mse"], **runs["async"]["test_mse"]}
        print("time to backprop's final test MSE, as a ratio to backprop's time (None: not reached):")
        for name, ratio in results["time_ratio_to_backprop"].items():
            print(f"  {name:<10} {ratio}")
    results["targets"] = targets(results)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
