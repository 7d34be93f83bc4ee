"""The loader: every supported layout, gzipped or not, and the clear errors."""
import gzip
import urllib.error
from pathlib import Path

import pytest
import torch

from common import data as data_module
from common.cli import UserError
from common.data import Batches, load_data
from conftest import IMAGE_FILES, make_tiny_dataset


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("layout", ["", "raw", "MNIST/raw"])
def test_finds_files_in_each_layout(tmp_path, layout, gz):
    make_tiny_dataset(tmp_path / layout, n_train=50, n_test=20, gz=gz)
    data = load_data("mnist", tmp_path, torch.device("cpu"))
    assert data.train_x.shape == (50, 1, 28, 28) and data.test_x.shape == (20, 1, 28, 28)
    assert data.train_y.dtype == torch.long and int(data.train_y.max()) <= 9
    # normalised with the training split's statistics
    assert abs(data.train_x.mean().item()) < 1e-4 and abs(data.train_x.std().item() - 1) < 1e-3


def test_finds_debian_folder(tmp_path, monkeypatch):
    make_tiny_dataset(tmp_path / "debian" / "fashion-mnist", n_train=30, n_test=10, gz=True)
    monkeypatch.setattr(data_module, "DEBIAN_DIR", tmp_path / "debian")
    data = load_data("fashion-mnist", tmp_path / "empty", torch.device("cpu"), flat=True)
    assert data.train_x.shape == (30, 784) and data.input_size == 784


def test_pixels_and_labels_survive_the_round_trip(tmp_path):
    make_tiny_dataset(tmp_path, n_train=40, n_test=10, gz=True)
    raw = data_module.read_idx(tmp_path / (IMAGE_FILES["train"] + ".gz"), 3)
    data = load_data("mnist", tmp_path, torch.device("cpu"))
    expected = (raw.float() / 255 - (raw.float() / 255).mean()) / (raw.float() / 255).std()
    torch.testing.assert_close(data.train_x.squeeze(1), expected)


def offline(monkeypatch):
    """Make torchvision's download fail as it does without a network."""
    def refuse(self, *args, **kwargs):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(data_module, "torchvision_dataset",
                        lambda name: type(data_module.TORCHVISION_NAME[name], (), {"__init__": refuse}))


def test_missing_data_lists_places_and_fixes(tmp_path, monkeypatch):
    offline(monkeypatch)
    monkeypatch.setattr(data_module, "DEBIAN_DIR", tmp_path / "nowhere")
    with pytest.raises(UserError) as error:
        load_data("fashion-mnist", tmp_path / "d", torch.device("cpu"))
    message = str(error.value)
    for place in (tmp_path / "d", tmp_path / "d" / "raw", tmp_path / "d" / "FashionMNIST" / "raw",
                  tmp_path / "nowhere" / "fashion-mnist"):
        assert str(place) in message
    assert "internet" in message and "--data-dir" in message and "apt-get install dataset-fashion-mnist" in message


def test_truncated_file_is_named(tmp_path):
    make_tiny_dataset(tmp_path, n_train=30, n_test=10)
    path = tmp_path / IMAGE_FILES["train"]
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UserError, match="truncated") as error:
        load_data("mnist", tmp_path, torch.device("cpu"))
    assert str(path) in str(error.value)


def test_broken_gzip_is_named(tmp_path):
    make_tiny_dataset(tmp_path, n_train=30, n_test=10, gz=True)
    path = tmp_path / (IMAGE_FILES["test"] + ".gz")
    path.write_bytes(gzip.compress(b"x" * 1000)[:40])  # cut in the middle of the stream
    with pytest.raises(UserError) as error:
        load_data("mnist", tmp_path, torch.device("cpu"))
    assert str(path) in str(error.value)


