"""layerwise_demo.py: train a network one block at a time with local losses, raced
against end-to-end backprop on the same clock.

The layer-wise study asks whether a network trains faster one block at a time from
the input, each on a loss of its own, than whole by backprop: ONE graph of the full
model's test loss against training seconds, a line per strategy, same hardware. Its
network: the TensorFlow "layers" tutorial MNIST CNN (--model tfcnn). The staged
networks ("train, freeze, attach a block, train the combination") were tried on a
LeNet-like network (LeCun et al. 1998, scaled tanh; --model lenet). --model mlp: 3x1024.

A model is blocks B_1..B_K and an output layer O: M(x) = O(B_K(...B_1(x))). Block k
gets an auxiliary head G_k (one linear layer on its flattened output; G_K is O).
sg() is stop-gradient. Strategies:

    backprop      min CE(M(x), y) over everything, Adam (--lr)
    backprop-sgd  the same with SGD + momentum (--sgd-lr, --momentum)
    submodel      for k = 1..K: min CE(G_k(B_k(h)), y), h = frozen B_{k-1..1}(x)
    decoupled     all k at once: min sum_k CE(G_k(B_k(sg(h_{k-1}))), y): DGL, Belilovsky
                  et al., "Decoupled Greedy Learning of CNNs", arXiv 1901.08164
    maxdiff       for k = 1..K: pairs (i, i + n/2) of a batch, d = 1 - cos(B_k(h_i), B_k(h_j)),
                  min -mean_{y_i != y_j} d  [+ mean_{y_i == y_j} d with --maxdiff-pull]
    kl            for k = 1..K: z = P B_k(h) (fixed random P, --kl-dim), per-label Gaussians
                  N(mu_c, S) with the pooled within-label covariance S,
                  KL_ab = 1/2 (mu_a - mu_b)^T S^-1 (mu_a - mu_b),  min -log(1 + mean_{a<b} KL_ab)
    staged        for k = 1..K: freeze the network so far (its blocks AND heads), attach B_k, G_k,
                  train the combination: min CE(sum_{j<k} G_j(h_j) + G_k(B_k(h_{k-1})), y)
    sim           all k at once, h_k = B_k(sg(h_{k-1})): min sum_k ||S(h_k) - S(onehot y)||^2 / n^2,
                  S the batch's n x n cosine similarity of row-centred vectors (a conv output:
                  its channels' std over positions): Nokland & Eidnes, arXiv 1901.06656
    predsim       the same with (1 - beta) CE(G_k(h_k), y) + beta sim_k, beta = --predsim-beta
                  --sim-projection: S(P_k h_k), P_k a learned 3x3 conv or linear map, no bias

maxdiff, kl and sim give a block no classifier, so a readout head G_k trains beside it on
sg(B_k(h)) to measure the full model's loss. Greedy strategies split the budget over the
blocks by --layer-budget and keep a frozen block's outputs (--cache-gb, all caches together).
--finetune-seconds S ends every local strategy with S seconds of end-to-end Adam, out of the
same budget. --blocks k trains G_k(B_k(...B_1(x))) by backprop: the control for "a smaller
model trains faster".

Every strategy gets the same budget (--seconds of its own training clock, --epochs or
--iterations), initial weights and batches. Every --eval-seconds a curve point tests the full
model (blocks so far + current head) on the first --eval-size test images: the best point and
the time to 95 % of backprop's final accuracy come from these; the final accuracy is on the
whole test set. Evaluation is off the clock.

Deviations from the originals: PyTorch; Adam (lr 1e-3) for every strategy but backprop-sgd;
maxdiff averages over pairs and keeps those with DIFFERENT labels, as the study's comment
intended (its code kept equal ones); kl, shelved there, is a per-batch Gaussian estimate;
inputs standardised; G_K is also block K's head, and sim and predsim read a block's output
after its pooling and dropout, without BatchNorm: the paper's ways are flags (README.md).
"""
from types import SimpleNamespace

