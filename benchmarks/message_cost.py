"""Message cost: one round trip of a 128 x 128 float32 tensor between two
processes on this machine, through each transport the scripts use, against
the JSON-over-HTTP protocol of the synthetic-gradient seed.

    gloo     torch.distributed point-to-point (send/recv), the transport of
             async_mach.py --backend process/torchrun; store on 127.0.0.1
    channel  shared-memory tensors + torch.multiprocessing queues, the
             transport of synthgrad_demo.py --task lumpy --async
    http     JSON over HTTP on 127.0.0.1 (http.server + urllib), as the seed

A round trip: send the tensor, the other process sends it back unchanged.
Each transport is timed over --messages round trips after 50 of warm-up;
the ratio is HTTP's time over ours.

    python benchmarks/message_cost.py [--messages 2000] [--size 128]
"""
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.synthgrad_transport import channel_round_trips, http_round_trips  # noqa: E402
from common import cli  # noqa: E402
from common.run_folder import hardware  # noqa: E402
from common.rendezvous import free_port  # noqa: E402

WARMUP = 50


def gloo_peer(rank, port, shape, n, seconds):
    """Rank 0 times n round trips; rank 1 echoes. Rank 0 puts its seconds per trip in `seconds`."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    tensor = torch.randn(*shape) if rank == 0 else torch.empty(*shape)
    back = torch.empty(*shape)
    for i in range(n + WARMUP):
        if rank == 0:
            if i == WARMUP:
                began = time.perf_counter()
            dist.send(tensor, 1)
            dist.recv(back, 1)
        else:
            dist.recv(tensor, 0)
            dist.send(tensor, 0)
    if rank == 0:
        assert torch.equal(back, tensor)
        seconds.put((time.perf_counter() - began) / n)
    dist.destroy_process_group()


def gloo_round_trips(shape, n):
    context = mp.get_context("spawn")
    seconds = context.Queue(1)
    port = free_port()
    peers = [context.Process(target=gloo_peer, args=(rank, port, shape, n, seconds))
             for rank in (0, 1)]
    for p in peers:
        p.start()
    try:
        return seconds.get(timeout=120)
    finally:
        for p in peers:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()


def targets(result):
    """The ratios, reported without a target (what HTTP costs is the seed's, not ours)."""
    us = result["us_per_round_trip"]
    return [{"figure": f"message cost, {result['tensor'][0]}x{result['tensor'][1]} float32 round trip: "
                       f"JSON over HTTP ÷ {label} ({us['http']} µs vs {us[name]} µs)",
             "value": result[f"http_over_{name}"], "target": None, "met": None}
            for name, label in (("gloo", "gloo send/recv"), ("channel", "shared-memory channel"))]


def main(argv=None):
    parser = cli.Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=cli.positive_int, default=128, help="the tensor is size x size float32")
    parser.add_argument("--messages", type=cli.positive_int, default=2000, help="round trips timed per transport")
    parser.add_argument("--json", default="results/benchmarks/message_cost.json",
                        help="where to write the figures as JSON")
    args = parser.parse_args(argv)
    shape = (args.size, args.size)
    http_n = max(50, args.messages // 10)   # HTTP is slow: fewer trips give the same precision
    us = {"gloo": gloo_round_trips(shape, args.messages) * 1e6,
          "channel": channel_round_trips(shape, args.messages) * 1e6,
          "http": http_round_trips(shape, http_n) * 1e6}
    result = {"benchmark": "message_cost", "hardware": hardware(torch.device("cpu")), "torch": torch.__version__,
              "tensor": list(shape), "messages": args.messages, "http_messages": http_n,
              "us_per_round_trip": {k: round(v, 1) for k, v in us.items()},
              "http_over_gloo": round(us["http"] / us["gloo"], 1),
              "http_over_channel": round(us["http"] / us["channel"], 1)}
    result["targets"] = targets(result)
    print(f"message cost, one round trip of a {args.size}x{args.size} float32 tensor "
          f"between two processes ({os.cpu_count()} CPUs):")
    for name, label in (("gloo", "torch.distributed gloo send/recv"),
                        ("channel", "shared memory + mp queues"),
                        ("http", "JSON over HTTP, 127.0.0.1")):
        print(f"  {name:<8} {label:<34} {us[name]:10.1f} us")
    print(f"  HTTP / gloo {result['http_over_gloo']}x, HTTP / channel {result['http_over_channel']}x")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
