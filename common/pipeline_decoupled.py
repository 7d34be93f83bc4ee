"""The decoupled methods of the parallel race: K stages, each a process, each updating from
what it has while the others work. Stage k holds blocks a_k..b_k-1 (its body B_k) and the
head after them (G_k; the last stage's is the output layer); h_k = B_k(h_{k-1}), h_{-1} = x.
Activations go forward over a bounded queue (common/stage_group.Link: --queue waiting at the
receiver, one being received, one send unfinished; a sender further ahead blocks); gradients
or targets, where a method has them, come back one stage over another link. Every update is
--optimizer (Adam) at --lr. The local losses and the synthetic-gradient module are the
scripts' own, imported from them, in plain sight there:

  dgl      Belilovsky et al., arXiv 1901.08164; layerwise_demo.decoupled_losses:
               loss_k = CE(G_k(B_k(sg(h_{k-1}))), y)
           stage k sends h_k on as soon as it is computed, then steps Adam on loss_k.
           Nothing flows back. Stage k's step s reads h_{k-1} as stage k-1 computed it at its
           own step s, before its update s: whatever the timing, exactly what the one-process
           strategy computes (the test checks it).
  predsim  the same with loss_k = (1 - beta) CE + beta sim_k (Nokland & Eidnes, --predsim-beta).
  dni      Jaderberg et al., arXiv 1608.05343; synthgrad_demo.SyntheticGradient M_k on every
           stage but the last (its output layer starts at zero):
               g_k = M_k(h_k)                        (cdni: M_k(h_k, y), linear)
               theta_k <- Adam(g_k^T dh_k/dtheta_k / B)       at once, nothing above has run
           stage k then sends back g_k^T dh_k/dh_{k-1} * B, the bootstrapped target of M_{k-1};
           the last stage sends its true dL/dh_{K-2} * B. When the target of batch s arrives,
               M_k <- Adam(mean ||M_k(h_k(s)) - target||^2)    (--sg-lr)
           A stage keeps (h_k, y) for at most 2 --queue + 2 batches awaiting their targets.
  cdni     the same with M_k(h, y) linear in (h, onehot y).
  ddg      Huo et al., arXiv 1804.10574: stage k < K-1 forwards batch s with its weights w(s)
           at that time (a copy, so its graph survives later updates), sends h_k(s) on and,
           when dL/dh_k(s) arrives from stage k+1, applies the delayed gradient
               w <- Adam(w, dL/dw at w(s))
           and sends dL/dh_{k-1}(s) back. The last stage is backprop on its part. Stage k keeps
           at most K - k batches unanswered (the paper's lockstep: staleness up to K - 1 - k).
           async_mach.py recomputes at the current weights instead; this is the paper's formula.

Timeline: forward, backward, update, synthetic (M's forward), synthetic_learn (its regression), and every
message with its bytes; waits for a neighbour are spans of kind "wait" (common/stage_meters.py).
"""
import collections

import torch
import torch.nn.functional as F
from torch.func import functional_call

from common.models import make_optimizer
from common.stage_group import Link
from common.stage_networks import named_state, split, stage_of
from layerwise_demo import decoupled_losses
from synthgrad_demo import SyntheticGradient

FORWARD_TAG, BACKWARD_TAG = 1, 2
LOCAL_LOSS = {"dgl": "decoupled", "predsim": "predsim"}   # layerwise_demo's names