from common import cli

STRATEGIES = ("backprop", "backprop-sgd", "submodel", "decoupled", "maxdiff", "kl", "staged", "sim", "predsim")
GREEDY = ("submodel", "maxdiff", "kl", "staged")
HEADLINE = ("backprop", "decoupled", "staged", "sim", "predsim")  # rows README.md shows of any command
FINAL = "final (full test set)"


def build_parser():
    parser = cli.make_parser(__doc__, iterations=None, batch_size=200, lr=1e-3, eval_every=None)
    race = parser.add_argument_group("the race")
    race.add_argument("--model", choices=("tfcnn", "lenet", "mlp"), default="tfcnn",
                      help="tfcnn: the TF layers-tutorial CNN; lenet: LeNet-like; mlp: 3x1024")
    race.add_argument("--strategy", nargs="+", choices=STRATEGIES + ("all",), default=["all"], help="in race order")
    race.add_argument("--seconds", type=cli.positive_float, default=60.0,
                      help="training seconds per strategy (ignored with --epochs/--iterations)")
    race.add_argument("--epochs", type=cli.positive_float, default=None, help="budget in epochs per strategy")
    race.add_argument("--layer-budget", type=cli.positive_float, nargs="+", default=None, metavar="W",
                      help="relative share of the budget, one per block (default: an even split)")
    race.add_argument("--finetune-seconds", type=cli.nonnegative_float, default=0.0,
                      help="end every local strategy with this many seconds of end-to-end Adam")
    race.add_argument("--eval-seconds", type=cli.positive_float, default=None,
                      help="a curve point every this many training seconds (default: 10; or "
                           "--eval-every, in steps; not both)")
    race.add_argument("--eval-size", type=cli.positive_int, default=2000,
                      help="test images a curve point is measured on (the final: all of them)")
    race.add_argument("--confirm", type=cli.fraction, nargs="+", default=(), metavar="ACC",
                      help="accuracies (fractions: 0.85 0.87) whose first crossing on --eval-size "
                           "images is tested again on the whole test set (default: none)")
    race.add_argument("--cache-gb", type=cli.nonnegative_float, default=3.0,
                      help="memory for frozen blocks' cached outputs, all together (0: no cache)")
    local = parser.add_argument_group("local losses")
    local.add_argument("--local-optimizer", choices=("adam", "sgd"), default="adam",
                       help="optimizer of the local strategies (the study's maxdiff: sgd, lr 0.01)")
    local.add_argument("--sgd-lr", type=cli.positive_float, default=0.05, help="learning rate of backprop-sgd")
    local.add_argument("--momentum", type=cli.nonnegative_float, default=0.9,
                       help="momentum of backprop-sgd (and of --local-optimizer sgd)")
    local.add_argument("--maxdiff-pull", action="store_true",
                       help="also pull equal-label pairs together (default: push only, the study's idea)")
    local.add_argument("--kl-dim", type=cli.positive_int, default=32, help="kl's random projection's dimension")
    local.add_argument("--kl-eps", type=cli.positive_float, default=1e-3, help="kl's ridge, x the mean variance")
    local.add_argument("--predsim-beta", type=cli.fraction, default=0.99,
                       help="predsim's weight of the similarity loss (the paper's 0.99)")
    race.add_argument("--blocks", type=cli.positive_int, default=None, metavar="K",
                      help="keep only the first K blocks and head G_K (backprop strategies only)")
    paper = parser.add_argument_group("the local-loss paper's blocks and recipe (Nokland & Eidnes 2019)").add_argument
    paper("--norm", choices=("none", "batch"), default="none", help="batch: BatchNorm between every conv/linear "
          "layer and its nonlinearity, every strategy (the paper's); none: the networks as described")
    paper("--dropout", type=cli.fraction, default=None, metavar="P", help="dropout probability after tfcnn's "
          "dense layer (default 0.4, the TF tutorial's) or every mlp layer (default 0; paper 0.025)")
    paper("--sim-nonlin", choices=("relu", "leakyrelu"), default="relu", help="sim's and predsim's tfcnn/mlp "
          "nonlinearity (the paper's MLP: leakyrelu, slope 0.01); other strategies keep ReLU")
    paper("--sim-projection", action="store_true", help="sim, predsim: S() of a learned 3x3 conv or linear map, "
          "no bias, of a block's output, the paper's (default: off, S() of the output itself)")
    paper("--local-before-pool", action="store_true", help="decoupled, sim, predsim: local losses before a "
          "block's pooling/dropout, conv heads avg-pooled to <= 4096 inputs, the paper's (default: off, after)")
    paper("--zero-heads", action="store_true", help="the local strategies' heads G_k (G_K: the output layer) "
          "start with zero weights, the paper's (default: off, PyTorch's initialisation)")
    paper("--output-apart", action="store_true", help="sim, predsim: a head for B_K, the output on sg(h_K) (paper)")
    paper("--lr-decay-at", type=cli.fraction, nargs="+", default=None, metavar="F", help="fractions (0-1) of the "
          "budget where each lr is multiplied by --lr-decay-factor (paper: 0.5 0.75 0.875 0.94; default: none)")
    paper("--lr-decay-factor", type=cli.fraction, default=0.25, help="lr factor at each --lr-decay-at, the paper's")
    paper("--augment", action="store_true", help="training images shifted up to 2 pixels each way (zero-padded "
          "crop) and mirrored left-right with probability 1/2, the paper's (default: off)")
    return parser


