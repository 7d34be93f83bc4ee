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
device, the output folder and the data have been checked: a refused run
creates nothing. Any other exception is a bug and keeps its traceback.

This module imports torch only inside the functions that need it, so that a
script can check its flags with `check_flags` before its own `import torch`
(2-3 s): a typo is refused at once.
"""
import argparse
import math
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

DATASETS = ("mnist", "fashion-mnist", "kmnist")
INITS = ("torch", "tf")  # common.models' weight initialisations, here for --init's choices


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
positive_float = _number(float, lambda v: v > 0 and math.isfinite(v), "a positive number")
nonnegative_float = _number(float, lambda v: v >= 0 and math.isfinite(v), "a number >= 0")
fraction = _number(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each default, except an unset one (None) or an off switch."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:  # not `in`: 0 == False
            return action.help
        return super()._get_help_string(action)


PROGRESS_LINE = (
    "The printed curve, one line per evaluation: iter = training steps so far, epoch = passes "
    "over the training set, s = wall-clock seconds since the start (evaluation included; each "
    "method's own training clock is in metrics.csv), acc = test accuracy of each component or "
    "method, loss = its training losses of the last step, per example; lines past 120 "
    "characters go on indented below. metrics.csv in the run folder holds every column.")


def make_parser(doc, *, iterations, batch_size, lr, eval_every):
    """The flags every script shares, spelled the same everywhere.

    `doc` is the script's module docstring; its first paragraph becomes the
    description. The script passes its own defaults (the original paper's or
    code's hyperparameters) and adds the flags of its idea afterwards.
    `iterations=None` means the script has another way to end (--seconds).
    """
    parser = Parser(description=doc.strip().split("\n\n")[0],
                    formatter_class=_DefaultsFormatter, epilog=PROGRESS_LINE)
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
                        help="CPU threads for torch (default: torch's own choice; async_mach's "
                             "process components and torchrun ranks: the host's cores / its ranks)")
    shared.add_argument("--iterations", type=positive_int, default=iterations,
                        help="training steps of each model the script trains (each method, "
                             "strategy or component its own)")
    shared.add_argument("--batch-size", type=positive_int, default=batch_size,
                        help="minibatch size")
    shared.add_argument("--lr", type=positive_float, default=lr, help="learning rate")
    shared.add_argument("--eval-every", type=positive_int, default=eval_every,
                        help="evaluate on the whole test set every this many training steps")
    shared.add_argument("--out", default=None,
                        help="run folder (default: runs/<script>/<time>-seed<seed>)")
    shared.add_argument("--plot", action="store_true",
                        help="also draw the curves as PNG files in the run folder")
    return parser


def resolve_device(spec):
    """Turn --device into a torch.device, or raise UserError if it is not here."""
    import torch
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
    """Prove the run folder could be made and written, leaving nothing behind: make and
    remove a temporary folder in the nearest part of the path that exists (os.access
    says yes to root everywhere, /proc included)."""
    path = Path(folder).absolute()
    existing = next(p for p in [path, *path.parents] if p.exists())
    if not existing.is_dir():
        reason = f"{existing} is a file, not a folder"
    else:
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".writable-", dir=existing))
            return
        except OSError as error:
            reason = f"cannot make a folder in {existing}: {error.strerror}"
    raise UserError(f"--out {folder}: cannot write there ({reason}); choose a writable folder")


def check_data_dir(parser, args):
    """A --data-dir given on the command line must exist; the default (where downloads
    go) may be created. Without this, a mistyped folder trains silently on another copy."""
    default = parser.get_default("data_dir")
    if getattr(args, "dataset", None) and args.data_dir != default and not Path(args.data_dir).is_dir():
        raise UserError(f"dataset {args.dataset} not found: --data-dir {args.data_dir} is not a "
                        "folder; give the folder that holds its four IDX files, or leave "
                        f"--data-dir out to search {default} (where downloads go) and the system copy")


def _check(parser, args, validate, out):
    """The checks shared by check_flags and setup; they need no torch."""
    if validate is not None:
        validate(args)
    check_data_dir(parser, args)
    check_writable(out)


def check_flags(parser, validate=None, argv=None):
    """The checks that need no torch, for a script to run before its `import torch`:
    argparse, `validate(args)` (if it needs no torch), --data-dir and --out. Bad flags
    exit with code 2 and one line; nothing is kept (setup() parses again)."""
    args = parser.parse_args(argv)
    try:
        _check(parser, args, validate, args.out or "runs")
    except UserError as error:
        parser.error(str(error))


def setup(parser, script, argv=None, validate=None):
    """Parse and validate the flags, find the data, then seed and pick the device.

    `validate(args)` is the script's own check of how its flags combine: it
    raises UserError. Returns (args, device). Bad values exit with code 2
    and one line, before any data is loaded, model built or file written.
    The folder the data files are read from is printed and kept as
    args.data_source (so config.json records it); a missing dataset is
    downloaded here, or refused, before anything else happens.
    """
    import torch
    from common.data import locate  # common.data imports torch

    args = parser.parse_args(argv)
    if args.out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        args.out = os.path.join("runs", script, f"{stamp}-seed{args.seed}")
    try:
        _check(parser, args, validate, args.out)
        device = resolve_device(args.device)
        if getattr(args, "dataset", None):
            args.data_source = str(next(iter(locate(args.dataset, args.data_dir).values())).parent)
            print(f"data: {args.dataset} from {args.data_source}", flush=True)
    except UserError as error:
        parser.error(str(error))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    return args, device


def seed_everything(seed):
    import numpy as np
    import torch

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
    # `timeout`, `kill` or a batch system ends a run this way, and torchrun ends the other
    # ranks so when one has failed: the run folder records it as failed and keeps what was
    # measured. Only a torchrun rank (TORCHELASTIC_RUN_ID is set) is told about torchrun.
    if "TORCHELASTIC_RUN_ID" in os.environ:
        raise RunFailed("terminated by SIGTERM (torchrun sends it to every rank when one "
                        "fails; its report names the one that did)")
    raise RunFailed("terminated by SIGTERM (sent by timeout, kill or a batch system); "
                    "what was measured so far is kept")


def _leave(line, code):
    sys.stdout.flush()
    print(line, file=sys.stderr, flush=True)
    sys.exit(code)
