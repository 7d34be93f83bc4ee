"""synthgrad_demo.py: decoupled neural interfaces with synthetic gradients, in one process and in three.

Reproduces Jaderberg et al. 2016, "Decoupled Neural Interfaces using Synthetic Gradients"
(arXiv 1608.05343), and the numpy "synthetic-gradient" reference implementation (input,
output and oracle processes, JSON over HTTP). Docs and results: README.md, "synthgrad_demo.py".

A layer normally waits for the forward and backward pass above it before it may update.
With a synthetic gradient module M_i after hidden layer i it does not (per-example
gradients; the layer applies g_i / batch), and M_i regresses onto what the layer above sends:

    h_i      = f_i(h_{i-1})                          forward of layer i only
    g_i      = M_i(h_i)          (DNI)               predicted dL/dh_i
    g_i      = A_i h_i + C_i onehot(y) + b_i         (cDNI: also sees the label)
    theta_i <- Adam(theta_i, g_i^T dh_i/dtheta_i)    update now, layers above untouched
    target_i = g_{i+1}^T dh_{i+1}/dh_i               bootstrapped from M_{i+1};
    target_L = dL/dh_L                               the true loss gradient at the top
    loss_M   = mean ||M_i(h_i) - target_i||^2

--task mnist: the paper's 3-layer nets (Linear, BatchNorm, ReLU); backprop, DNI and cDNI side by
side, each on its own clock, logging cos(M_i(h_i), dL/dh_i) and |M_i(h_i)| / |dL/dh_i|. DNI's layers
learn below its head's --lr (layer 1 x --first-lr-scale 1/30, the others x --hidden-lr-scale 1/3;
paper: 1), its modules at --sg-lr 1e-3 (paper: --lr): Adam moves each weight ~lr a step however
wrong g_i is, and layer 1 (784 dense inputs) moves fastest; at 1, M_1's ReLUs die (README.md).
--task lumpy: the reference's f: [-1, 1]^2 -> R; DNI, here or as the three processes (--async,
over shared memory), races to backprop's final test MSE.

    python synthgrad_demo.py --dataset fashion-mnist
    python synthgrad_demo.py --task lumpy --async --plot
"""
import copy
import itertools
import math

from common import cli

TASK_DEFAULTS = {"mnist": dict(iterations=16_000, batch_size=256, lr=3e-5, eval_every=500, sg_lr=1e-3,
                               first_lr_scale=1 / 30, hidden_lr_scale=1 / 3, dataset="mnist"),
                 "lumpy": dict(iterations=15_000, batch_size=100, lr=3e-3, eval_every=500,
                               first_lr_scale=1, hidden_lr_scale=1)}


def build_parser():
    parser = cli.make_parser(__doc__, iterations=None, batch_size=None, lr=None, eval_every=None)
    parser.set_defaults(dataset=None)   # None: not given, so that the lumpy task can refuse it
    add = parser.add_argument_group("synthetic gradients", "defaults (mnist | lumpy): --iterations 16000 | "
                                    "15000, --batch-size 256 | 100, --lr 3e-5 | 3e-3, --eval-every 500 | 500"
                                    ).add_argument
    pos, num = cli.positive_int, cli.positive_float
    add("--task", choices=("mnist", "lumpy"), default="mnist",
        help="mnist: the paper's nets on --dataset (mnist unless given); lumpy: the reference's function")
    add("--method", choices=("backprop", "dni", "cdni", "all"), default="all",
        help="all: every method on the same batches (lumpy: backprop and dni)")
    add("--layers", type=pos, default=3, help="mnist: hidden layers")
    add("--width", type=pos, default=256, help="mnist: units per hidden layer")
    add("--sg-hidden", type=pos, default=256, help="mnist: units of the DNI module's 2 hidden layers")
    add("--sg-lr", type=num, help="modules' learning rate, not --lr (mnist 1e-3; lumpy --lr; paper: = --lr)")
    add("--first-lr-scale", type=num, help="mnist: DNI's layer 1: --lr x this (1/30; paper: 1); modules: --sg-lr")
    add("--hidden-lr-scale", type=num, help="mnist: DNI's other layers: --lr x this (1/3; paper: 1); modules: --sg-lr")
    add("--optimizer", choices=("adam", "sgd"), default="adam", help="lumpy: optimizer of every part")
    add("--async", dest="run_async", action="store_true", help="lumpy: run DNI as three processes")
    add("--oracle-memory", type=pos, default=20_000, help="lumpy: latest true gradients the oracle trains on")
    add("--output-memory", type=pos, default=20_000, help="lumpy --async: latest (h1, y) layers 2-3 train on")
    add("--max-time-ratio", type=num, default=5.0, help="lumpy: DNI's time budget, in backprop's times")
    add("--eval-seconds", type=num, default=0.25, help="lumpy --async: measure test MSE this often")
    add("--queue-slots", type=pos, default=8, help="lumpy --async: messages a channel holds before it drops")
    return parser