def validate(args):
    """How the flags combine; raises cli.UserError before anything is written."""
    args.strategy = list(STRATEGIES) if "all" in args.strategy else list(dict.fromkeys(args.strategy))
    num_blocks = len(BLOCK_MODELS[args.model]()) - 1
    if args.epochs and args.iterations:
        raise cli.UserError("--epochs and --iterations both set: the budget is one of them; drop one")
    if args.eval_every and args.eval_seconds:
        raise cli.UserError("--eval-every and --eval-seconds both set: curve points come every so "
                            "many steps or seconds; drop one")
    args.eval_seconds = None if args.eval_every else args.eval_seconds or 10.0
    if args.layer_budget and len(args.layer_budget) != num_blocks:
        raise cli.UserError(f"--layer-budget: {args.model} has {num_blocks} blocks, got "
                            f"{len(args.layer_budget)} weights; give one weight per block")
    if args.finetune_seconds and (args.epochs or args.iterations):
        raise cli.UserError("--finetune-seconds works with the --seconds budget; "
                            "drop --epochs/--iterations")
    if args.finetune_seconds >= args.seconds:
        raise cli.UserError(f"--finetune-seconds {args.finetune_seconds:g} leaves nothing of "
                            f"--seconds {args.seconds:g} for the local stages; make it smaller")
    if args.blocks and (args.blocks > num_blocks or set(args.strategy) - {"backprop", "backprop-sgd"}):
        raise cli.UserError(f"--blocks {args.blocks}: truncates {args.model} ({num_blocks} blocks) for "
                            f"--strategy backprop/backprop-sgd only; use 1..{num_blocks} with those")
    if args.batch_size < 4 and {"maxdiff", "kl"} & set(args.strategy):
        raise cli.UserError("--batch-size: maxdiff and kl compare pairs within a batch; use at least 4")
    if (args.augment or args.lr_decay_at) and set(GREEDY) & set(args.strategy):
        raise cli.UserError("--augment/--lr-decay-at: the greedy strategies (submodel, maxdiff, kl, staged) "
                            "cache frozen outputs and split the budget by block; drop them from --strategy")
    if args.batch_size < 2 and args.norm == "batch":
        raise cli.UserError("--batch-size 1: BatchNorm needs two examples or more a batch; use at least 2")
    if args.model == "lenet" and (args.sim_nonlin != "relu" or args.dropout is not None):
        raise cli.UserError("--sim-nonlin/--dropout: lenet has its scaled tanh and no dropout; use tfcnn or mlp")


