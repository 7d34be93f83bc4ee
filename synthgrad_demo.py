"""synthgrad_demo.py: decoupled neural interfaces with synthetic gradients, in one process and in three.

Docs: README.md, section "synthgrad_demo.py". Reproduces Jaderberg et al.
2016, "Decoupled Neural Interfaces using Synthetic Gradients" (arXiv
1608.05343), and the synthetic-gradient seed (shared/seeds/001_d93639212ea39cee.txt:
Python 2 + numpy, three processes talking JSON over HTTP).

A layer normally waits for the whole forward and backward pass above it
before it may update (update locking). With a synthetic gradient module M_i
after hidden layer i, it does not wait:

    h_i     = f_i(h_{i-1})                       forward of layer i only
    g_i     = M_i(h_i)          (DNI)            predicted dL/dh_i
    g_i     = A_i h_i + C_i onehot(y) + b_i      (cDNI: also sees the label)
    theta_i <- Adam(theta_i, g_i^T dh_i/dtheta_i)   update now, layers above untouched

and M_i learns by regression onto the gradient the layer above sends back,

    target_i = g_{i+1}^T dh_{i+1}/dh_i     (bootstrapped from M_{i+1}),
    target_L = dL/dh_L                     (true loss gradient above the last hidden layer),
    loss_M   = mean ||M_i(h_i) - target_i||^2.

Gradients are per example (the gradient of that example's own loss); the
layer applies g_i / batch, which is what a mean loss would give it.

--task mnist (default): 784 -> (Linear, BatchNorm, ReLU) x --layers -> 10,
Adam, as the paper's fully connected nets. --method all trains backprop, DNI
and cDNI side by side on the same batches from the same initial weights, and
prints per-layer cosine(synthetic, true gradient).
Deviations from the paper, with the flag that restores it: lr 3e-4 and
3,000 iterations instead of 3e-5 and 500k (--lr 3e-5 --iterations 500000);
the gradient modules learn at 3e-3 (--sg-lr 3e-5: the paper used one rate;
at 3e-4 the DNI module barely learnt in our short runs); DNI module hidden
width 256 instead of 1024 (--sg-hidden 1024), to fit about 3 minutes on 2
CPU cores. Batch 256, 3 layers of 256, BatchNorm, Adam and the
zero-initialised last layer of each module are the paper's.
cos(synthetic, true) is measured on the current training batch, over the
whole batch's gradient flattened, with the true gradient from full backprop.
Paper (MNIST, 3 layers, test error): backprop 2.0 %, DNI 2.2 %, cDNI ~2.0 %.

--task lumpy: the seed's experiment. f(x, y) on [-1, 1]^2, 200,000 uniform
samples, net 2 -> 24 (sigmoid) | 24 -> 12 (sigmoid) -> 1, MSE; the gradient
model ("oracle") 24 -> 12 (sigmoid) -> 24. Backprop runs --iterations steps;
its final test MSE is the target that DNI must reach, and the script reports
the time each DNI variant takes to reach it as a ratio to backprop's time.
Without --async DNI runs in this process; with --async it runs as the seed's
three processes (input, output, oracle), talking through shared-memory
tensors and torch.multiprocessing queues instead of JSON over HTTP.
Deviations from the seed: Adam lr 3e-3 and batch 100 everywhere (seed: SGD
lr 0.001, batch 10 on the input side: --optimizer sgd --lr 0.001 --batch-size 10);
a separate test set of 20,000 points; the oracle remembers the last
--oracle-memory 20,000 true gradients, and the output process trains over
the last --output-memory 20,000 activations it received instead of all of
them (--output-memory 200000: with all of them, the oldest activations,
made by a long-gone layer 1, held it back). The clock of the --async run
starts when all three processes are up (fork start-up is not training) and
runs until this process's test MSE, measured every --eval-seconds on
weights the workers publish to shared memory, reaches the target.
The lumpy task always runs on the CPU.

    python synthgrad_demo.py --dataset fashion-mnist
    python synthgrad_demo.py --task lumpy --plot
    python synthgrad_demo.py --task lumpy --async --plot

Measured results, commands and hardware: README.md, "synthgrad_demo.py".
"""
import math
import os
import queue
import signal
import sys
import time
import warnings