def test_wrong_file_is_named(tmp_path):
    make_tiny_dataset(tmp_path, n_train=30, n_test=10)
    path = tmp_path / IMAGE_FILES["train"]
    path.write_bytes(b"<html>not found</html>")
    with pytest.raises(UserError, match="not an IDX file") as error:
        load_data("mnist", tmp_path, torch.device("cpu"))
    assert str(path) in str(error.value)


def test_batches_are_seeded_and_cover_each_epoch():
    x = torch.arange(100).float().unsqueeze(1)
    y = torch.arange(100)
    first = [b[1] for _, b in zip(range(10), Batches(x, y, 10, seed=3))]
    again = [b[1] for _, b in zip(range(10), Batches(x, y, 10, seed=3))]
    other = [b[1] for _, b in zip(range(10), Batches(x, y, 10, seed=4))]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    assert sorted(torch.cat(first).tolist()) == list(range(100))  # one epoch = a permutation
    batches = Batches(x, y, 30, seed=0)
    stream = iter(batches)
    sizes = [len(next(stream)[0]) for _ in range(4)]
    assert sizes == [30] * 4 and batches.epoch == 1.2  # the last partial batch is dropped


def test_batch_order_does_not_depend_on_the_device(monkeypatch):
    """The permutation is drawn on the CPU whatever the data's device."""
    calls = []
    real = torch.randperm

    def spy(n, generator=None, **kwargs):
        calls.append((generator.device, kwargs.get("device")))
        return real(n, generator=generator, **kwargs)

    monkeypatch.setattr(torch, "randperm", spy)
    next(iter(Batches(torch.zeros(20, 1), torch.zeros(20), 5, seed=0)))
    assert calls == [(torch.device("cpu"), None)]


def test_batch_larger_than_data_is_a_user_error():
    with pytest.raises(UserError, match="--batch-size 50"):
        Batches(torch.zeros(20, 1), torch.zeros(20), 50, seed=0)


def torchvision_that(monkeypatch, fail):
    """MNIST's torchvision class replaced: it writes the tiny files into <root>/MNIST/raw, as
    a download does, or writes one and then fails as torchvision does offline. Returns the roots."""
    roots = []

    def download(self, root, train=True, download=False):
        roots.append(root)
        raw = Path(root) / "MNIST" / "raw"
        if fail:
            raw.mkdir(parents=True, exist_ok=True)
            (raw / "train-images-idx3-ubyte.gz").write_bytes(b"partial")
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://m/, got:\n"
                               "<urlopen error [Errno 111] Connection refused>\n")
        make_tiny_dataset(raw, n_train=30, n_test=10, gz=True)
    monkeypatch.setattr(data_module, "torchvision_dataset", lambda name: type("MNIST", (), {"__init__": download}))
    return roots


def test_a_download_lands_in_data_dir_only_once_complete(tmp_path, monkeypatch):
    roots = torchvision_that(monkeypatch, fail=False)
    files = data_module.locate("mnist", tmp_path / "data")
    assert {p.parent for p in files.values()} == {tmp_path / "data" / "MNIST" / "raw"}
    assert all(tmp_path not in Path(root).parents for root in roots)  # downloaded elsewhere
    assert not any(Path(root).exists() for root in roots)             # and cleaned up
    assert load_data("mnist", tmp_path / "data", torch.device("cpu")).train_x.shape[0] == 30


def test_a_failed_download_leaves_nothing_and_says_why_in_one_line(tmp_path, monkeypatch):
    roots = torchvision_that(monkeypatch, fail=True)
    with pytest.raises(UserError) as error:
        data_module.locate("mnist", tmp_path / "data")
    message = str(error.value)
    assert "\n" not in message and "one of the folders above" not in message
    assert "Error downloading train-images-idx3-ubyte.gz: <urlopen error [Errno 111] Connection refused>" in message
    assert f"copy the four files into --data-dir {tmp_path / 'data'}" in message
    assert not (tmp_path / "data").exists()
    assert not any(Path(root).exists() for root in roots)