if __name__ == "__main__":  # a bad flag is refused before the 2-3 s of `import torch` (validate needs it)
    cli.check_flags(build_parser())
import torch
import torch.nn.functional as F
from common.augment import crop_flip_batches
from common.data import Batches, LazyCache, MemoryBudget, load_data
from common.layerwise_models import BLOCK_MODELS, layerwise_net, split_tail
from common.models import decay_lr, make_optimizer
from common.plots import draw_race
from common.race_curve import RaceCurve, block_stats, print_race_table
from common.run_folder import Run


# -- The local losses (the model: common.layerwise_models.layerwise_net) -------------------

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


def similarity(h):
    """S(h): the n x n cosine similarity of the batch's row-centred vectors; a conv output
    (n, c, height, width) is first reduced to each channel's std over the positions."""
    v = h.flatten(2).std(2) if h.dim() == 4 else h.flatten(1)
    v = F.normalize(v - v.mean(1, keepdim=True), dim=1)
    return v @ v.T


def decoupled_losses(blocks, heads, x, y, strategy="decoupled", beta=0.99, projections=None, before_pool=False):
    """One local loss per block (decoupled: CE; sim; predsim: (1 - beta) CE + beta sim);
    sg() on each block's input keeps every loss inside its own block and head. A sim
    block's head reads sg(h_k) beside it. Losses on a_k = h_k, or before_pool a_k = body(sg(h_{k-1})),
    h_k = tail(a_k) (pooling, dropout; G_K reads h_K); projections: sim_k on S(P_k a_k). Returns [(loss, logits)]."""
    out, h = [], x
    for k, (block, head) in enumerate(zip(blocks, heads)):
        body, tail = split_tail(block) if before_pool else (block, torch.nn.Identity())
        a = body(h.detach())
        h = tail(a)
        read = h if k == len(blocks) - 1 else a
        logits = head(read.detach() if strategy == "sim" else read)
        ce = F.cross_entropy(logits, y)
        sim = 0 if strategy == "decoupled" else F.mse_loss(
            similarity(a if projections is None else projections[k](a)),
            similarity(F.one_hot(y, logits.shape[1]).float()))
        out.append(((1 - beta) * ce + beta * sim if strategy == "predsim" else ce + sim, logits))
    return out


# -- Training: the strategies ------------------------------------------------------
# race: what all strategies share: data, args, total budget, stage_ends (block k's end)