import numpy as np
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from common import cli
from common.data import Batches, load_data
from common.run_folder import Run, evaluate

METHODS = ("backprop", "dni", "cdni", "all")


def build_parser():
    parser = cli.make_parser(__doc__, iterations=None, batch_size=None, lr=None,
                             eval_every=None)
    group = parser.add_argument_group("synthetic gradients (defaults per task in the docstring)")
    group.add_argument("--task", choices=("mnist", "lumpy"), default="mnist",
                       help="mnist: the paper's fully connected nets; lumpy: the seed's R^2 -> R function")
    group.add_argument("--method", choices=METHODS, default="all",
                       help="all trains every method on the same batches (lumpy: backprop and dni)")
    group.add_argument("--layers", type=cli.positive_int, default=3, help="mnist: hidden layers")
    group.add_argument("--width", type=cli.positive_int, default=256, help="mnist: hidden units per layer")
    group.add_argument("--sg-hidden", type=cli.positive_int, default=256,
                       help="mnist: hidden units of the DNI module's two hidden layers (paper: 1024)")
    group.add_argument("--sg-lr", type=cli.positive_float, default=None,
                       help="learning rate of the gradient modules (default: mnist 3e-3, lumpy --lr)")
    group.add_argument("--optimizer", choices=("adam", "sgd"), default="adam",
                       help="lumpy: optimizer of every part (the seed used sgd)")
    group.add_argument("--async", dest="run_async", action="store_true",
                       help="lumpy: run DNI as three processes (input, output, oracle)")
    group.add_argument("--oracle-memory", type=cli.positive_int, default=20_000,
                       help="lumpy: true gradients the oracle keeps to train on")
    group.add_argument("--output-memory", type=cli.positive_int, default=20_000,
                       help="lumpy --async: latest (h1, y) the output process trains over (seed: all)")
    group.add_argument("--max-time-ratio", type=cli.positive_float, default=5.0,
                       help="lumpy: give DNI up to this many times backprop's training time")
    group.add_argument("--eval-seconds", type=cli.positive_float, default=0.25,
                       help="lumpy --async: measure test MSE this often")
    group.add_argument("--queue-slots", type=cli.positive_int, default=8,
                       help="lumpy --async: messages each one-way channel holds before it drops")
    return parser


TASK_DEFAULTS = {"mnist": dict(iterations=3000, batch_size=256, lr=3e-4, eval_every=250),
                 "lumpy": dict(iterations=15_000, batch_size=100, lr=3e-3, eval_every=500)}
SG_LR = {"mnist": 3e-3, "lumpy": None}   # None: the same as --lr


# ----------------------------------------------------------------------------- networks
def mnist_net(input_size, width, layers, num_classes):
    """Hidden blocks (Linear, BatchNorm, ReLU) and the output layer, kept apart."""
    sizes = [input_size] + [width] * layers
    blocks = nn.ModuleList(nn.Sequential(nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU())
                           for a, b in zip(sizes[:-1], sizes[1:]))
    return blocks, nn.Linear(width, num_classes)


def lumpy_net():
    """The seed's split: train_input owns layer 1, train_output owns layers 2 and 3."""
    blocks = nn.ModuleList([nn.Sequential(nn.Linear(2, 24), nn.Sigmoid())])
    return blocks, nn.Sequential(nn.Linear(24, 12), nn.Sigmoid(), nn.Linear(12, 1))


