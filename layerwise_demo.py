"""layerwise_demo.py: train a network one block at a time with local losses, raced
against end-to-end backprop on the same clock.

Docs: README.md, section "layerwise_demo.py". Reproduces the goal of the
layer-wise seed (shared/seeds/003_d6bdd0b45cbba5e0.txt): ONE graph of the
full model's loss against wall-clock training time, a line per strategy, on
the same hardware, compared with the best that standard backprop can do;
plus the staged networks of seed 002 (shared/seeds/002_99645804cbb4c1ca.txt).

A model is a list of blocks B_1..B_K and its output layer O:
M(x) = O(B_K(...B_1(x))). Block k gets an auxiliary head G_k (one linear
layer on its flattened output; G_K is O itself). Strategies:

    backprop      min CE(M(x), y) over everything, Adam (--lr)
    backprop-sgd  the same with SGD + momentum (--sgd-lr, --momentum)
    submodel      for k = 1..K: min CE(G_k(B_k(h)), y), h = frozen B_{k-1..1}(x)
    decoupled     all k at once: min sum_k CE(G_k(B_k(sg(h_{k-1}))), y)  (DGL-style)
    maxdiff       for k = 1..K: pairs (i, i + n/2) of a batch, d = 1 - cos(B_k(h_i), B_k(h_j)),
                  min -mean_{y_i != y_j} d  [+ mean_{y_i == y_j} d with --maxdiff-pull]
    kl            for k = 1..K: z = P B_k(h) (fixed random P, --kl-dim), per-label Gaussians
                  N(mu_c, S) with the pooled within-label covariance S,
                  KL_ab = 1/2 (mu_a - mu_b)^T S^-1 (mu_a - mu_b),  min -log(1 + mean_{a<b} KL_ab)
    staged        for k = 1..K: freeze the network so far (its blocks AND heads), attach B_k, G_k,
                  train the combination: min CE(sum_{j<k} G_j(h_j) + G_k(B_k(h_{k-1})), y)

maxdiff and kl give a block no classifier, so a readout head G_k is trained
beside it on sg(B_k(h)) (it cannot change the block) to measure the full
model's loss. sg() is stop-gradient. Greedy strategies split the budget over
the blocks by --layer-budget; a frozen block's outputs are computed the first
time an example is drawn and kept (--cache-gb), so later epochs skip it.
--finetune-seconds S ends every local strategy with S seconds of end-to-end
Adam, taken out of the same budget.

Every strategy gets the same budget (--seconds, or --epochs, or
--iterations), the same initial weights and the same batches. Every
--eval-seconds of training, the full model (blocks so far + current head) is
evaluated on the first --eval-size test images; the final accuracy uses the
whole test set. Evaluation time is not training time.

Deviations from the seed: PyTorch, not TF 1.x; Adam (lr 1e-3) for every
strategy but backprop-sgd (the seed's maxdiff used SGD lr 0.01: use
--local-optimizer sgd --lr 0.01); maxdiff averages over pairs instead of
summing (the scale only changes the step size); maxdiff keeps the pairs with
DIFFERENT labels, as the seed's comment intended (its code kept equal ones);
inputs standardised rather than in [0, 1].

    python layerwise_demo.py --dataset fashion-mnist --plot

Measured result (Fashion-MNIST, tfcnn, 60 s each, 2-core CPU): README.md.
"""
import math
import time
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from common import cli
from common.data import Batches, load_data
from common.run_folder import Run, evaluate, synchronize
from common.models import BLOCK_MODELS

STRATEGIES = ("backprop", "backprop-sgd", "submodel", "decoupled", "maxdiff", "kl", "staged")
GREEDY = ("submodel", "maxdiff", "kl", "staged")
TARGETS = (0.90, 0.95, 0.99)


