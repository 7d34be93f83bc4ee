"""The endings the README promises, tried from the shell as a user would: bad input is
one line on stderr, exit 2, and nothing written anywhere; a bad flag is refused
before torch is imported; the data read is named; SIGTERM says who sent it."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from common import cli
from conftest import ROOT, read_run

SCRIPTS = ("single_mach.py", "sequential_mach.py", "kgraph_mach.py", "async_mach.py",
           "synthgrad_demo.py", "layerwise_demo.py")
NO_TORCH_YET = SCRIPTS   # every script checks its flags before it imports torch


def shell(script, *args, cwd, env=None, timeout=120):
    """`python <script> args...` from `cwd`, one thread, extra environment `env`."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def no_torch(tmp_path):
    """An environment in which `import torch` raises: a flag refused under it never imported torch."""
    shim = tmp_path / "shim" / "torch"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('torch was imported')\n")
    return {"PYTHONPATH": str(shim.parent)}


@pytest.fixture
def offline(tmp_path):
    """A proxy on a closed local port: torchvision's download fails at once, online or not.
    TMPDIR points at an empty folder, to see that the failed download leaves nothing there."""
    (tmp_path / "tmp").mkdir()
    env = {v: "http://127.0.0.1:9" for v in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")}
    return dict(env, no_proxy="", NO_PROXY="", TMPDIR=str(tmp_path / "tmp"))


def one_error_line(result, script):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{script}: error: "), result.stderr
    return lines[0]


def test_the_shim_really_stops_torch(tmp_path, no_torch):
    result = subprocess.run([sys.executable, "-c", "import torch"], env=dict(os.environ, **no_torch),
                            capture_output=True, text=True)
    assert result.returncode == 1 and "torch was imported" in result.stderr
    result = subprocess.run([sys.executable, "-c", "import common.cli"], cwd=ROOT,
                            env=dict(os.environ, **no_torch), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr   # the flags' module needs no torch


# -- bad --out ------------------------------------------------------------------------

@pytest.mark.parametrize("script", SCRIPTS)
def test_out_where_nothing_can_be_written(script, tmp_path):
    """root may write everywhere by os.access, yet not in /proc."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    line = one_error_line(shell(script, "--out", "/proc/forbidden/run", cwd=cwd), script)
    assert "--out /proc/forbidden/run: cannot write there" in line and "choose a writable folder" in line
    assert not os.path.exists("/proc/forbidden") and not any(cwd.iterdir())


def test_check_writable_leaves_nothing(tmp_path):
    cli.check_writable(tmp_path / "a" / "b")
    cli.check_writable(tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("script", NO_TORCH_YET)
def test_bad_out_is_refused_before_torch(script, tmp_path, no_torch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    line = one_error_line(shell(script, "--out", blocker / "run", cwd=tmp_path, env=no_torch), script)
    assert f"{blocker} is a file, not a folder" in line


# -- missing data ---------------------------------------------------------------------

@pytest.mark.parametrize("script,extra", [
    ("single_mach.py", ()),
    ("async_mach.py", ("--backend", "thread")),
    ("async_mach.py", ("--backend", "process")),
    ("async_mach.py", ("--backend", "virtual")),
], ids=["single_mach", "async-thread", "async-process", "async-virtual"])
def test_missing_data_is_one_line_and_creates_nothing(script, extra, tmp_path, offline):
    data_dir, cwd = tmp_path / "empty", tmp_path / "cwd"
    data_dir.mkdir()
    cwd.mkdir()
    result = shell(script, "--dataset", "mnist", "--data-dir", data_dir, "--out", tmp_path / "run",
                   *extra, cwd=cwd, env=offline)
    line = one_error_line(result, script)
    assert "dataset mnist not found" in line and str(data_dir / "MNIST" / "raw") in line
    assert "download failed" in line and f"copy the four files into --data-dir {data_dir}" in line
    assert "one of the folders above" not in line
    assert result.stdout == ""   # not even a component's line: nothing was started
    for folder in (data_dir, cwd):
        assert not any(folder.iterdir()), list(folder.iterdir())
    # the temporary download folder is gone too (torch itself keeps torchinductor_<user> there)
    assert not list((tmp_path / "tmp").glob("*download*"))
    assert not (tmp_path / "run").exists()


# -- --data-dir ------------------------------------------------------------------------

@pytest.mark.parametrize("script", NO_TORCH_YET)
def test_a_data_dir_that_does_not_exist_is_refused_before_torch(script, tmp_path, no_torch):
    missing = tmp_path / "nope"
    line = one_error_line(shell(script, "--dataset", "fashion-mnist", "--data-dir", missing,
                                "--out", tmp_path / "run", cwd=tmp_path, env=no_torch), script)
    assert f"--data-dir {missing} is not a folder" in line and "leave --data-dir out" in line
    assert not missing.exists() and not (tmp_path / "run").exists()


def test_async_refuses_a_data_dir_that_does_not_exist(tmp_path):
    missing = tmp_path / "nope"
    line = one_error_line(shell("async_mach.py", "--dataset", "fashion-mnist", "--data-dir", missing,
                                "--backend", "process", "--out", tmp_path / "run", cwd=tmp_path),
                          "async_mach.py")
    assert f"--data-dir {missing} is not a folder" in line
    assert not missing.exists() and not (tmp_path / "run").exists()


def test_the_default_data_dir_may_be_missing(tmp_path, monkeypatch):
    """./data is where downloads go: its absence is no error (the system copy may be found)."""
    monkeypatch.chdir(tmp_path)
    parser = cli.make_parser("doc", iterations=1, batch_size=1, lr=1, eval_every=1)
    cli.check_data_dir(parser, parser.parse_args([]))
    with pytest.raises(cli.UserError, match="is not a folder"):
        cli.check_data_dir(parser, parser.parse_args(["--data-dir", "elsewhere"]))


def test_the_folder_read_is_printed_and_recorded(tiny_data, tmp_path):
    out = tmp_path / "run"
    result = shell("single_mach.py", "--data-dir", tiny_data, "--iterations", 4, "--eval-every", 2,
                   "--out", out, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"data: mnist from {tiny_data}"
    config, _, _ = read_run(out)
    assert config["data_source"] == str(tiny_data) and config["data_dir"] == str(tiny_data)


# -- flags before torch ------------------------------------------------------------------

@pytest.mark.parametrize("script", NO_TORCH_YET)
def test_a_bad_flag_is_refused_before_torch(script, tmp_path, no_torch):
    line = one_error_line(shell(script, "--seed", "-1", cwd=tmp_path, env=no_torch), script)
    assert line.endswith("argument --seed: expected an integer >= 0, got -1")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("script,flags,message", [
    ("synthgrad_demo.py", ("--task", "mnist", "--async"), "--async: only the lumpy task"),
    ("layerwise_demo.py", ("--model", "resnet"), "argument --model: invalid choice: 'resnet'"),
    ("kgraph_mach.py", ("--k", "1"), "a graph needs at least 2 components"),
    ("single_mach.py", ("--init", "xavier"), "argument --init: invalid choice: 'xavier'"),
    ("async_mach.py", ("--backend", "virtual", "--machine", "1", "2"), "give three prices"),
    ("async_mach.py", ("--speeds", "1"), "--speeds is for the simulated machines"),
])
def test_script_checks_before_torch(script, flags, message, tmp_path, no_torch):
    assert message in one_error_line(shell(script, *flags, cwd=tmp_path, env=no_torch), script)


def test_choices_named_without_torch_match_the_models():
    """--init and --model list their choices by name, so that the flags need no torch."""
    import layerwise_demo
    from common import layerwise_models, models
    assert set(cli.INITS) == set(models.INITS)
    model = next(a for a in layerwise_demo.build_parser()._actions if a.dest == "model")
    assert set(model.choices) == set(layerwise_models.BLOCK_MODELS)


# -- SIGTERM ------------------------------------------------------------------------------

def test_sigterm_from_outside_says_so_and_keeps_what_was_measured(tiny_data, tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "single_mach.py"), "--data-dir", str(tiny_data),
         "--iterations", "1000000", "--eval-every", "20", "--threads", "1", "--out", str(out)],
        cwd=ROOT, env={k: v for k, v in os.environ.items() if k != "TORCHELASTIC_RUN_ID"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (out / "metrics.csv").exists():
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)   # what `timeout` sends
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 1 and stderr.strip().splitlines() == [
        "single_mach.py: failed: terminated by SIGTERM (sent by timeout, kill or a batch system); "
        "what was measured so far is kept"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and "torchrun" not in summary["error"]


def test_sigterm_names_torchrun_only_under_torchrun(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    with pytest.raises(cli.RunFailed) as plain:
        cli._terminated(signal.SIGTERM, None)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    with pytest.raises(cli.RunFailed) as ranked:
        cli._terminated(signal.SIGTERM, None)
    assert "torchrun" not in str(plain.value) and "torchrun sends it to every rank" in str(ranked.value)


def test_a_corrupt_file_stops_the_process_backend_before_any_process(tiny_data, tmp_path):
    """The launcher reads the files once: a bad one is one line, not K processes that exit 1."""
    import shutil
    data_dir = tmp_path / "data"
    shutil.copytree(tiny_data, data_dir)
    labels = data_dir / "train-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-7])
    result = shell("async_mach.py", "--dataset", "mnist", "--data-dir", data_dir, "--backend", "process",
                   "--out", tmp_path / "run", cwd=ROOT)
    line = one_error_line(result, "async_mach.py")
    assert f"{labels}: header promises" in line and "truncated" in line
    assert not (tmp_path / "run").exists()
