"""The MNIST family as device tensors, served as shuffled minibatches by slicing,
caches of what a frozen part of a model computes from them, and the lumpy
function of the numpy synthetic-gradient reference implementation.

Each split is read once into one normalised float tensor on the chosen
device; a training batch is `x[indices]`, with no per-sample DataLoader or
PIL in the loop. The shuffling order comes from a CPU generator seeded by
--seed, so the same seed gives the same batches on every device.

Where the files come from, in order:
  1. the four IDX files (gzipped or not) in <data-dir>, <data-dir>/raw,
     <data-dir>/<TorchvisionName>/raw, or Debian's /usr/share/datasets/<name>/
     (package dataset-fashion-mnist). These are read directly, without
     torchvision's md5 check, because Debian recompressed its copies;
  2. otherwise torchvision downloads them, into a temporary folder first; they
     are moved to <data-dir>/<TorchvisionName>/raw only once all four have
     arrived, so a failed download leaves nothing behind.
cli.setup calls locate() before anything else happens, prints the folder
the files are read from and records it in config.json (data_source).
"""
import contextlib
import gzip
import io
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from common.cli import UserError

TORCHVISION_NAME = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "kmnist": "KMNIST"}
DEBIAN_DIR = Path("/usr/share/datasets")
DEBIAN_PACKAGE = {"fashion-mnist": "dataset-fashion-mnist"}
SPLIT_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
NUM_CLASSES = 10


@dataclass
class Data:
    """Both splits on one device. Images are (N, 1, 28, 28), or (N, 784) if flat."""
    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int = NUM_CLASSES

    @property
    def input_size(self):
        return self.train_x[0].numel()


def search_dirs(name, data_dir):
    data_dir = Path(data_dir)
    return [data_dir, data_dir / "raw", data_dir / TORCHVISION_NAME[name] / "raw",
            DEBIAN_DIR / name]


def find_files(folder):
    """The four IDX paths in `folder` (plain or .gz), or None if any is missing."""
    found = {}
    for split, stems in SPLIT_FILES.items():
        for stem in stems:
            for candidate in (folder / stem, folder / f"{stem}.gz"):
                if candidate.is_file():
                    found[stem] = candidate
                    break
            else:
                return None
    return found


def read_idx(path, expected_ndim):
    """Read one IDX file of unsigned bytes (MNIST's format) into a uint8 tensor.

    Header: two zero bytes, type code 0x08 (ubyte), number of dimensions,
    then each dimension as a big-endian uint32; the data follows.
    """
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
        raise UserError(f"{path}: cannot read it ({error}); the file is truncated or "
                        "corrupt: delete it and fetch it again") from None
    header = 4 + 4 * expected_ndim
    if len(raw) < header or raw[:3] != b"\x00\x00\x08" or raw[3] != expected_ndim:
        raise UserError(f"{path}: not an IDX file of {expected_ndim}-D unsigned bytes; "
                        "the file is wrong or corrupt: delete it and fetch it again")
    shape = struct.unpack(f">{expected_ndim}I", raw[4:header])
    expected = 1
    for size in shape:
        expected *= size
    if len(raw) - header != expected:
        raise UserError(f"{path}: header promises {expected} bytes of data, file has "
                        f"{len(raw) - header}; it is truncated or corrupt: delete it "
                        "and fetch it again")
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(shape)


def torchvision_dataset(name):
    """torchvision's dataset class for `name`, imported only when a download is needed:
    `import torchvision` costs every process (and every spawned component) 1.4 s."""
    from torchvision import datasets
    return getattr(datasets, TORCHVISION_NAME[name])


def locate(name, data_dir):
    """The four IDX paths, found on disk or downloaded with torchvision; UserError if neither."""
    places = search_dirs(name, data_dir)
    for folder in places:
        files = find_files(folder)
        if files:
            return files
    target = places[2]  # <data-dir>/<TorchvisionName>/raw, where torchvision would put them
    with tempfile.TemporaryDirectory(prefix=f"{name}-download-") as temporary:
        try:  # torchvision prints a line per file and mirror it tries on stdout; not ours to show
            with contextlib.redirect_stdout(io.StringIO()):
                for train in (True, False):
                    torchvision_dataset(name)(root=temporary, train=train, download=True)
        except Exception as error:  # torchvision raises RuntimeError/URLError/OSError offline
            raise UserError(not_found(name, data_dir, places, error)) from None
        try:
            target.mkdir(parents=True, exist_ok=True)
            for file in (Path(temporary) / target.parent.name / "raw").iterdir():
                shutil.move(file, target / file.name)
        except OSError as error:
            raise UserError(f"dataset {name}: downloaded, but cannot put it in {target} "
                            f"({error.strerror}); pass a writable --data-dir") from None
    files = find_files(target)
    if not files:
        raise UserError(f"torchvision reported success but the files are not in {target}")
    return files