def build_parser():
    parser = cli.make_parser(__doc__, iterations=None, batch_size=200, lr=1e-3,
                             eval_every=None)
    race = parser.add_argument_group("the race")
    race.add_argument("--model", choices=tuple(BLOCK_MODELS), default="tfcnn",
                      help="tfcnn: seed 003's TF tutorial CNN; lenet: seed 002; mlp: 3x1024")
    race.add_argument("--strategy", nargs="+", choices=STRATEGIES + ("all",), default=["all"],
                      help="strategies to race, in order (all: every one)")
    race.add_argument("--seconds", type=cli.positive_float, default=60.0,
                      help="training seconds per strategy (ignored with --epochs/--iterations)")
    race.add_argument("--epochs", type=cli.positive_float, default=None,
                      help="budget in epochs per strategy instead of seconds")
    race.add_argument("--layer-budget", type=cli.positive_float, nargs="+", default=None,
                      metavar="W", help="relative share of the budget per block, one per "
                      "block (default: an even split)")
    race.add_argument("--finetune-seconds", type=cli.nonnegative_float, default=0.0,
                      help="end every local strategy with this many seconds of end-to-end Adam")
    race.add_argument("--eval-seconds", type=cli.positive_float, default=10.0,
                      help="evaluate every this many training seconds (--eval-every: steps)")
    race.add_argument("--eval-size", type=cli.positive_int, default=2000,
                      help="test images used for the curve points")
    race.add_argument("--cache-gb", type=cli.nonnegative_float, default=3.0,
                      help="largest cache of a frozen block's outputs (0: recompute each batch)")
    local = parser.add_argument_group("local losses")
    local.add_argument("--local-optimizer", choices=("adam", "sgd"), default="adam",
                       help="optimizer of the local strategies (the seed's maxdiff: sgd, lr 0.01)")
    local.add_argument("--sgd-lr", type=cli.positive_float, default=0.05,
                       help="learning rate of backprop-sgd")
    local.add_argument("--momentum", type=cli.nonnegative_float, default=0.9,
                       help="momentum of backprop-sgd (and of --local-optimizer sgd)")
    local.add_argument("--maxdiff-pull", action="store_true",
                       help="also pull equal-label pairs together (default: push only, the seed's idea)")
    local.add_argument("--kl-dim", type=cli.positive_int, default=32,
                       help="dimension of the fixed random projection the KL estimate works in")
    local.add_argument("--kl-eps", type=cli.positive_float, default=1e-3,
                       help="ridge added to the covariance, relative to its mean variance")
    return parser


# -- The model as blocks, each with its auxiliary head ---------------------------

def build_model(name, num_classes, image_shape, seed):
    """(blocks, heads): head k is one linear layer on block k's flattened output;
    the last head is the model's own output layer. Same seed, same weights."""
    torch.manual_seed(seed)
    layers = BLOCK_MODELS[name](num_classes=num_classes)
    blocks, output = layers[:-1], layers[-1]
    heads, h = [], torch.zeros(2, *image_shape)
    for block in blocks[:-1]:
        h = block(h)
        heads.append(nn.Sequential(nn.Flatten(), nn.Linear(h[0].numel(), num_classes)))
    return blocks, nn.ModuleList(heads + [output])


# -- The local losses ------------------------------------------------------------

def maxdiff_loss(h, y, pull=False):
    """Pairs (i, i + n/2); d = 1 - cos. Push apart different labels (-mean d);
    with `pull`, also pull equal labels together (+mean d). Ignores equal pairs otherwise."""
    half = len(h) // 2
    a = F.normalize(h[:half].flatten(1), dim=1)
    b = F.normalize(h[half:2 * half].flatten(1), dim=1)
    distance = 1 - (a * b).sum(1)
    differ = (y[:half] != y[half:2 * half]).float()
    loss = -(distance * differ).sum() / differ.sum().clamp(min=1)
    if pull:
        same = 1 - differ
        loss = loss + (distance * same).sum() / same.sum().clamp(min=1)
    return loss