class Stream:
    """What every decoupled stage shares: its part, its links, its input. `returns`: what its
    method sends back down (None: nothing)."""
    replicated, returns = False, None

    def __init__(self, args, net, rank, data, timeline, meter):
        K, B = args.K, args.batch_size
        self.args, self.net, self.rank, self.data, self.timeline, self.meter = args, net, rank, data, timeline, meter
        bounds, shapes = split(net, K)
        self.body, self.head = stage_of(net, bounds, rank)
        self.first, self.last = rank == 0, rank == K - 1
        self.in_shape, self.out_shape = (shapes[rank - 1] if rank else None), shapes[rank]
        self.loss, self.ready = None, None

        def link(peer, shape, up, receiving):
            """Activations go up; `returns` come down, into room for more than a stage ever leaves
            unanswered (dni 2 --queue + 2, ddg K - k): a returning message never waits, so a
            stage that stops to evaluate cannot block the one above it."""
            return self.open_link(peer, (B, *shape), args.queue if up else 2 * args.queue + 2 + K,
                                  FORWARD_TAG if up else BACKWARD_TAG, "activation" if up else self.returns,
                                  receiving)
        back = self.returns is not None
        self.inbox = None if self.first else link(rank - 1, self.in_shape, True, True)
        self.outbox = None if self.last else link(rank + 1, self.out_shape, True, False)
        self.from_above = link(rank + 1, self.out_shape, False, True) if back and not self.last else None
        self.to_below = link(rank - 1, self.in_shape, False, False) if back and not self.first else None

    def open_link(self, peer, shape, capacity, tag, what, receiving):
        """A gloo link to a neighbour rank (common/stage_replay.py gives an in-process one)."""
        return Link(peer, shape, capacity, self.args.steps, tag, self.timeline, self.args.peer_timeout, what,
                    receiving)

    def train_body(self, scale=1.0):
        """dni, cdni, ddg: the body learns at --lr x scale (and the last stage's head, at --lr:
        a lower stage's is unused)."""
        self.trained = [self.body, self.head] if self.last else [self.body]
        lr = self.args.lr * (1.0 if self.last else scale)
        self.optimizer = make_optimizer([p for m in self.trained for p in m.parameters()], self.args.optimizer, lr)

    def input(self, index):
        """x for the first stage; else the next activation from below (or the one prefetched)."""
        if self.first:
            return self.data.train_x[index]
        x, self.ready = (self.ready, None) if self.ready is not None else (self.inbox.get(), None)
        return x.requires_grad_(self.returns is not None)   # dni, ddg: dL/dh_{k-1} goes back down

    def prefetch(self):
        if not self.first:
            self.ready = self.inbox.get()

    def finish(self):
        for link in (self.outbox, self.to_below):
            if link is not None:
                link.flush()

    def descend(self, loss):
        """Backward and one optimizer step, each a span of the timeline; keep the loss."""
        with self.timeline.span("compute", "backward"):
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        with self.timeline.span("compute", "update"):
            self.optimizer.step()
        self.loss = loss.item()

    def last_stage_step(self, x, y):
        """Backprop on the last stage's part, from its input: returns dL/dh_{K-2} (or None)."""
        span = self.timeline.span
        with span("compute", "forward"):
            loss = F.cross_entropy(self.head(self.body(x)), y)
        self.descend(loss)
        return x.grad

    def eval_parts(self):
        return self.body, self.head if self.last else None

    def state(self):
        return named_state(self.net, self.trained)


class Local(Stream):
    """dgl and predsim: each stage on its own local loss, nothing back."""

    def __init__(self, args, net, rank, data, timeline, meter):
        super().__init__(args, net, rank, data, timeline, meter)
        self.trained = [self.body, self.head]
        self.optimizer = make_optimizer([p for m in self.trained for p in m.parameters()], args.optimizer, args.lr)
        self.body.register_forward_hook(lambda module, inputs, output: setattr(self, "h", output))

    def step(self, index, y, last):
        x, span = self.input(index), self.timeline.span
        with span("compute", "forward"):
            [(loss, _)] = decoupled_losses([self.body], [self.head], x, y, LOCAL_LOSS[self.args.method],
                                           self.args.predsim_beta)
        if self.outbox:
            self.outbox.send(self.h)   # on before our own backward: the stage above starts now
        self.descend(loss)
        if last:
            self.finish()


