"""Shared test helpers: tiny IDX datasets written on the spot, and running a
script as a subprocess the way a user would."""
import gzip
import json
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
IMAGE_FILES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
LABEL_FILES = {"train": "train-labels-idx1-ubyte", "test": "t10k-labels-idx1-ubyte"}


def idx_bytes(array):
    """The IDX encoding of a uint8 array: 0, 0, 0x08, ndim, big-endian dims, data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx(path, array, gz=False):
    path = Path(str(path) + ".gz") if gz else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_tiny_dataset(folder, n_train=600, n_test=200, gz=False, seed=0):
    """Four IDX files of a learnable 10-class toy problem in `folder`.

    Each class is a fixed random 28x28 template; an example is its class's
    template plus noise, so a small network beats chance within a few
    dozen steps.
    """
    rng = np.random.default_rng(seed)
    templates = rng.uniform(0, 255, size=(10, 28, 28))
    for split, n in (("train", n_train), ("test", n_test)):
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        images = templates[labels] * 0.6 + rng.uniform(0, 255 * 0.4, size=(n, 28, 28))
        write_idx(Path(folder) / IMAGE_FILES[split], images.astype(np.uint8), gz)
        write_idx(Path(folder) / LABEL_FILES[split], labels.astype(np.uint8), gz)
    return Path(folder)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A folder holding a tiny dataset, to pass as --data-dir (with --dataset mnist)."""
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny"))


def run_script(script, *args, timeout=180, threads=1):
    """Run `python <script> args...` from the repository root; returns CompletedProcess."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(threads))
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def ctrl_c_reaches_child():
    """Popen preexec_fn for the Ctrl-C tests: a shell that starts pytest in the background
    makes it, and every child, ignore SIGINT; the child gets the default handler back."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def read_run(folder):
    """(config, summary, metrics rows) of a run folder."""
    import csv
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    summary = json.loads((folder / "summary.json").read_text())
    with open(folder / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return config, summary, rows


needs_fashion = pytest.mark.skipif(
    not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST from Debian is not installed (apt-get install dataset-fashion-mnist); "
           "CI installs it")


def grads(module):
    return [p.grad for p in module.parameters()]


def member_grads(module, i):
    """Slice i (component i) of every gradient of a module built from StackedMLPs."""
    return [None if p.grad is None else p.grad[i] for p in module.parameters()]


def member_as_mlp(stacked, i):
    """MLP i of a StackedMLP copied into a plain common.models.mlp: the trusted reference."""
    from common.models import mlp
    first = [w[i] for w in (stacked.first_shared, stacked.first_own) if w is not None]
    weights = [torch.cat(first, 1)] + [w[i] for w in stacked.weights]   # concat(x, z) columns
    net = mlp([weights[0].shape[1]] + [w.shape[0] for w in weights],
              activate_output=stacked.activate_output)
    with torch.no_grad():
        for linear, weight, bias in zip(net[::2], weights, stacked.biases):
            linear.weight.copy_(weight)
            linear.bias.copy_(bias[i, :, 0])
    return net


def untouched(gradients):
    """No gradient, or an exactly zero one (indexing a stacked loss sends zeros to the others)."""
    return all(g is None or not g.any() for g in gradients)


def curve_lines(stdout):
    """The printed curve lines, each rejoined from its indented continuation lines, all at
    most 120 characters (common.run_folder.wrap)."""
    lines = []
    for line in stdout.splitlines():
        if line.startswith("iter"):
            lines.append(line)
        elif lines and line.startswith(" " * 12) and line.strip() and lines[-1] is not None:
            lines[-1] += " " + line.strip()
        else:
            lines.append(None)
        assert len(line) <= 120, line
    return [line for line in lines if line is not None]


def assert_stacked_is_one_by_one(model, n, x, y):
    """A StackedMLP model's losses (all n components at once, what training uses) against
    its plain loop over components: the same values and the same gradient on every trained
    parameter, loss by loss (stop-gradients and targets, not just the total)."""
    def gradients(loss):
        return torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad],
                                   retain_graph=True, materialize_grads=True)
    stacked, plain = model.losses(x, y), model.losses_one_by_one(x, y)
    for fast, slow in zip(stacked, plain, strict=True):   # the cross-entropies, then the distillations
        torch.testing.assert_close(fast, slow)
        for i in range(n):
            for g_fast, g_slow in zip(gradients(fast[i]), gradients(slow[i]), strict=True):
                torch.testing.assert_close(g_fast, g_slow)
    assert any(g.any() for g in gradients(plain[1][-1]))   # the check is not vacuous
