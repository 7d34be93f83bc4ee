"""Command-line plumbing shared by every script: the common flags, their
validation before any work starts, device selection, seeding and threads,
and the one exit policy.

The exit policy (`run_script`), the same for every script and benchmark:

    bad input       UserError    exit 2    `<script>: error: <problem and fix>`
    interrupted     Ctrl-C       exit 130  `<script>: interrupted ...`
    diverged        Diverged     exit 1    `<script>: diverged: <loss> ... Try a lower --lr.`
    failed run      RunFailed    exit 1    `<script>: failed: <who died and how> ...`
    terminated      SIGTERM      exit 1    `<script>: failed: terminated by SIGTERM ...`

each as one line on stderr, without a traceback. Scripts raise these and
never catch them; the run folder (common/run_folder.py) records the status
and keeps what was measured. Nothing is written before the flags, the
device and the output folder have been checked: a refused run creates
nothing. Any other exception is a bug and keeps its traceback.
"""
import argparse
import os
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

DATASETS = ("mnist", "fashion-mnist", "kmnist")


class UserError(Exception):
    """A problem the user can fix; its message names the problem and the fix."""


class Diverged(Exception):
    """A logged loss became NaN or infinite."""


class RunFailed(Exception):
    """A part of the run died (a dead peer, a crashed worker); the message names it and how."""


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block) and exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _number(kind, test, what):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


positive_int = _number(int, lambda v: v > 0, "a positive integer")
nonnegative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number(float, lambda v: v > 0 and np.isfinite(v), "a positive number")
nonnegative_float = _number(float, lambda v: v >= 0 and np.isfinite(v), "a number >= 0")
fraction = _number(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each default, except an unset one (None) or an off switch."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:  # not `in`: 0 == False
            return action.help
        return super()._get_help_string(action)


def make_parser(doc, *, iterations, batch_size, lr, eval_every):
    """The flags every script shares, spelled the same everywhere.

    `doc` is the script's module docstring; its first paragraph becomes the
    description. The script passes its own defaults (the original paper's or
    code's hyperparameters) and adds the flags of its idea afterwards.
    `iterations=None` means the script has another way to end (--seconds).
    """
    parser = Parser(description=doc.strip().split("\n\n")[0],
                    formatter_class=_DefaultsFormatter)
    shared = parser.add_argument_group("shared flags (the same in every script)")
    shared.add_argument("--dataset", choices=DATASETS, default="mnist",
                        help="MNIST-family dataset; files are found on disk or downloaded")
    shared.add_argument("--data-dir", default="./data",
                        help="where to look for (and download) the dataset files")
    shared.add_argument("--device", default="auto",
                        help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    shared.add_argument("--seed", type=nonnegative_int, default=0,
                        help="seed for weights and data order")
    shared.add_argument("--threads", type=positive_int, default=None,
                        help="CPU threads for torch (default: torch's own choice)")
    shared.add_argument("--iterations", type=positive_int, default=iterations,
                        help="training steps")
    shared.add_argument("--batch-size", type=positive_int, default=batch_size,
                        help="minibatch size")
    shared.add_argument("--lr", type=positive_float, default=lr, help="learning rate")
    shared.add_argument("--eval-every", type=positive_int, default=eval_every,
                        help="evaluate on the test set every this many steps")
    shared.add_argument("--out", default=None,
                        help="run folder (default: runs/<script>/<time>-seed<seed>)")
    shared.add_argument("--plot", action="store_true",
                        help="also draw the curves as PNG files in the run folder")
    return parser


def resolve_device(spec):
    """Turn --device into a torch.device, or raise UserError if it is not here."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not torch.backends.mps.is_available():
            raise UserError("--device mps: MPS is not available on this machine; "
                            "use --device cpu or --device auto")
        return torch.device("mps")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {spec}: no CUDA device is available here; "
                            "use --device cpu or --device auto")
        index = spec.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise UserError(f"--device {spec}: this machine has "
                            f"{torch.cuda.device_count()} CUDA device(s), numbered from 0")
        return torch.device(spec)
    raise UserError(f"--device {spec}: unknown device; use auto, cpu, cuda, cuda:N or mps")


def check_writable(folder):
    """Prove the run folder could be made and written, without creating anything."""
    path = Path(folder).absolute()
    existing = next(p for p in [path, *path.parents] if p.exists())
    if not existing.is_dir():
        reason = f"{existing} is a file, not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        reason = f"no permission to write in {existing}"
    else:
        return
    raise UserError(f"--out {folder}: cannot write there ({reason}); choose a writable folder")


def setup(parser, script, argv=None, validate=None):
    """Parse and validate the flags, then seed and pick the device.

    `validate(args)` is the script's own check of how its flags combine: it
    raises UserError. Returns (args, device). Bad values exit with code 2
    and one line, before any data is loaded, model built or file written.
    """
    args = parser.parse_args(argv)
    if args.out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        args.out = os.path.join("runs", script, f"{stamp}-seed{args.seed}")
    try:
        if validate is not None:
            validate(args)
        device = resolve_device(args.device)
        check_writable(args.out)
    except UserError as error:
        parser.error(str(error))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    return args, device


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def run_script(main):
    """Call main() under the exit policy above: one line on stderr, the exit code."""
    prog = os.path.basename(sys.argv[0])
    signal.signal(signal.SIGTERM, _terminated)
    try:
        main()
    except UserError as error:
        _leave(f"{prog}: error: {error}", 2)
    except KeyboardInterrupt:
        _leave(f"{prog}: interrupted; what was measured so far is kept", 130)
    except Diverged as error:
        _leave(f"{prog}: diverged: {error}. Try a lower --lr.", 1)
    except RunFailed as error:
        _leave(f"{prog}: failed: {error}", 1)


def _terminated(signum, frame):
    # torchrun (or a batch system) ends the other ranks this way when one has failed: the
    # run folder records it as failed and keeps what was measured.
    raise RunFailed("terminated by SIGTERM (torchrun sends it to every rank when one fails; "
                    "its report names the one that did)")


def _leave(line, code):
    sys.stdout.flush()
    print(line, file=sys.stderr, flush=True)
    sys.exit(code)
