"""Data path: our tensor-slicing loader against torchvision's DataLoader.

Measures, in one run on this machine:
  1. samples per second over one epoch of Fashion-MNIST's training split,
     through `common.data.Batches` (index slicing of one device tensor) and
     through torchvision's FashionMNIST + ToTensor + DataLoader(batch_size=128),
     and their ratio (target: at least 10x);
  2. the share of a single_mach.py training step spent getting the batch
     (target: under 5 %).

    python benchmarks/data_path.py [--threads N] [--samples N] [--json results/benchmarks/data_path.json]
"""
import gzip
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import cli  # noqa: E402
from common.data import Batches, load_data, locate  # noqa: E402
from common.run_folder import hardware  # noqa: E402


def torchvision_root(files):
    """torchvision accepts only uncompressed files under <root>/FashionMNIST/raw."""
    root = Path(tempfile.mkdtemp(prefix="fmnist-"))
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for stem, path in files.items():
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as src, open(raw / stem, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return root


def epoch_rate_dataloader(root, batch_size, samples):
    from torchvision import datasets, transforms
    dataset = datasets.FashionMNIST(root, train=True, transform=transforms.ToTensor())
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True)
    began, n = time.perf_counter(), 0
    for x, _ in loader:
        n += len(x)
        if n >= samples:
            break
    return n / (time.perf_counter() - began)


def epoch_rate_slicing(data, batch_size):
    batches = Batches(data.train_x, data.train_y, batch_size, seed=0)
    stream = iter(batches)
    steps = len(data.train_x) // batch_size
    began = time.perf_counter()
    for _ in range(steps):
        x, y = next(stream)
    return steps * batch_size / (time.perf_counter() - began)


def data_share_of_step(data, steps, batch_size):
    """Seconds in next(stream) / seconds of the whole single_mach step, over `steps`."""
    import single_mach
    model = single_mach.SingleMach(784, [512, 256], 128, 10, "tf")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
    stream = iter(Batches(data.train_x.flatten(1), data.train_y, batch_size, seed=0))
    for _ in range(20):  # warm-up
        single_mach.train_step(model, optimizer, *next(stream))
    in_data = 0.0
    began = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        x, y = next(stream)
        in_data += time.perf_counter() - t0
        single_mach.train_step(model, optimizer, x, y)
    total = time.perf_counter() - began
    return in_data / total, total / steps


def targets(result):
    """The goals, each with its measured value and whether it is met."""
    speedup, share = result["speedup"], result["data_share_of_step"]
    return [{"figure": "data path: slicing loader ÷ torchvision DataLoader, samples/s",
             "value": speedup, "target": f">= {result['speedup_target']}x",
             "met": speedup >= result["speedup_target"]},
            {"figure": "data path: share of a single_mach step spent getting its batch",
             "value": share, "target": f"< {result['data_share_target']}",
             "met": share < result["data_share_target"]}]


def main(argv=None):
    parser = cli.Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=cli.positive_int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--batch-size", type=cli.positive_int, default=128)
    parser.add_argument("--steps", type=cli.positive_int, default=300, help="single_mach steps to time")
    parser.add_argument("--samples", type=cli.positive_int, default=60_000,
                        help="samples to draw through the DataLoader (default: one epoch)")
    parser.add_argument("--json", default="results/benchmarks/data_path.json",
                        help="where to write the figures and their targets as JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    data = load_data("fashion-mnist", "./data", cpu)
    root = torchvision_root(locate("fashion-mnist", "./data"))
    try:
        baseline = epoch_rate_dataloader(root, args.batch_size, args.samples)
    finally:
        shutil.rmtree(root)
    ours = epoch_rate_slicing(data, args.batch_size)
    share, step_seconds = data_share_of_step(data, args.steps, args.batch_size)
    result = {"benchmark": "data_path", "hardware": hardware(cpu), "torch": torch.__version__,
              "batch_size": args.batch_size,
              "dataloader_samples_per_s": round(baseline), "slicing_samples_per_s": round(ours),
              "speedup": round(ours / baseline, 1), "speedup_target": 10,
              "data_share_of_step": round(share, 4), "data_share_target": 0.05,
              "single_mach_step_ms": round(step_seconds * 1e3, 3)}
    result["targets"] = targets(result)
    print(f"data path on {result['hardware']} (batch {args.batch_size})")
    print(f"  torchvision DataLoader + ToTensor: {baseline:12,.0f} samples/s")
    print(f"  tensor slicing (common.data):      {ours:12,.0f} samples/s")
    verdict = ["met" if goal["met"] else "MISSED" for goal in result["targets"]]
    print(f"  speedup: {ours / baseline:.1f}x (target >= 10x): {verdict[0]}")
    print(f"  data path share of a single_mach step ({step_seconds * 1e3:.2f} ms): "
          f"{share:.2%} (target < 5 %): {verdict[1]}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