def validate(args):
    """How the flags combine, checked before anything is loaded or written; then the task's defaults."""
    lumpy, refuse = args.task == "lumpy", cli.UserError
    if lumpy and args.method == "cdni":
        raise refuse("--method cdni: the lumpy task has no label to condition on; use dni, backprop or all")
    if lumpy and args.dataset is not None:
        raise refuse(f"--dataset {args.dataset}: the lumpy task makes its own data; leave --dataset out")
    if lumpy and (args.first_lr_scale or args.hidden_lr_scale) is not None:
        raise refuse("--first/--hidden-lr-scale: the lumpy task's one DNI layer learns at --lr; leave them out")
    if lumpy and args.device not in ("auto", "cpu"):
        raise refuse(f"--device {args.device}: the lumpy task runs on the CPU; use --device cpu")
    if args.run_async and not lumpy:
        raise refuse("--async: only the lumpy task runs as three processes; add --task lumpy")
    if args.run_async and args.method == "backprop":
        raise refuse("--async --method backprop: backprop has nothing to decouple; use --method dni or all")
    vars(args).update({k: v for k, v in TASK_DEFAULTS[args.task].items() if getattr(args, k) is None})


if __name__ == "__main__":  # a bad flag is refused before the 2-3 s of `import torch` below
    cli.check_flags(build_parser(), validate)
import torch
import torch.nn.functional as F
from torch import nn
from common.data import Batches, load_data, lumpy_data, lumpy_function
from common.models import make_optimizer, mlp, mlp_blocks_and_head
from common.plots import plot_run, plot_series, plot_surfaces, series_by, series_columns
from common.clocks import Clock
from common.evaluation import eval_mode, evaluate
from common.run_folder import Run
from common.shm_channel import Memory, Workers


# ----------------------------------------------------------------------------- networks (MNIST's: common.models)
def lumpy_nets(seed):
    """The reference's split (input process: layer 1, output process: layers 2-3) and its oracle."""
    torch.manual_seed(seed)
    blocks = nn.ModuleList([nn.Sequential(nn.Linear(2, 24), nn.Sigmoid())])
    head = nn.Sequential(nn.Linear(24, 12), nn.Sigmoid(), nn.Linear(12, 1))
    return blocks, head, SyntheticGradient(24, [12], activation=nn.Sigmoid)


class SyntheticGradient(nn.Module):
    """M(h) or, conditioned (cDNI), M(h, y): a per-example prediction of dL/dh. Its last layer
    starts at zero, as in the paper: the layer below stands still until M has learnt."""

    def __init__(self, size, hidden, activation=nn.ReLU, num_classes=0):
        super().__init__()
        self.num_classes = num_classes  # > 0: cDNI, the label is an input
        self.net = mlp([size + num_classes, *hidden, size], activation)
        for parameter in self.net[-1].parameters():
            nn.init.zeros_(parameter)

    def forward(self, h, y=None):
        if self.num_classes:
            h = torch.cat([h, F.one_hot(y, self.num_classes).to(h.dtype)], 1)
        return self.net(h)