class Synthetic(Stream):
    """dni and cdni: update at once from M_k's guess; M_k learns from the targets sent back."""
    returns = "target"

    def __init__(self, args, net, rank, data, timeline, meter):
        super().__init__(args, net, rank, data, timeline, meter)
        self.train_body(args.sg_scale)
        if not self.last:
            size = torch.Size(self.out_shape).numel()   # M_k reads and predicts h_k flattened
            conditioned = args.method == "cdni"
            self.synthetic = SyntheticGradient(size, [] if conditioned else [args.sg_hidden] * 2,
                                               num_classes=data.num_classes if conditioned else 0)
            self.sg_optimizer = make_optimizer(self.synthetic.parameters(), args.optimizer, args.sg_lr)
            meter.exclude(self.synthetic.parameters())
            self.stash, self.stash_limit = collections.deque(), 2 * args.queue + 2

    def step(self, index, y, last):
        x, span, B = self.input(index), self.timeline.span, self.args.batch_size
        if self.last:
            grad = self.last_stage_step(x, y)
        else:
            with span("compute", "forward"):
                h = self.body(x)
            self.outbox.send(h)
            with span("compute", "synthetic"), torch.no_grad():
                g = self.synthetic(h.detach().flatten(1), y).view_as(h)
            with span("compute", "backward"):
                self.optimizer.zero_grad(set_to_none=True)
                h.backward(g / B)   # per-example g: dL/dh of the batch's mean loss is g / B
            with span("compute", "update"):
                self.optimizer.step()
            grad = x.grad if not self.first else None
            self.stash.append((self.meter.hold(h.detach()), y))
        if self.to_below:
            self.to_below.send(grad * B)   # M_{k-1}'s target, per example
        if not self.last:
            self.learn(wait_for=len(self.stash) - self.stash_limit if not last else len(self.stash))
        if last:
            self.finish()

    def learn(self, wait_for):
        """Regress M_k onto every target that has arrived, waiting for the first `wait_for`."""
        while self.stash:
            target = self.from_above.get() if wait_for > 0 else self.from_above.poll()
            if target is None:
                return
            wait_for -= 1
            held, y = self.stash.popleft()
            with self.timeline.span("compute", "synthetic_learn"):
                loss = F.mse_loss(self.synthetic(held.tensor.flatten(1), y), target.flatten(1))
                self.sg_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.sg_optimizer.step()


class Delayed(Stream):
    """ddg: the gradient from the stage above, applied when it arrives."""
    returns = "gradient"

    def __init__(self, args, net, rank, data, timeline, meter):
        super().__init__(args, net, rank, data, timeline, meter)
        self.train_body()
        self.pending, self.limit = collections.deque(), args.K - rank

    def step(self, index, y, last):
        x, span = self.input(index), self.timeline.span
        if self.last:
            grad = self.last_stage_step(x, y)
            if self.to_below:
                self.to_below.send(grad)
        else:
            with span("compute", "forward"):
                weights = {name: p.detach().clone().requires_grad_() for name, p in self.body.named_parameters()}
                self.meter.exclude(weights.values())   # a copy of the weights, not an activation
                h = functional_call(self.body, weights, (x,))
            self.outbox.send(h)
            self.pending.append((h, weights, x))
            while len(self.pending) >= self.limit or (last and self.pending):
                self.apply(self.from_above.get())
            while self.pending and (grad := self.from_above.poll()) is not None:
                self.apply(grad)
        if last:
            self.finish()

    def apply(self, grad_h):
        """dL/dw at the weights batch s was forwarded with, applied to the weights now."""
        h, weights, x = self.pending.popleft()
        span = self.timeline.span
        with span("compute", "backward"):
            wrt = [*weights.values(), *([] if self.first else [x])]
            grads = torch.autograd.grad(h, wrt, grad_h)
        with span("compute", "update"):
            for p, g in zip(self.body.parameters(), grads):
                p.grad = g
            self.optimizer.step()
        self.meter.exclude(weights.values(), excluded=False)
        if self.to_below:
            self.to_below.send(grads[-1])


TRAINERS = {"dgl": Local, "predsim": Local, "dni": Synthetic, "cdni": Synthetic, "ddg": Delayed}