def gaussian_kl(z, y, eps=1e-3):
    """Mean over label pairs a < b of KL(N(mu_a, S) || N(mu_b, S)) estimated from z (n, d).

    mu_c: mean of the rows labelled c; S: pooled within-label covariance
    + eps * (trace S / d) I, so the estimate does not change when z is scaled.
    KL_ab = 1/2 (mu_a - mu_b)^T S^-1 (mu_a - mu_b)  (equal covariances).
    """
    labels = [c for c in y.unique() if (y == c).sum() >= 2]
    if len(labels) < 2:
        return z.sum() * 0  # no pair of labels to compare in this batch
    mus = torch.stack([z[y == c].mean(0) for c in labels])
    centred = torch.cat([z[y == c] - mu for c, mu in zip(labels, mus)])
    cov = centred.T @ centred / max(len(centred) - len(labels), 1)
    d = z.shape[1]
    cov = cov + eps * cov.trace() / d * torch.eye(d, device=z.device) + 1e-8 * torch.eye(d, device=z.device)
    diff = (mus[:, None] - mus[None]).reshape(-1, d)                 # all (a, b)
    solved = torch.cholesky_solve(diff.T, torch.linalg.cholesky(cov))  # S^-1 (mu_a - mu_b)
    kl = 0.5 * (diff.T * solved).sum(0)
    pairs = len(labels) * (len(labels) - 1)  # kl is symmetric: each pair counted twice
    return kl.sum() / pairs


def decoupled_losses(blocks, heads, x, y):
    """One local cross-entropy per block; sg() on each block's input keeps
    every loss inside its own block and head. Returns [(loss, logits)]."""
    out, h = [], x
    for block, head in zip(blocks, heads):
        h = block(h.detach())
        logits = head(h)
        out.append((F.cross_entropy(logits, y), logits))
    return out


# -- Plumbing: the clock, lazy caches, evaluation --------------------------------

class LazyCache:
    """fn(index) for training examples, computed the first time an example is drawn
    and kept, if the whole table fits in `limit_bytes` (a frozen block never changes)."""

    def __init__(self, fn, n, limit_bytes, device):
        self.fn, self.store = fn, None
        with torch.no_grad():
            shape = fn(torch.zeros(1, dtype=torch.long, device=device)).shape[1:]
        if n * math.prod(shape) * 4 <= limit_bytes:
            self.store = torch.empty(n, *shape, device=device)
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


@contextmanager
def eval_mode(*modules):
    """Dropout off while evaluating, back on afterwards."""
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


class Curve:
    """One strategy's clock (training seconds, or steps), its budget and its points."""

    def __init__(self, run, name, data, args):
        self.run, self.name, self.data, self.args = run, name, data, args
        self.start = run.train_seconds()
        # CPU seconds of this process (all threads), evaluation excluded: on a shared
        # machine they show how much of the wall-clock budget the strategy really got.
        self.cpu_start, self.cpu_eval = time.process_time(), 0.0
        self.steps = self.samples = 0
        self.points = []  # (strategy seconds, test loss, test accuracy)
        self.next_eval = args.eval_every or args.eval_seconds
        self.stats = {}
        self.n_eval = min(args.eval_size, len(data.test_x))

    def seconds(self):
        return self.run.train_seconds() - self.start

    def cpu_seconds(self):
        return time.process_time() - self.cpu_start - self.cpu_eval

    def used(self):
        """Budget spent: seconds, or steps when the budget is in steps."""
        return self.steps if self.args.budget_steps else self.seconds()

    def tick(self, batch_size, block_stats=()):
        """After a step: count it and add (block, local loss, head logits, y) to the stats."""
        self.steps += 1
        self.samples += batch_size
        for k, loss, logits, y in block_stats:
            s = self.stats.setdefault(k, [0.0, 0, 0, 0])
            s[0] += loss.item()
            s[1] += 1
            s[2] += (logits.argmax(1) == y).sum().item()
            s[3] += len(y)

    def due(self):
        now = self.steps if self.args.eval_every else self.seconds()
        return now >= self.next_eval

    def evaluate(self, predict, test_x, stage, modules, final=False):
        """Log a point: test loss and accuracy of predict(test_x) (the full model)."""
        seconds, cpu, began = self.seconds(), self.cpu_seconds(), time.process_time()
        test_y = self.data.test_y if final else self.data.test_y[:self.n_eval]
        with self.run.evaluating(), eval_mode(*modules):
            loss, accuracy = evaluate(predict, test_x, test_y)
        self.cpu_eval += time.process_time() - began
        extra = {"strategy": self.name, "stage": stage, "strategy_seconds": round(seconds, 3),
                 "cpu_seconds": round(cpu, 3),
                 "test_loss": round(loss, 5), "test_accuracy": round(accuracy, 5),
                 "eval_examples": len(test_y)}
        for k, (loss_sum, count, correct, seen) in sorted(self.stats.items()):
            extra[f"local_loss/{k + 1}"] = round(loss_sum / count, 5)
            extra[f"head_acc/{k + 1}"] = round(correct / seen, 5)
        self.run.log(self.steps, self.samples / len(self.data.train_x),
                     accuracy={self.name: accuracy}, losses={"test": loss}, extra=extra)
        for k, (loss_sum, count, correct, seen) in sorted(self.stats.items()):
            self.run.print(f"    {self.name} block {k + 1}: local loss {loss_sum / count:.4f}"
                           f" | local head train acc {correct / seen:.4f} ({count} steps)")
        self.stats = {}
        if not final:
            self.points.append((seconds, loss, accuracy))
            now = self.steps if self.args.eval_every else seconds
            self.next_eval = now + (self.args.eval_every or self.args.eval_seconds)
        return accuracy