def train_end_to_end(net, curve, batches, optimizer, until, race, stage="all"):
    """Backprop through every block until `until` budget is used: the baseline,
    and the --finetune-seconds stage of the local strategies."""
    while curve.used() < until:
        with curve.clock:
            decay_lr(optimizer, curve.used() / race.total, race.args.lr_decay_at, race.args.lr_decay_factor)
            x, y = next(batches)
            loss = F.cross_entropy(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        curve.tick(len(y))
        if curve.due():
            curve.point(net, net.parts(), stage)


def train_decoupled(strategy, net, curve, batches, race):
    """All blocks at once, each on its own local loss, inputs detached."""
    args = race.args
    optimizer = make_optimizer(net.parameters(), args.local_optimizer, args.lr, args.momentum)
    while curve.used() < race.stage_ends[-1]:
        with curve.clock:
            decay_lr(optimizer, curve.used() / race.total, args.lr_decay_at, args.lr_decay_factor)
            x, y = next(batches)
            local = decoupled_losses(net.blocks, net.heads, x, y, strategy, args.predsim_beta,
                                     net.projections, args.local_before_pool)
            optimizer.zero_grad(set_to_none=True)
            sum(loss for loss, _ in local).backward()
            optimizer.step()
        curve.tick(len(y), {column: value for k, (loss, logits) in enumerate(local)
                            for column, value in block_stats(k, loss, logits, y).items()})
        if curve.due():
            curve.point(net, net.parts(), "all")


def train_greedy(strategy, net, curve, batches, race):
    """Blocks one at a time from the input; a finished block (and its head) is frozen.
    `batches` yields (training indices, labels), so frozen outputs can be cached."""
    args, train_x = race.args, race.data.train_x
    device = train_x.device
    cache_budget = MemoryBudget(args.cache_gb * 2**30)  # all of this strategy's caches
    features = lambda index: train_x[index]                 # input of the current block
    offset = None                                           # staged: frozen heads' logits
    # The curve's test images pushed through the frozen blocks, and (staged) the
    # frozen heads' summed logits on them; a point evaluates on their row indices.
    test_h, test_offset = curve.test[0][:None if curve.unconfirmed else curve.eval_size], None
    rows = torch.arange(len(test_h), device=device)
    generator = torch.Generator().manual_seed(args.seed)
    for k, (block, head) in enumerate(zip(net.blocks, net.heads)):
        block.train()
        params = list(block.parameters()) + list(head.parameters())
        optimizer = make_optimizer(params, args.local_optimizer, args.lr, args.momentum)
        if strategy == "kl":  # a fixed random projection, so the estimate is low-dimensional
            width = block(test_h[:1]).numel()
            projection = torch.randn(width, args.kl_dim, generator=generator).to(device) / width**0.5

        def predict(i, block=block, head=head, h=test_h, offset=test_offset):
            logits = head(block(h[i]))
            return logits if offset is None else logits + offset[i]

        while curve.used() < race.stage_ends[k]:
            with curve.clock:
                index, y = next(batches)
                h = block(features(index))
                if strategy in ("submodel", "staged"):  # staged: + the frozen network's logits
                    logits = head(h) + (offset(index) if offset is not None else 0)
                    local = readout = F.cross_entropy(logits, y)
                else:  # a local loss on the block; the readout beside it cannot change it
                    local = (maxdiff_loss(h, y, args.maxdiff_pull) if strategy == "maxdiff" else
                             -torch.log1p(gaussian_kl(h.flatten(1) @ projection, y, args.kl_eps)))
                    logits = head(h.detach())
                    readout = F.cross_entropy(logits, y)
                optimizer.zero_grad(set_to_none=True)
                (local if local is readout else local + readout).backward()
                optimizer.step()
            curve.tick(len(y), block_stats(k, local, logits, y))
            if curve.due():
                curve.point(predict, [block, head], f"block {k + 1}", inputs=rows)

        # Freeze block k: its outputs are now a fixed function of the input.
        block.eval().requires_grad_(False)
        head.eval().requires_grad_(False)
        if k + 1 < len(net.blocks):
            previous, prev_offset = features, offset
            with curve.clock:
                features = LazyCache(lambda i, b=block, f=previous: b(f(i)), len(train_x), cache_budget, device)
                if strategy == "staged":
                    offset = LazyCache(lambda i, h=head, f=features, o=prev_offset:
                                       h(f(i)) + (o(i) if o is not None else 0),
                                       len(train_x), cache_budget, device)
            with curve.run.evaluating(), torch.no_grad():  # test-side cache, not training
                test_h = block(test_h)
                if strategy == "staged":
                    test_offset = head(test_h) + (0 if test_offset is None else test_offset)


def main(argv=None):
    args, device = cli.setup(build_parser(), "layerwise_demo", argv, validate=validate)
    data = load_data(args.dataset, args.data_dir, device, flat=False)
    budget_steps = bool(args.epochs or args.iterations)
    total = (max(1, round(args.epochs * len(data.train_x) / args.batch_size)) if args.epochs
             else args.iterations or args.seconds)
    num_blocks = len(BLOCK_MODELS[args.model]()) - 1
    weights = args.layer_budget or [1.0] * num_blocks   # block k's share of the local stages' budget
    stage_ends = [(total - args.finetune_seconds) * sum(weights[:k + 1]) / sum(weights) for k in range(num_blocks)]
    race = SimpleNamespace(data=data, args=args, total=total, stage_ends=stage_ends)
    n_eval = min(args.eval_size, len(data.test_x))
    curves = []
    with Run(args, "layerwise_demo", device) as run:
        run.summary.update(model=args.model, budget="steps" if budget_steps else "seconds", eval_size=n_eval,
                           budget_per_strategy=total, steps={}, cpu_seconds={}, stage_ends=stage_ends)
        run.clock_of = lambda name: "strategy_seconds"   # each strategy's RaceCurve clock
        run.draw = lambda folder: draw_race(folder, curves, "the strategy's training seconds "
                                            "(evaluation excluded)", f", first {n_eval} test images")
        for strategy in args.strategy:
            local = strategy not in ("backprop", "backprop-sgd")
            name = strategy + (f"+ft{args.finetune_seconds:g}" if args.finetune_seconds and local else "")
            run.print(f"== {name}: {args.model}, budget {total:g} {'steps' if budget_steps else 's'} ==")
            sim = strategy in ("sim", "predsim")  # the paper's options apply to its strategies
            net = layerwise_net(args.model, data.num_classes, data.train_x.shape[1:], args.seed,
                                staged=strategy == "staged", keep=args.blocks, norm=args.norm,
                                nonlin=args.sim_nonlin if sim else "relu", dropout=args.dropout,
                                before_pool=args.local_before_pool and (sim or strategy == "decoupled"),
                                projection=args.sim_projection and sim, zero_heads=args.zero_heads and local,
                                output_apart=args.output_apart and sim).to(device)
            curve = RaceCurve(run, name, (data.test_x, data.test_y), len(data.train_x), budget_steps,
                              args.eval_every, args.eval_seconds, "strategy", n_eval, args.confirm)
            curves.append(curve)
            if strategy in GREEDY:
                index = torch.arange(len(data.train_x), device=device)
                batches = iter(Batches(index, data.train_y, args.batch_size, args.seed))
                train_greedy(strategy, net, curve, batches, race)
            else:
                batches = iter(Batches(data.train_x, data.train_y, args.batch_size, args.seed))
                if args.augment:  # black pixels pad the shifted images
                    batches = crop_flip_batches(batches, args.seed, data.train_x.min().item())
                if strategy in ("decoupled", "sim", "predsim"):
                    train_decoupled(strategy, net, curve, batches, race)
                else:
                    kind, lr = ("sgd", args.sgd_lr) if strategy == "backprop-sgd" else ("adam", args.lr)
                    optimizer = make_optimizer(net.parameters(), kind, lr, args.momentum)
                    train_end_to_end(net, curve, batches, optimizer, total, race)
            if args.finetune_seconds and local:
                batches = iter(Batches(data.train_x, data.train_y, args.batch_size, args.seed + 1))
                curve.point(net, net.parts(), "before finetune")
                net.requires_grad_(True).train()  # unfreeze every block and head
                optimizer = make_optimizer(net.parameters(), "adam", args.lr)
                train_end_to_end(net, curve, batches, optimizer, total, race, "finetune")
            # The last point of the curve, then the whole test set for the final accuracy.
            curve.point(net, net.parts(), "end")
            final = curve.final(net, net.parts(), data.test_x, data.test_y, FINAL)
            run.declare_row(name, "test accuracy", round(100 * final, 4), "%", headline=strategy in HEADLINE)
            run.summary["steps"][name] = curve.steps
            run.summary["cpu_seconds"][name] = round(curve.cpu_seconds(), 1)

        run.baseline = "backprop" if "backprop" in args.strategy else None
        # Targets: 95 % of backprop's final accuracy; times: its first curve point there.
        run.time_to_target([(c.name, "backprop") for c in curves if c.name != "backprop"],
                           rows=[r for r in run.rows if r["stage"] != FINAL])
        run.end_table = lambda: print_race_table(run, curves, n_eval, len(data.test_x))


if __name__ == "__main__":
    cli.run_script(main)