# ----------------------------------------------------------------------------- the two updates
def backprop_step(net, loss_fn, optimizer, x, y):
    """Plain backprop: every layer waits for the loss and the whole backward pass."""
    loss = loss_fn(net(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def dni_step(blocks, head, loss_fn, optimizers, x, y, synthetic, synth_optimizer=None):
    """Layer i updates once its own forward is done, from synthetic(i, h_i, y) (a per-example dL/dh_i;
    optimizers: one per block, one for the head); then the modules regress onto the gradients sent back."""
    batch, predictions, targets, h_below = len(x), [], [], x
    for i, block in enumerate(blocks):
        h_below = h_below.detach().requires_grad_(i > 0)   # nothing flows further down
        h = block(h_below)
        g_hat = synthetic(i, h.detach(), y)
        optimizers[i].zero_grad(set_to_none=True)
        # The update unlocking: theta_i moves now, from M_i's guess; no layer above has run.
        h.backward(g_hat.detach() / batch)
        optimizers[i].step()
        if i > 0:  # what layer i sends back to M_{i-1}: g_i^T dh_i/dh_{i-1}, per example
            targets.append(h_below.grad * batch)
        predictions.append(g_hat)
        h_below = h
    # Above the last hidden layer: the true loss gradient.
    h_below = h_below.detach().requires_grad_()
    loss = loss_fn(head(h_below), y)
    optimizers[-1].zero_grad(set_to_none=True)
    loss.backward()
    optimizers[-1].step()
    targets.append(h_below.grad * batch)
    synth_loss = 0.0
    if synth_optimizer is not None:
        # loss_M = sum_i mean ||M_i(h_i) - target_i||^2 (targets are constants)
        total = sum(F.mse_loss(p, t) for p, t in zip(predictions, targets))
        synth_optimizer.zero_grad(set_to_none=True)
        total.backward()
        synth_optimizer.step()
        synth_loss = total.item()
    return loss.item(), synth_loss


def true_gradients(blocks, head, loss_fn, x, y):
    """Per-example dL/dh_i by full backprop, leaving weights and BatchNorm statistics as they were."""
    buffers = [b.clone() for b in blocks.buffers()]
    hs = list(itertools.accumulate(blocks, lambda h, block: block(h), initial=x))[1:]
    grads = torch.autograd.grad(loss_fn(head(hs[-1]), y), hs)
    with torch.no_grad():
        for b, saved in zip(blocks.buffers(), buffers):
            b.copy_(saved)
    return [g * len(x) for g in grads], [h.detach() for h in hs]


def gradient_quality(blocks, head, loss_fn, synth, x, y):
    """Per layer, over the whole batch flattened: {"cos": cos(M_i(h_i), dL/dh_i),
    "ratio": |M_i(h_i)| / |dL/dh_i|}. A module that died predicts a constant: both near 0."""
    grads, hs = true_gradients(blocks, head, loss_fn, x, y)
    with torch.no_grad():
        return [{"cos": F.cosine_similarity(m(h, y).flatten(), g.flatten(), dim=0).item(),
                 "ratio": (m(h, y).norm() / g.norm()).item()} for m, h, g in zip(synth, hs, grads)]


class Learner:
    """One method: its network, its update (backprop, or DNI with the modules `synth`) and its clock.
    step(x, y) updates on that clock and returns {method: its loss} (DNI: and {method_sg: M's loss})."""

    def __init__(self, method, blocks, head, synth, loss_fn, kind, args, device):
        self.method, self.blocks, self.head, self.synth = method, blocks, head, synth
        self.net, self.clock = nn.Sequential(*blocks, head), Clock(device)
        if method == "backprop":
            optimizer = make_optimizer(self.net.parameters(), kind, args.lr)
            self.update = lambda x, y: [backprop_step(self.net, loss_fn, optimizer, x, y)]
        else:
            scales = [args.first_lr_scale] + [args.hidden_lr_scale] * (len(blocks) - 1) + [1]   # the head: 1
            self.optimizers = optimizers = [make_optimizer(m.parameters(), kind, args.lr * (
                scale if method == "dni" else 1)) for m, scale in zip([*blocks, head], scales)]
            synth_optimizer = make_optimizer(synth.parameters(), kind, args.sg_lr)
            self.update = lambda x, y: dni_step(blocks, head, loss_fn, optimizers, x, y,
                                                lambda i, h, y: synth[i](h, y), synth_optimizer)

    def step(self, x, y):
        with self.clock:
            return dict(zip([self.method, f"{self.method}_sg"], self.update(x, y)))


# ----------------------------------------------------------------------------- task 1: MNIST family
def run_mnist(args, device, methods):
    data = load_data(args.dataset, args.data_dir, device, flat=True)
    learners = []
    for method in methods:
        torch.manual_seed(args.seed)  # every method starts from the same weights
        blocks, head = mlp_blocks_and_head(data.input_size, args.width, args.layers, data.num_classes)
        classes, hidden = (data.num_classes, []) if method == "cdni" else (0, [args.sg_hidden] * 2)
        synth = None if method == "backprop" else nn.ModuleList(   # cDNI's M: one linear map
            SyntheticGradient(args.width, hidden, num_classes=classes) for _ in blocks)
        learners.append(Learner(method, blocks, head, synth, F.cross_entropy, "adam", args, device))
    batches = Batches(data.train_x, data.train_y, args.batch_size, args.seed)
    with Run(args, "synthgrad_demo", device, total=args.iterations) as run:
        def draw(folder):   # --plot: the accuracy curves, and how good each module's gradient is
            plot_run(folder, f"synthgrad_demo on {args.dataset}, seed {args.seed}", run.summary["clock_columns"])
            for stat, what in (("cos", "cosine with the true gradient"), ("ratio", "|synthetic| / |true|")):
                plot_series(folder / f"gradient_{stat}.png", series_columns(run.rows, "iteration", f"{stat}/"),
                            "iteration", f"{what}, per module (dni/h1 = M_1)")
        run.draw, run.clock_of = draw, lambda method: f"sec/{method}"
        for step, (x, y) in zip(run.steps(), batches):   # the same batch for every method
            losses, extra = {}, {}
            for learner in learners:
                losses.update(learner.step(x, y))
            if step % args.eval_every == 0 or step == args.iterations:
                accuracy = {}
                with run.evaluating():
                    for l in learners:
                        with eval_mode(l.net):
                            accuracy[l.method] = evaluate(l.net, data.test_x, data.test_y)[1]
                        extra[f"sec/{l.method}"] = round(l.clock.seconds, 2)
                        if l.method != "backprop":
                            quality = gradient_quality(l.blocks, l.head, F.cross_entropy, l.synth, x, y)
                            extra.update({f"{k}/{l.method}/h{i + 1}": round(v, 3)
                                          for i, layer in enumerate(quality) for k, v in layer.items()})
                run.log(step, batches.epoch, accuracy=accuracy, losses=losses, quiet=extra)
                run.summary["seconds_per_method"] = {l.method: round(l.clock.seconds, 2) for l in learners}

        # For the results table: each method against the paper's, and on its own clock.
        paper = {"backprop": "98.0", "dni": "97.8", "cdni": "~98.0"}
        for name, value in run.summary["test_accuracy"].items():
            run.declare_row(name, "test accuracy", round(100 * value, 4), "%",
                            f"{paper[name]} % on MNIST, 3-layer FCN (Jaderberg et al. 2016)", headline=True)
            run.declare_row(name, "own training seconds", run.summary["seconds_per_method"][name], "s")
        run.time_to_target([("dni", "backprop"), ("cdni", "backprop")])


# ----------------------------------------------------------------------------- task 2: the lumpy function
@torch.no_grad()
def measure(blocks, head, data, histories, method, seconds):
    """Test MSE; keeps a copy of the net in histories[method], for the surfaces --plot draws."""
    net = nn.Sequential(blocks[0], head)
    histories.setdefault(method, []).append((seconds, copy.deepcopy(net).requires_grad_(False)))
    return F.mse_loss(net(data[2]), data[3]).item()


def run_lumpy_sync(args, run, method, data, histories, budget=None, target=None):
    """Backprop (for --iterations) or DNI (until the target MSE, or out of budget: seconds None) here."""
    blocks, head, oracle = lumpy_nets(args.seed)
    learner = Learner(method, blocks, head, nn.ModuleList([oracle]), F.mse_loss, args.optimizer, args, run.device)
    for step, (x, y) in enumerate(Batches(*data[:2], args.batch_size, args.seed), 1):   # until a return
        loss = learner.step(x, y)[method]
        if step % args.eval_every == 0:
            seconds = learner.clock.seconds
            with run.evaluating():
                mse = measure(blocks, head, data, histories, method, seconds)
            run.log(step, step * args.batch_size / len(data[0]), losses={f"train_{method}": loss},
                    extra={"method": method, "test_mse": mse, "method_seconds": round(seconds, 3)})
            if method == "backprop" and step >= args.iterations:
                return mse, seconds
            if method != "backprop" and (mse <= target or seconds >= budget):
                return mse, (seconds if mse <= target else None)


# ------------------------------------------------------------------------ task 2, --async: three processes
def input_process(me, args, block, data, to_output, ask, answer):
    """Layer 1: forward, fire h1 at the output process, ask the oracle and wait, update, repeat."""
    optimizer = make_optimizer(block.parameters(), args.optimizer, args.lr)
    stream, dropped = iter(Batches(*data, args.batch_size, args.seed)), 0
    me.start()
    while me.alive():
        x, y = next(stream)
        h = block(x)
        dropped += not to_output.send(h.detach(), y, timeout=0)   # fire-and-forget: dropped when full
        g_hat = ask.request(answer, h.detach(), alive=me.alive)   # synchronous: waits for the oracle's M(h1)
        optimizer.zero_grad(set_to_none=True)
        h.backward(g_hat[0] / args.batch_size)
        optimizer.step()
        me.step(lambda: f"dropped {dropped} messages to output")


def output_process(me, args, head, from_input, to_oracle):
    """Layers 2-3: keep the latest (h1, y) received, train over them, send true dL/dh1 to the oracle."""
    optimizer = make_optimizer(head.parameters(), args.optimizer, args.lr)
    memory, generator = Memory(args.output_memory, 24, 1), torch.Generator().manual_seed(args.seed + 1)
    me.start()
    while me.alive():
        memory.extend(from_input.drain(wait=0 if memory.size else 0.5))   # wait only while it has nothing
        if not memory.size:
            continue
        h, y = memory.sample(args.batch_size, generator)
        loss = F.mse_loss(head(h.requires_grad_()), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        to_oracle.send(h.detach(), h.grad * args.batch_size, timeout=0)   # fire-and-forget
        me.step(lambda: f"{memory.size} examples held, train mse {loss.item():.4f}")


def oracle_process(me, args, oracle, ask, answer, from_output):
    """Answer gradient requests with the latest weights; train on the true gradients received."""
    optimizer = make_optimizer(oracle.parameters(), args.optimizer, args.sg_lr)
    memory, generator = Memory(args.oracle_memory, 24, 24), torch.Generator().manual_seed(args.seed + 2)
    me.start()
    while me.alive():
        ask.serve(answer, oracle, timeout=0 if memory.size else 0.01)   # first a request: layer 1 waits on it
        memory.extend(from_output.drain(limit=len(from_output.buffers[0])))   # then the true gradients
        if memory.size:
            h, g = memory.sample(args.batch_size, generator)
            loss = F.mse_loss(oracle(h), g)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            me.step(lambda: f"gradient mse {loss.item():.3g}")


def run_lumpy_async(args, run, method, data, histories, budget, target):
    """DNI as the three processes, wired as the reference wires them; this one measures their test MSE."""
    blocks, head, oracle = lumpy_nets(args.seed)
    workers, b, slots = Workers(threads=args.threads or 1), args.batch_size, args.queue_slots
    to_output, to_oracle = workers.channel(slots, (b, 24), (b, 1)), workers.channel(slots, (b, 24), (b, 24))
    ask, answer = workers.channel(1, (b, 24)), workers.channel(1, (b, 24))   # one request at a time
    workers.add("input", input_process, args, blocks[0], data[:2], to_output, ask, answer, shares=blocks[0])
    workers.add("output", output_process, args, head, to_output, to_oracle, shares=head)
    workers.add("oracle", oracle_process, args, oracle, ask, answer, to_oracle)
    with workers:
        run.print("processes: " + ", ".join(f"{n} pid {p.pid}" for n, p in workers.processes.items()))
        for seconds, steps in workers.ticks(args.eval_seconds):
            mse = measure(blocks, head, data, histories, method, seconds)
            run.log(steps["input"], steps["input"] * b / len(data[0]), losses={},
                    extra={"method": method, "test_mse": mse, "method_seconds": round(seconds, 3),
                           "output_steps": steps["output"], "oracle_steps": steps["oracle"]})
            if not math.isfinite(mse):
                raise cli.Diverged(f"the three processes' test MSE became {mse} after {seconds:.1f} s")
            if mse <= target or seconds >= budget:
                return mse, (seconds if mse <= target else None)


def run_lumpy(args, methods):
    data = lumpy_data(args.seed)
    with Run(args, "synthgrad_demo", torch.device("cpu"), total=None) as run:
        run.summary["dataset"] = "lumpy"
        histories = {}   # {method: [(seconds, a copy of the net), ...]}, one per measurement

        def draw(folder):   # --plot: the target beside each method's surface at four moments; test MSE
            plot_surfaces(folder / "surfaces.png", lumpy_function, histories)
            plot_series(folder / "curves.png", series_by(run.rows, "method", "method_seconds", "test_mse"),
                        "training seconds (own clock)", "test MSE", logy=True)
        run.draw = draw
        target, bp_seconds = run_lumpy_sync(args, run, "backprop", data, histories)
        mse, seconds = {"backprop": target}, {"backprop": bp_seconds}
        budget = args.max_time_ratio * bp_seconds
        run.print(f"target: test MSE {target:.5f} (backprop, {bp_seconds:.1f} s); DNI gets {budget:.1f} s")
        if "dni" in methods:
            name, race = ("dni_async", run_lumpy_async) if args.run_async else ("dni", run_lumpy_sync)
            mse[name], seconds[name] = race(args, run, name, data, histories, budget, target)
        ratio = {k: (round(v / bp_seconds, 3) if v else None) for k, v in seconds.items()}
        run.summary.update(test_mse=mse, seconds_to_target=seconds, time_ratio_to_backprop=ratio)
        for k, v in seconds.items():
            run.print(f"{k:>10}: final test MSE {mse[k]:.5f}, " + (
                f"reached {target:.5f} in {v:.1f} s = {v / bp_seconds:.2f}x backprop" if v else
                f"did not reach {target:.5f} within {budget:.1f} s"))
            run.declare_row(k, "test MSE", round(mse[k], 6), "")
            run.declare_row(k, "time to backprop's final MSE, ÷ backprop's", ratio[k], "x",
                            headline=k != "backprop")
        run.baseline = "backprop"


def main(argv=None):
    args, device = cli.setup(build_parser(), "synthgrad_demo", argv, validate=validate)
    args.sg_lr = args.sg_lr or args.lr   # lumpy: the oracle learns at --lr unless told otherwise
    methods = ["backprop", "dni", "cdni"] if args.method == "all" else [args.method]
    # the lumpy task: always on the CPU, and its Run records so, whatever --device says
    run_lumpy(args, methods) if args.task == "lumpy" else run_mnist(args, device, methods)


if __name__ == "__main__":
    cli.run_script(main)