def make_optimizer(params, args, kind=None):
    params = list(params)
    if (kind or args.local_optimizer) == "sgd":
        lr = args.sgd_lr if kind == "sgd" else args.lr
        return torch.optim.SGD(params, lr=lr, momentum=args.momentum)
    # fused=True: one kernel updates every parameter, much faster on CPU.
    return torch.optim.Adam(params, lr=args.lr, fused=True)


# -- Training: the strategies ------------------------------------------------------

def train_end_to_end(blocks, heads, combine, batches, curve, until, data, args, kind, stage):
    """Backprop through every block until `until` budget is used: the baseline,
    and the --finetune-seconds stage of the local strategies."""
    for m in list(blocks) + list(heads):
        m.requires_grad_(True).train()
    optimizer = make_optimizer(list(blocks.parameters()) + list(heads.parameters()), args, kind)
    modules = list(blocks) + list(heads)
    test_x = data.test_x[:curve.n_eval]
    while curve.used() < until:
        x, y = next(batches)
        loss = F.cross_entropy(combine(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        curve.tick(len(y))
        if curve.due():
            curve.evaluate(combine, test_x, stage, modules)


def train_decoupled(blocks, heads, batches, curve, until, data, args):
    """All blocks at once, each on its own head's loss, inputs detached."""
    optimizer = make_optimizer(list(blocks.parameters()) + list(heads.parameters()), args)
    test_x = data.test_x[:curve.n_eval]
    while curve.used() < until:
        x, y = next(batches)
        local = decoupled_losses(blocks, heads, x, y)
        optimizer.zero_grad(set_to_none=True)
        sum(loss for loss, _ in local).backward()
        optimizer.step()
        curve.tick(len(y), [(k, loss, logits, y) for k, (loss, logits) in enumerate(local)])
        if curve.due():
            curve.evaluate(lambda x: full_logits(blocks, heads, x, False), test_x,
                           "all", list(blocks) + list(heads))


def train_greedy(strategy, blocks, heads, index_batches, curve, stage_ends, data, args, device):
    """Blocks one at a time from the input; a finished block is frozen."""
    n, limit = len(data.train_x), args.cache_gb * 2**30
    features = lambda index: data.train_x[index]            # input of the current block
    offset = None                                           # staged: frozen heads' logits
    test_h, test_offset = data.test_x[:curve.n_eval], None
    generator = torch.Generator().manual_seed(args.seed)
    for k, (block, head) in enumerate(zip(blocks, heads)):
        block.train()
        params = list(block.parameters()) + list(head.parameters())
        optimizer = make_optimizer(params, args)
        if strategy == "kl":  # a fixed random projection, so the estimate is low-dimensional
            width = block(test_h[:1]).numel()
            projection = torch.randn(width, args.kl_dim, generator=generator).to(device) / width**0.5

        def predict(h, block=block, head=head, offset=test_offset):
            logits = head(block(h))
            return logits if offset is None else logits + offset[:len(h)]

        while curve.used() < stage_ends[k]:
            index, y = next(index_batches)
            h = block(features(index))
            if strategy == "submodel":
                logits = head(h)
                local = readout = F.cross_entropy(logits, y)
            elif strategy == "staged":  # the combination: frozen network's logits + new ones
                logits = head(h) + (offset(index) if offset is not None else 0)
                local = readout = F.cross_entropy(logits, y)
            else:
                if strategy == "maxdiff":
                    local = maxdiff_loss(h, y, args.maxdiff_pull)
                else:
                    local = -torch.log1p(gaussian_kl(h.flatten(1) @ projection, y, args.kl_eps))
                logits = head(h.detach())  # the readout cannot change the block
                readout = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            (local if local is readout else local + readout).backward()
            optimizer.step()
            curve.tick(len(y), [(k, local, logits, y)])
            if curve.due():
                curve.evaluate(predict, test_h, f"block {k + 1}", [block, head])

        # Freeze block k: its outputs are now a fixed function of the input.
        block.eval().requires_grad_(False)
        head.eval().requires_grad_(False)
        if k + 1 < len(blocks):
            previous, prev_offset = features, offset
            features = LazyCache(lambda i, b=block, f=previous: b(f(i)), n, limit, device)
            if strategy == "staged":
                offset = LazyCache(lambda i, h=head, f=features, o=prev_offset:
                                   h(f(i)) + (o(i) if o is not None else 0), n, limit, device)
            with curve.run.evaluating(), torch.no_grad():  # test-side cache, not training
                test_h_next = block(test_h)
                if strategy == "staged":
                    new = head(test_h_next)
                    test_offset = new if test_offset is None else test_offset + new
                test_h = test_h_next


def full_logits(blocks, heads, x, staged):
    """The full model: every block, then the last head (staged: the sum of all heads)."""
    total = 0
    for block, head in zip(blocks, heads):
        x = block(x)
        if staged:
            total = total + head(x)
    return total if staged else heads[-1](x)


def time_to(points, target):
    """Strategy seconds of the first point at or above `target` accuracy, else None."""
    return next((seconds for seconds, _, acc in points if acc >= target), None)


def print_table(run, curves, finals):
    reference = curves.get("backprop")
    base = reference.points[-1][2] if reference and reference.points else None
    head = f"{'strategy':<14} {'final acc':>9} {'best acc':>8} {'steps':>6} {'cpu s':>6}" + "".join(
        f"  {f't{int(p * 100)}% s (x bp)':>17}" for p in TARGETS)
    run.print(head)
    run.summary["time_to_target"] = {}
    for name, curve in curves.items():
        best = max([finals[name]] + [acc for _, _, acc in curve.points])
        cells, record = "", {}
        for p in TARGETS:
            t = time_to(curve.points, p * base) if base else None
            t_bp = time_to(reference.points, p * base) if base else None
            record[f"{int(p * 100)}%"] = t
            text = "-" if t is None else (f"{t:.1f} ({t / t_bp:.2f})" if t_bp else f"{t:.1f}")
            cells += f"  {text:>17}"
        run.summary["time_to_target"][name] = record
        run.print(f"{name:<14} {finals[name]:9.4f} {best:8.4f} {curve.steps:6d} "
                  f"{run.summary['cpu_seconds'][name]:6.0f}{cells}")
    if base is None:
        run.print("(times to target need the backprop strategy in the race)")
    else:
        run.print(f"targets: 90/95/99 % of backprop's last curve point, {base:.4f} on "
                  f"the first {reference.n_eval} test images; '-' = never reached")


def plot_curves(folder, curves):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    for column, label, filename in ((1, "full-model test loss", "loss_vs_time.png"),
                                    (2, "full-model test accuracy", "accuracy_vs_time.png")):
        fig, axis = plt.subplots(figsize=(8, 5))
        for name, curve in curves.items():
            if curve.points:
                axis.plot([p[0] for p in curve.points], [p[column] for p in curve.points],
                          marker=".", label=name)
        axis.set_xlabel("training seconds (same hardware, evaluation excluded)")
        axis.set_ylabel(label)
        if column == 1:
            axis.set_yscale("log")
        axis.grid(alpha=0.3)
        axis.legend()
        fig.tight_layout()
        fig.savefig(folder / filename, dpi=120)
        plt.close(fig)


def main(argv=None):
    parser = build_parser()
    args, device = cli.setup(parser, "layerwise_demo", argv)
    strategies = list(STRATEGIES) if "all" in args.strategy else list(dict.fromkeys(args.strategy))
    num_blocks = len(BLOCK_MODELS[args.model]()) - 1
    if args.epochs and args.iterations:
        parser.error("--epochs and --iterations both set: the budget is one of them; drop one")
    if args.layer_budget and len(args.layer_budget) != num_blocks:
        parser.error(f"--layer-budget: {args.model} has {num_blocks} blocks, got "
                     f"{len(args.layer_budget)} weights; give one weight per block")
    args.budget_steps = bool(args.epochs or args.iterations)
    if args.finetune_seconds and args.budget_steps:
        parser.error("--finetune-seconds works with the --seconds budget; drop --epochs/--iterations")
    if args.finetune_seconds >= args.seconds:
        parser.error(f"--finetune-seconds {args.finetune_seconds:g} leaves nothing of --seconds "
                     f"{args.seconds:g} for the local stages; make it smaller")
    if args.batch_size < 4 and {"maxdiff", "kl"} & set(strategies):
        parser.error("--batch-size: maxdiff and kl compare pairs within a batch; use at least 4")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    data = load_data(args.dataset, args.data_dir, device, flat=False)
    if args.epochs:
        total = max(1, round(args.epochs * len(data.train_x) / args.batch_size))
    else:
        total = args.iterations or args.seconds
    weights = args.layer_budget or [1.0] * num_blocks
    local_total = total - args.finetune_seconds
    stage_ends = [local_total * sum(weights[:k + 1]) / sum(weights) for k in range(num_blocks)]

    curves, finals = {}, {}
    with Run(args, "layerwise_demo", device) as run:
        run.summary.update(model=args.model, budget=("steps" if args.budget_steps else "seconds"),
                           budget_per_strategy=total, steps={}, cpu_seconds={}, stage_ends=stage_ends)
        for strategy in strategies:
            name = strategy + (f"+ft{args.finetune_seconds:g}"
                               if args.finetune_seconds and strategy not in ("backprop", "backprop-sgd")
                               else "")
            run.print(f"== {name}: {args.model}, budget {total:g} "
                      f"{'steps' if args.budget_steps else 's'} ==")
            blocks, heads = build_model(args.model, data.num_classes, data.train_x.shape[1:], args.seed)
            blocks, heads = blocks.to(device), heads.to(device)
            staged = strategy == "staged"
            combine = lambda x: full_logits(blocks, heads, x, staged)
            curve = curves[name] = Curve(run, name, data, args)
            if strategy in GREEDY:
                index = torch.arange(len(data.train_x), device=device)
                stream = iter(Batches(index, data.train_y, args.batch_size, args.seed))
                train_greedy(strategy, blocks, heads, stream, curve, stage_ends, data, args, device)
            else:
                stream = iter(Batches(data.train_x, data.train_y, args.batch_size, args.seed))
                if strategy == "decoupled":
                    train_decoupled(blocks, heads, stream, curve, local_total, data, args)
                else:
                    kind = "sgd" if strategy == "backprop-sgd" else "adam"
                    train_end_to_end(blocks, heads, combine, stream, curve, total, data, args,
                                     kind, "all")
            if args.finetune_seconds and strategy not in ("backprop", "backprop-sgd"):
                stream = iter(Batches(data.train_x, data.train_y, args.batch_size, args.seed + 1))
                curve.evaluate(combine, data.test_x[:curve.n_eval], "before finetune",
                               list(blocks) + list(heads))
                train_end_to_end(blocks, heads, combine, stream, curve, total, data, args,
                                 "adam", "finetune")
            # The last point of the curve, then the whole test set for the final accuracy.
            curve.evaluate(combine, data.test_x[:curve.n_eval], "end", list(blocks) + list(heads))
            synchronize(device)
            finals[name] = curve.evaluate(combine, data.test_x, "final (full test set)",
                                          list(blocks) + list(heads), final=True)
            run.summary["steps"][name] = curve.steps
            run.summary["cpu_seconds"][name] = round(curve.cpu_seconds(), 1)
        print_table(run, curves, finals)
        plot_curves(run.dir, curves)


if __name__ == "__main__":
    cli.run_script(main)