class SyntheticGradient(nn.Module):
    """M(h) or, conditioned (cDNI), M(h, y): a per-example prediction of dL/dh.

    The last layer starts at zero, as in the paper: a fresh module predicts
    a zero gradient, so the layer below stands still until M has learnt.
    """

    def __init__(self, size, hidden, activation=nn.ReLU, num_classes=0):
        super().__init__()
        self.num_classes = num_classes  # > 0: cDNI, the label is an input
        sizes = [size + num_classes, *hidden, size]
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(activation())
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)
        self.net = nn.Sequential(*layers)

    def forward(self, h, y=None):
        if self.num_classes:
            h = torch.cat([h, F.one_hot(y, self.num_classes).to(h.dtype)], 1)
        return self.net(h)


def make_optimizer(params, kind, lr):
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr)
    # fused=True: one kernel updates every parameter; the CPU step is much faster.
    return torch.optim.Adam(params, lr=lr, fused=True)


# ----------------------------------------------------------------------------- the two updates
def backprop_step(blocks, head, loss_fn, optimizer, x, y):
    """Plain backprop: every layer waits for the loss and the whole backward pass."""
    h = x
    for block in blocks:
        h = block(h)
    loss = loss_fn(head(h), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def dni_step(blocks, head, loss_fn, optimizers, x, y, synthetic, synth_optimizer=None):
    """One DNI step. Layer i updates as soon as its own forward is done.

    synthetic(i, h_i, y) -> predicted per-example dL/dh_i. optimizers holds
    one optimizer per block and one for the head. If synth_optimizer is
    given, the synthetic modules then regress onto the gradients sent back.
    Returns (task loss, synthetic-gradient loss).
    """
    batch = len(x)
    predictions, targets = [], []
    h_below = x
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
    hs, h = [], x
    for block in blocks:
        h = block(h)
        hs.append(h)
    grads = torch.autograd.grad(loss_fn(head(h), y), hs)
    with torch.no_grad():
        for b, saved in zip(blocks.buffers(), buffers):
            b.copy_(saved)
    return [g * len(x) for g in grads], [h.detach() for h in hs]


def gradient_cosines(blocks, head, loss_fn, synth, x, y):
    """cos(M_i(h_i), dL/dh_i) per layer, over the whole batch flattened."""
    grads, hs = true_gradients(blocks, head, loss_fn, x, y)
    with torch.no_grad():
        return [F.cosine_similarity(m(h, y).flatten(), g.flatten(), dim=0).item()
                for m, h, g in zip(synth, hs, grads)]


# ----------------------------------------------------------------------------- task 1: MNIST family
class Learner:
    """One method's network, optimizers and training clock."""

    def __init__(self, method, args, data, seed):
        torch.manual_seed(seed)  # every method starts from the same weights
        self.method = method
        self.blocks, self.head = mnist_net(data.input_size, args.width, args.layers, data.num_classes)
        self.seconds = 0.0
        if method == "backprop":
            self.optimizer = make_optimizer([*self.blocks.parameters(), *self.head.parameters()],
                                            "adam", args.lr)
            return
        classes = data.num_classes if method == "cdni" else 0
        hidden = [] if method == "cdni" else [args.sg_hidden] * 2  # cDNI: one linear map
        self.synth = nn.ModuleList(SyntheticGradient(args.width, hidden, num_classes=classes)
                                   for _ in self.blocks)
        self.optimizers = [make_optimizer(m.parameters(), "adam", args.lr)
                           for m in [*self.blocks, self.head]]
        self.synth_optimizer = make_optimizer(self.synth.parameters(), "adam", args.sg_lr)

    def step(self, x, y):
        began = time.perf_counter()
        if self.method == "backprop":
            losses = (backprop_step(self.blocks, self.head, F.cross_entropy, self.optimizer, x, y),)
        else:
            losses = dni_step(self.blocks, self.head, F.cross_entropy, self.optimizers, x, y,
                              lambda i, h, y: self.synth[i](h, y), self.synth_optimizer)
        self.seconds += time.perf_counter() - began
        return losses

    def predict(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    def train(self, mode):
        self.blocks.train(mode)


def run_mnist(args, device, methods):
    data = load_data(args.dataset, args.data_dir, device, flat=True)
    learners = [Learner(m, args, data, args.seed) for m in methods]
    stream = iter(Batches(data.train_x, data.train_y, args.batch_size, args.seed))
    served = 0
    with Run(args, "synthgrad_demo", device, total=args.iterations) as run:
        for step in run.steps():
            x, y = next(stream)   # the same batch for every method
            served += len(x)
            losses, extra = {}, {}
            for learner in learners:
                out = learner.step(x, y)
                losses[learner.method] = out[0]
                if learner.method != "backprop":
                    losses[f"{learner.method}_sg"] = out[1]
            if step % args.eval_every == 0 or step == args.iterations:
                accuracy = {}
                with run.evaluating():
                    for learner in learners:
                        learner.train(False)
                        accuracy[learner.method] = evaluate(learner.predict, data.test_x, data.test_y)[1]
                        learner.train(True)
                        extra[f"sec/{learner.method}"] = round(learner.seconds, 2)
                        if learner.method != "backprop":
                            cos = gradient_cosines(learner.blocks, learner.head, F.cross_entropy,
                                                   learner.synth, x, y)
                            extra.update({f"cos/{learner.method}/h{i + 1}": round(c, 3)
                                          for i, c in enumerate(cos)})
                run.log(step, served / len(data.train_x), accuracy=accuracy, losses=losses, extra=extra)
                run.summary["seconds_per_method"] = {l.method: round(l.seconds, 2) for l in learners}


# ----------------------------------------------------------------------------- task 2: the seed's lumpy function
def lumpy(points):
    """The seed's target f: [-1, 1]^2 -> R (REFERENCE.md, "Synthetic gradients")."""
    x, y = points[:, 0], points[:, 1]
    r, theta = torch.sqrt(x ** 2 + y ** 2), torch.atan2(y, x)
    a = torch.sin(4 * r ** 2 - 0.25 * r)
    b = torch.sin(2 * theta) * torch.sin(theta)
    c = torch.cos(6 * (theta + 0.1))
    k = 0.3 * (torch.sin(theta) + 1)
    return (k * a + (1 - k) / 2 * b + (1 - k) / 2 * c).unsqueeze(1)


def lumpy_data(seed, n_train=200_000, n_test=20_000):
    generator = torch.Generator().manual_seed(seed)
    train_x = torch.rand(n_train, 2, generator=generator) * 2 - 1
    test_x = torch.rand(n_test, 2, generator=generator) * 2 - 1
    return train_x, lumpy(train_x), test_x, lumpy(test_x)


def lumpy_oracle():
    return SyntheticGradient(24, [12], activation=nn.Sigmoid)


@torch.no_grad()
def test_mse(blocks, head, x, y):
    return F.mse_loss(head(blocks[0](x)), y).item()


def run_lumpy_sync(args, run, method, data, budget, target):
    """Backprop or DNI in this process. Stops at --iterations (backprop) or at the target MSE."""
    train_x, train_y, test_x, test_y = data
    torch.manual_seed(args.seed)
    blocks, head = lumpy_net()
    oracle = lumpy_oracle()
    if method == "backprop":
        optimizer = make_optimizer([*blocks.parameters(), *head.parameters()], args.optimizer, args.lr)
    else:
        optimizers = [make_optimizer(m.parameters(), args.optimizer, args.lr) for m in (blocks[0], head)]
        synth_optimizer = make_optimizer(oracle.parameters(), args.optimizer, args.sg_lr)
    stream = iter(Batches(train_x, train_y, args.batch_size, args.seed))
    seconds, reached, history, step = 0.0, None, [], 0
    while True:
        step += 1
        x, y = next(stream)
        began = time.perf_counter()
        if method == "backprop":
            loss = backprop_step(blocks, head, F.mse_loss, optimizer, x, y)
        else:
            loss, _ = dni_step(blocks, head, F.mse_loss, optimizers, x, y,
                               lambda i, h, y: oracle(h), synth_optimizer)
        seconds += time.perf_counter() - began
        if step % args.eval_every == 0:
            with run.evaluating():
                mse = test_mse(blocks, head, test_x, test_y)
                history.append((seconds, snapshot(blocks, head)))
            run.log(step, step * args.batch_size / len(train_x), losses={f"train_{method}": loss},
                    extra={"method": method, "test_mse": mse, "method_seconds": round(seconds, 3)})
            if reached is None and target is not None and mse <= target:
                reached = seconds
            if method == "backprop" and step >= args.iterations:
                return mse, seconds, history
            if method != "backprop" and (reached is not None or seconds >= budget):
                return mse, reached, history


def snapshot(blocks, head):
    return {k: v.detach().clone() for k, v in [*blocks.state_dict().items(),
                                                *[("head." + a, b) for a, b in head.state_dict().items()]]}


# ----------------------------------------------------------------------------- task 2, --async: three processes
class Channel:
    """A bounded one-way channel of fixed-shape tensor messages.

    The data lives in `slots` preallocated shared-memory tensors; the
    torch.multiprocessing queues carry only slot numbers. A message is one
    copy in and one copy out: no pickling, no sockets, no JSON.
    """

    def __init__(self, ctx, slots, *shapes):
        self.buffers = [torch.zeros(slots, *shape).share_memory_() for shape in shapes]
        self.free, self.full = ctx.Queue(slots), ctx.Queue(slots)
        for slot in range(slots):
            self.free.put(slot)

    def send(self, *tensors, timeout=None):
        """Returns False, and drops the message, if no slot frees up in `timeout` (0: fire-and-forget)."""
        try:
            slot = self.free.get(timeout is None or timeout > 0, timeout or None)
        except queue.Empty:
            return False
        for buffer, tensor in zip(self.buffers, tensors):
            buffer[slot].copy_(tensor)
        self.full.put(slot)
        return True

    def receive(self, timeout=None):
        """The next message's tensors; raises queue.Empty after `timeout` (0: do not wait)."""
        slot = self.full.get(timeout is None or timeout > 0, timeout or None)
        out = [buffer[slot].clone() for buffer in self.buffers]
        self.free.put(slot)
        return out


def publish(module, shared):
    with torch.no_grad():
        for p, s in zip(module.state_dict().values(), shared):
            s.copy_(p)


def worker(name, body, stop, parent_pid, threads, *body_args):
    """Process entry: one thread, Ctrl-C left to the parent, exit when the parent is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    alive = lambda: not stop.is_set() and os.getppid() == parent_pid  # noqa: E731
    body(name, alive, *body_args)


def wait_for(event, alive):
    while alive() and not event.wait(0.5):
        pass


def input_process(name, alive, setup, to_output, ask, answer, shared, counter, ready, go):
    """Layer 1: forward, fire h1 at the output process, ask the oracle, update, repeat."""
    block, train_x, train_y, batch, seed, opt, lr = setup
    optimizer = make_optimizer(block.parameters(), opt, lr)
    stream = iter(Batches(train_x, train_y, batch, seed))
    ready.release()
    wait_for(go, alive)
    dropped, began = 0, time.perf_counter()
    while alive():
        x, y = next(stream)
        h = block(x)
        if not to_output.send(h.detach(), y, timeout=0):   # fire-and-forget
            dropped += 1
        while alive() and not ask.send(h.detach(), timeout=0.5):  # synchronous: ask, then wait
            pass
        while alive():
            try:
                (g_hat,) = answer.receive(timeout=0.5)
                break
            except queue.Empty:
                continue
        else:
            return
        optimizer.zero_grad(set_to_none=True)
        h.backward(g_hat / batch)
        optimizer.step()
        publish(block, shared)
        counter[0] += 1
        if counter[0] % 2000 == 0:
            print(f"[{name}] step {int(counter[0])}, {counter[0] / (time.perf_counter() - began):.0f} "
                  f"steps/s, dropped {dropped} messages to output", flush=True)


def output_process(name, alive, setup, from_input, to_oracle, shared, counter, ready, go):
    """Layers 2-3: keep every (h1, y) received, train over them, send true dL/dh1 to the oracle."""
    head, batch, capacity, opt, lr, seed = setup
    optimizer = make_optimizer(head.parameters(), opt, lr)
    store_h, store_y, size, written = torch.zeros(capacity, 24), torch.zeros(capacity, 1), 0, 0
    generator = torch.Generator().manual_seed(seed + 1)
    ready.release()
    wait_for(go, alive)
    began = time.perf_counter()
    while alive():
        try:  # take in what has arrived; wait only while there is nothing to train on
            while True:
                h, y = from_input.receive(timeout=0 if size else 0.5)
                index = torch.arange(written, written + batch) % capacity
                store_h[index], store_y[index] = h, y
                written, size = written + batch, min(size + batch, capacity)
        except queue.Empty:
            if not size:
                continue
        index = torch.randint(size, (batch,), generator=generator)
        h = store_h[index].requires_grad_()
        loss = F.mse_loss(head(h), store_y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        to_oracle.send(h.detach(), h.grad * batch, timeout=0)   # fire-and-forget
        publish(head, shared)
        counter[0] += 1
        if counter[0] % 2000 == 0:
            print(f"[{name}] step {int(counter[0])}, {counter[0] / (time.perf_counter() - began):.0f} "
                  f"steps/s, {size} examples held, train mse {loss.item():.4f}", flush=True)


def oracle_process(name, alive, setup, ask, answer, from_output, counter, ready, go):
    """Answer gradient requests with the latest weights; train on every true gradient received."""
    oracle, batch, memory, opt, lr, seed = setup
    optimizer = make_optimizer(oracle.parameters(), opt, lr)
    store_h, store_g, size, written = torch.zeros(memory, 24), torch.zeros(memory, 24), 0, 0
    generator = torch.Generator().manual_seed(seed + 2)
    ready.release()
    wait_for(go, alive)
    began = time.perf_counter()
    while alive():
        try:  # a pending request first: the input layer is waiting on it
            (h,) = ask.receive(timeout=0 if size else 0.01)
            with torch.no_grad():
                answer.send(oracle(h), timeout=0.5)
        except queue.Empty:
            pass
        try:  # then take in the true gradients that have arrived
            for _ in range(len(from_output.buffers[0])):
                h, g = from_output.receive(timeout=0)
                index = torch.arange(written, written + batch) % memory
                store_h[index], store_g[index] = h, g
                written, size = written + batch, min(size + batch, memory)
        except queue.Empty:
            pass
        if not size:
            continue
        index = torch.randint(size, (batch,), generator=generator)
        loss = F.mse_loss(oracle(store_h[index]), store_g[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        counter[0] += 1
        if counter[0] % 2000 == 0:
            print(f"[{name}] step {int(counter[0])}, {counter[0] / (time.perf_counter() - began):.0f} "
                  f"steps/s, gradient mse {loss.item():.3g}", flush=True)


class WorkerDied(Exception):
    """One of the three processes ended while the others were running."""


def run_lumpy_async(args, run, data, budget, target):
    """The seed's three processes; this one only starts them, watches them and measures test MSE."""
    train_x, train_y, test_x, test_y = data
    torch.manual_seed(args.seed)
    blocks, head = lumpy_net()
    oracle = lumpy_oracle()
    ctx = mp.get_context("fork")  # no re-import in the children: they start in milliseconds
    b, slots = args.batch_size, args.queue_slots
    to_output = Channel(ctx, slots, (b, 24), (b, 1))
    to_oracle = Channel(ctx, slots, (b, 24), (b, 24))
    ask, answer = Channel(ctx, 1, (b, 24)), Channel(ctx, 1, (b, 24))
    shared_in = [t.detach().clone().share_memory_() for t in blocks[0].state_dict().values()]
    shared_out = [t.detach().clone().share_memory_() for t in head.state_dict().values()]
    counters = [torch.zeros(1, dtype=torch.int64).share_memory_() for _ in range(3)]
    stop, go, ready = ctx.Event(), ctx.Event(), ctx.Semaphore(0)
    lr, sg_lr, opt, seed = args.lr, args.sg_lr, args.optimizer, args.seed
    specs = {
        "input": (input_process, (blocks[0], train_x, train_y, b, seed, opt, lr),
                  to_output, ask, answer, shared_in, counters[0]),
        "output": (output_process, (head, b, args.output_memory, opt, lr, seed),
                   to_output, to_oracle, shared_out, counters[1]),
        "oracle": (oracle_process, (oracle, b, args.oracle_memory, opt, sg_lr, seed),
                   ask, answer, to_oracle, counters[2]),
    }
    threads = args.threads or 1
    processes = {name: ctx.Process(target=worker, name=name, daemon=True,
                                   args=(name, body, stop, os.getpid(), threads, *rest, ready, go))
                 for name, (body, *rest) in specs.items()}
    for p in processes.values():
        p.start()
    run.print("processes: " + ", ".join(f"{n} pid {p.pid}" for n, p in processes.items()))
    history, reached, mse = [], None, float("nan")
    try:
        for _ in processes:
            while not ready.acquire(timeout=0.2):
                check_alive(processes)
        go.set()  # the clock starts when all three are ready (process start-up is not training)
        began, last = time.perf_counter(), 0.0
        while True:
            time.sleep(0.02)
            check_alive(processes)
            seconds = time.perf_counter() - began
            if seconds - last < args.eval_seconds:
                continue
            last = seconds
            load(blocks[0], shared_in)
            load(head, shared_out)
            mse = test_mse(blocks, head, test_x, test_y)
            history.append((seconds, snapshot(blocks, head)))
            steps = [int(c[0]) for c in counters]
            run.log(steps[0], steps[0] * b / len(train_x), losses={},
                    extra={"method": "dni_async", "test_mse": mse, "method_seconds": round(seconds, 3),
                           "output_steps": steps[1], "oracle_steps": steps[2]})
            if not math.isfinite(mse):
                raise WorkerDied("test MSE became NaN: the processes diverged; try a lower --lr")
            if mse <= target:
                reached = seconds
                break
            if seconds >= budget:
                break
    finally:
        stop.set()
        for p in processes.values():
            p.join(timeout=5)
        for p in processes.values():
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
    return mse, reached, history


def check_alive(processes):
    for name, p in processes.items():
        if not p.is_alive():
            raise WorkerDied(f"the {name} process (pid {p.pid}) died with exit code {p.exitcode}; "
                             "the other two were stopped")


def load(module, shared):
    with torch.no_grad():
        for p, s in zip(module.state_dict().values(), shared):
            p.copy_(s)


def run_lumpy(args, device, methods):
    # common/'s accuracy plot has nothing to draw here; curves.png is redrawn below with test MSE.
    warnings.filterwarnings("ignore", message="No artists with labels", category=UserWarning)
    data = lumpy_data(args.seed)
    run_async = args.run_async
    with Run(args, "synthgrad_demo", device, total=None) as run:
        run.summary["dataset"] = "lumpy"   # --dataset does not apply to this task
        mse, seconds, histories = {}, {}, {}
        mse["backprop"], bp_seconds, histories["backprop"] = run_lumpy_sync(args, run, "backprop", data,
                                                                            None, None)
        target = mse["backprop"]
        seconds["backprop"] = bp_seconds
        run.print(f"target: backprop's test MSE {target:.5f} after {bp_seconds:.1f} s; "
                  f"DNI gets up to {args.max_time_ratio:g}x that time")
        budget = args.max_time_ratio * bp_seconds
        if "dni" in methods:
            name = "dni_async" if run_async else "dni"
            runner = run_lumpy_async if run_async else (
                lambda a, r, d, bud, t: run_lumpy_sync(a, r, "dni", d, bud, t))
            mse[name], seconds[name], histories[name] = runner(args, run, data, budget, target)
        run.summary["test_mse"] = mse
        run.summary["seconds_to_target"] = seconds
        run.summary["time_ratio_to_backprop"] = {k: (round(v / bp_seconds, 3) if v else None)
                                                  for k, v in seconds.items()}
        for k, v in seconds.items():
            run.print(f"{k:>10}: final test MSE {mse[k]:.5f}, " + (
                f"reached {target:.5f} in {v:.1f} s = {v / bp_seconds:.2f}x backprop" if v else
                f"did not reach {target:.5f} within {budget:.1f} s"))
    if args.plot:
        plot_lumpy(run.dir, histories, data)


def plot_lumpy(folder, histories, data):
    """surfaces.png: target beside the learned surface at four moments; curves.png: test MSE."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    grid = torch.linspace(-1, 1, 121)
    points = torch.stack(torch.meshgrid(grid, grid, indexing="xy"), -1).reshape(-1, 2)
    target = lumpy(points).reshape(121, 121)
    fig, axes = plt.subplots(len(histories), 5, figsize=(15, 3 * len(histories)), squeeze=False)
    for row, (method, history) in enumerate(histories.items()):
        axes[row, 0].imshow(target, extent=(-1, 1, -1, 1), origin="lower", vmin=-1, vmax=1, cmap="viridis")
        axes[row, 0].set_title("target")
        picks = np.unique(np.linspace(0, len(history) - 1, 4).round().astype(int))
        for col, pick in enumerate(picks, 1):
            seconds, state = history[pick]
            blocks, head = lumpy_net()
            blocks.load_state_dict({k: v for k, v in state.items() if not k.startswith("head.")})
            head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
            with torch.no_grad():
                surface = head(blocks[0](points)).reshape(121, 121)
            axes[row, col].imshow(surface, extent=(-1, 1, -1, 1), origin="lower", vmin=-1, vmax=1,
                                  cmap="viridis")
            axes[row, col].set_title(f"{method}, {seconds:.1f} s")
        for axis in axes[row]:
            axis.set_xticks([])
            axis.set_yticks([])
    fig.tight_layout()
    fig.savefig(folder / "surfaces.png", dpi=90)
    plt.close(fig)
    fig, axis = plt.subplots(figsize=(6, 4))
    import csv
    with open(folder / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for method in histories:
        mine = [r for r in rows if r["method"] == method]
        axis.plot([float(r["method_seconds"]) for r in mine], [float(r["test_mse"]) for r in mine], label=method)
    axis.set_xlabel("training seconds")
    axis.set_ylabel("test MSE")
    axis.set_yscale("log")
    axis.grid(alpha=0.3)
    axis.legend()
    fig.tight_layout()
    fig.savefig(folder / "curves.png", dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = build_parser()
    args, device = cli.setup(parser, "synthgrad_demo", argv)
    for key, value in TASK_DEFAULTS[args.task].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.sg_lr is None:
        args.sg_lr = SG_LR[args.task] or args.lr
    if args.task == "lumpy" and args.method == "cdni":
        parser.error("--method cdni: the lumpy task has no label to condition on; "
                     "use --method dni, backprop or all")
    if args.run_async and args.task != "lumpy":
        parser.error("--async: only the lumpy task runs as three processes; add --task lumpy")
    if args.run_async and args.method == "backprop":
        parser.error("--async --method backprop: backprop has nothing to decouple; use --method dni or all")
    if args.run_async and device.type != "cpu":
        parser.error(f"--async --device {args.device}: the three processes run on the CPU; use --device cpu")
    methods = ["backprop", "dni", "cdni"] if args.method == "all" else [args.method]
    if args.task == "mnist":
        run_mnist(args, device, methods)
        return
    try:
        run_lumpy(args, device, methods)
    except WorkerDied as error:
        print(f"synthgrad_demo.py: error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cli.run_script(main)