def not_found(name, data_dir, places, error):
    """One line: where we looked, why the download failed, and the fixes."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # torchvision: "Error downloading <file>:", then one "Tried <mirror>, got: <cause>" each
    reason = " ".join(dict.fromkeys([lines[0], lines[-1]])) if lines else type(error).__name__
    package = DEBIAN_PACKAGE.get(name)
    offline = (f"apt-get install {package} (found automatically)" if package else
               f"use --dataset fashion-mnist offline (no Debian package carries {name})")
    return (f"dataset {name} not found: its four IDX files (gzipped or not) are in none of "
            f"{', '.join(map(str, places))}, and the download failed ({reason}); fix: connect "
            f"to the internet (torchvision downloads it into {places[2]}), or copy the four "
            f"files into --data-dir {data_dir}, or {offline}")


def load_data(name, data_dir, device, flat=False):
    """Load both splits of `name` onto `device`, normalised with the train mean/std."""
    files = locate(name, data_dir)
    splits = {}
    for split, (images_stem, labels_stem) in SPLIT_FILES.items():
        images = read_idx(files[images_stem], 3)
        labels = read_idx(files[labels_stem], 1)
        if len(images) != len(labels):
            raise UserError(f"{files[labels_stem]}: {len(labels)} labels for "
                            f"{len(images)} images in {files[images_stem]}; one of them is "
                            "wrong: delete both and fetch them again")
        if labels.numel() and int(labels.max()) >= NUM_CLASSES:
            raise UserError(f"{files[labels_stem]}: label {int(labels.max())} is out of "
                            "range 0-9; the file is wrong: fetch it again")
        splits[split] = (images.float().div_(255), labels.long())
    mean, std = splits["train"][0].mean(), splits["train"][0].std()
    tensors = []
    for images, labels in splits.values():
        images = ((images - mean) / std).unsqueeze(1)
        if flat:
            images = images.flatten(1)
        tensors += [images.contiguous().to(device), labels.to(device)]
    return Data(name, *tensors)


class Batches:
    """Endless shuffled minibatches of (x, y), sliced from device tensors.

    Each epoch is a fresh permutation drawn from a CPU generator seeded with
    `seed` (device-independent); the last incomplete batch of an epoch is
    dropped so every step sees `batch_size` examples. `epoch` counts the
    fraction of epochs served so far.
    """

    def __init__(self, x, y, batch_size, seed):
        if batch_size > len(x):
            raise UserError(f"--batch-size {batch_size} is larger than the training set "
                            f"({len(x)} examples); use a smaller batch")
        self.x, self.y, self.batch_size = x, y, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.served = 0

    @property
    def epoch(self):
        return self.served / len(self.x)

    def __iter__(self):
        n, size = len(self.x), self.batch_size
        while True:
            order = torch.randperm(n, generator=self.generator).to(self.x.device)
            for start in range(0, n - size + 1, size):
                index = order[start:start + size]
                self.served += size
                yield self.x[index], self.y[index]


class MemoryBudget:
    """Bytes that several caches may hold together; each takes its share when made."""

    def __init__(self, limit_bytes):
        self.limit, self.used = limit_bytes, 0

    def take(self, nbytes):
        """Reserve `nbytes` if they fit in what is left (True), else reserve nothing (False)."""
        if self.used + nbytes > self.limit:
            return False
        self.used += nbytes
        return True


class LazyCache:
    """fn(index) for the training examples `index`, computed the first time an example
    is drawn and kept, when the whole table (n rows) fits in what is left of `budget`;
    otherwise fn is called every time. For a function that never changes, such as a
    frozen block: later epochs then skip it."""

    def __init__(self, fn, n, budget, device):
        self.fn, self.store = fn, None
        with torch.no_grad():
            row = fn(torch.zeros(1, dtype=torch.long, device=device))
        if budget.take(n * (row[0].numel() * row.element_size() + 1)):  # + 1: the filled flag
            self.store = torch.empty(n, *row.shape[1:], dtype=row.dtype, device=device)
            self.filled = torch.zeros(n, dtype=torch.bool, device=device)

    @torch.no_grad()
    def __call__(self, index):
        if self.store is None:
            return self.fn(index)
        missing = index[~self.filled[index]]
        if len(missing):
            self.store[missing] = self.fn(missing)
            self.filled[missing] = True
        return self.store[index]


def lumpy_function(points):
    """The numpy "synthetic-gradient" reference implementation's target, f: [-1, 1]^2 -> R,
    for points (N, 2) -> (N, 1). With r = |(x, y)|, theta = atan2(y, x), k = 0.3 (sin theta + 1):

        f = k sin(4 r^2 - r / 4) + (1 - k) / 2 (sin 2 theta sin theta + cos 6 (theta + 0.1))
    """
    x, y = points[:, 0], points[:, 1]
    r, theta = torch.sqrt(x ** 2 + y ** 2), torch.atan2(y, x)
    a, b = torch.sin(4 * r ** 2 - 0.25 * r), torch.sin(2 * theta) * torch.sin(theta)
    c = torch.cos(6 * (theta + 0.1))
    k = 0.3 * (torch.sin(theta) + 1)
    return (k * a + (1 - k) / 2 * b + (1 - k) / 2 * c).unsqueeze(1)


def lumpy_data(seed, n_train=200_000, n_test=20_000):
    """(train_x, train_y, test_x, test_y): points drawn uniformly from [-1, 1]^2 (a CPU generator
    seeded with `seed`) and lumpy_function of them."""
    generator = torch.Generator().manual_seed(seed)
    train_x = torch.rand(n_train, 2, generator=generator) * 2 - 1
    test_x = torch.rand(n_test, 2, generator=generator) * 2 - 1
    return train_x, lumpy_function(train_x), test_x, lumpy_function(test_x)
