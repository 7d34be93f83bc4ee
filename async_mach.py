"""async_mach.py: MACH components that train truly asynchronously, each on its own
loop, in threads, in processes, or on several hosts, talking only to neighbours.

Docs: README.md, section "async_mach.py". Reproduces "Test 4" of the MACH seed
(shared/seeds/000_06864d4ab92d4189.txt): "the learning component runs on its
own loop during training appending gradient to a queue", with the learning
step designed after the MLI crate (seed 004): gradients are computed without
touching the model, queued, and applied later.

Component i owns a student s_i, a teacher t_i, its own logits L_i, its own
Adam and its own shuffled data stream. With --topology sequence its child is
i-1 (component 0 is the leaf, as in sequential_mach.py); with kgraph every
other component is a child and its "classroom" input is their sum.

    s_i(x)             x -> 512 -> 256 -> 128 (linear out)   imitates the child
    t_i(x, e)          concat(x, e) -> 512 -> 256 -> 128 (ReLU), logits L_i t_i
    e = child's answer (real) or s_i(x) (synthetic, never waits)

Messages (indices, not pixels: every component holds the dataset):

    parent i                                child c = i-1
      |-- spike(key, ids, depth) ---------------->|  e_c = t_c(x, input_c)
      |<------------------ answer(key, e_c) ------|  input_c = s_c(x), or c's own
      |  loss = CE(L_i t_i(x, e_c), y)             |  child's answer if depth > 1
      |       + 1/2 sum (e_c - s_i(x))^2           |  (--forward child)
      |-- grad(key, dloss/de_c) ----------------->|  dloss/dtheta_c at c's CURRENT
      |   fire-and-forget                         |  weights: a delayed gradient;
                                                  |  dloss/dinput_c goes on to c-1

--forward student (default): a step uses the synthetic input s_i(x) and never
waits; the child's answer, when it arrives, is the distillation target and
where grads are sent. --forward child: a step waits for the answer, which
the child computes from its own child up to --max-depth hops deep.

Learning (MLI): every gradient is a tuple of tensors from torch.autograd.grad
(the model is not touched), pushed on a bounded queue with the optimizer
step it was computed at. A learn step pops --accumulate of them (newest
first with LIFO), averages them, and takes one Adam step. A full queue drops
its oldest entry. Staleness = optimizer steps between a gradient's forward
pass and its application.

Deviations from the original: batch 50 (the later MACH versions) but Adam lr
1e-4 (theirs: 1e-5, too slow for a run of minutes; --lr 1e-5 restores it);
the queue is bounded (--queue-size; theirs was unbounded); inputs are
standardised; the kgraph classroom is the sum of the children's answers
(their --add_class); a parent keeps at most 4 unanswered spikes per child, so
a slow child cannot make its queue grow without limit; the transport is
gloo even on CUDA.

    python async_mach.py --dataset fashion-mnist                       # 3 threads
    python async_mach.py --dataset fashion-mnist --backend process
    torchrun --nproc-per-node 2 async_mach.py --backend torchrun --components 2

Measured results (Fashion-MNIST, CPU): README.md, section "async_mach.py".
"""
import collections
import json
import os
import signal
import sys
import threading
import time

import torch
import torch.nn.functional as F
from torch import nn

from common import cli
from common.data import load_data
from common.run_folder import Run, evaluate
from common.models import INITS, mlp
from common.transport import (DictBoard, GlooTransport, PeerFailure, ThreadTransport,
                              connect_store, free_port)

MAX_IN_FLIGHT = 4      # unanswered spikes a parent allows per child before it skips one
HEARTBEAT_S = 0.5      # a component tells its neighbours it is alive this often
REPORT_S = 0.5         # and posts its progress on the board this often


def build_parser():
    parser = cli.make_parser(__doc__, iterations=3000, batch_size=50, lr=1e-4, eval_every=500)
    mach = parser.add_argument_group("components")
    mach.add_argument("--components", type=cli.positive_int, default=3,
                      help="number of components K")
    mach.add_argument("--topology", choices=("sequence", "kgraph"), default="sequence",
                      help="sequence: child of i is i-1; kgraph: every other component")
    mach.add_argument("--forward", choices=("student", "child"), default="student",
                      help="student: never wait (synthetic input); child: wait for the child")
    mach.add_argument("--max-depth", type=cli.positive_int, default=2,
                      help="--forward child: hops a spike travels before a student answers")
    mach.add_argument("--embedding-size", type=cli.positive_int, default=128)
    mach.add_argument("--hidden", type=cli.positive_int, nargs=2, default=[512, 256],
                      metavar=("H1", "H2"), help="hidden sizes of teacher and student")
    mach.add_argument("--init", choices=INITS, default="tf",
                      help="tf: truncated normal std 0.1, bias 0.1 (original)")
    learn = parser.add_argument_group("gradient queue (MLI)")
    learn.add_argument("--queue-size", type=cli.positive_int, default=16,
                       help="gradients a component holds; when full the oldest is dropped")
    learn.add_argument("--queue-order", choices=("lifo", "fifo"), default="lifo",
                       help="which gradients a learn step takes first (original: lifo)")
    learn.add_argument("--accumulate", type=cli.positive_int, default=1,
                       help="gradients averaged into one optimizer step")
    run = parser.add_argument_group("running")
    run.add_argument("--backend", choices=("thread", "process", "torchrun"), default="thread",
                     help="thread: one process; process: one per component; torchrun: ranks")
    run.add_argument("--seconds", type=cli.positive_float, default=None,
                     help="stop each component after this many seconds (overrides --iterations)")
    run.add_argument("--log-seconds", type=cli.positive_float, default=2.0,
                     help="print one merged line this often")
    run.add_argument("--latency-ms", type=cli.nonnegative_float, default=0.0,
                     help="simulated network delay added to every message")
    run.add_argument("--jitter-ms", type=cli.nonnegative_float, default=0.0,
                     help="extra uniform random delay, 0 to this, per message")
    run.add_argument("--peer-timeout", type=cli.positive_float, default=6.0,
                     help="seconds of silence after which a neighbour is declared dead")
    run.add_argument("--master-addr", default="127.0.0.1",
                     help="process backend: address of the rendezvous store")
    run.add_argument("--master-port", type=cli.nonnegative_int, default=0,
                     help="process backend: its port (0: pick a free one)")
    run.add_argument("--slow-component", type=cli.nonnegative_int, default=None,
                     help="(tests, demos) slow this component down on purpose")
    run.add_argument("--slow-ms", type=cli.nonnegative_float, default=0.0,
                     help="sleep this long in each loop of --slow-component")
    run.add_argument("--fail-component", type=cli.nonnegative_int, default=None,
                     help="(tests) this component raises after --fail-after steps")
    run.add_argument("--fail-after", type=cli.positive_int, default=20)
    return parser


# ============================================================================ the component
class Component(nn.Module):
    """A student, a teacher that reads (x, child embedding), and its own logits."""

    def __init__(self, input_size, hidden, embedding_size, num_classes, init):
        super().__init__()
        self.student = mlp([input_size, *hidden, embedding_size], init=init)
        self.teacher = mlp([input_size + embedding_size, *hidden, embedding_size],
                           activate_output=True, init=init)
        self.logits = mlp([embedding_size, num_classes], init=init)

    def embed(self, x, child_embedding):
        return self.teacher(torch.cat([x, child_embedding], 1))

    def predict(self, x):
        # Local inference: the student stands in for the child; no neighbour runs.
        return self.logits(self.embed(x, self.student(x)))


def grads_of(loss_or_output, params, grad_output=None):
    """d(output)/d(params) without touching .grad: MLI's Backward on &self."""
    grads = torch.autograd.grad(loss_or_output, params, grad_outputs=grad_output,
                                allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def own_step_gradient(model, x, y, is_leaf):
    """--forward student: CE through the teacher fed with the synthetic input sg(s(x)).

    A leaf has no child; its student imitates zeros, as in sequential_mach.
    """
    params = list(model.parameters())
    synthetic = model.student(x)
    ce = F.cross_entropy(model.logits(model.embed(x, synthetic.detach())), y)
    distill = 0.5 * synthetic.pow(2).sum() if is_leaf else torch.zeros(())
    return grads_of(ce + distill, params), ce.item(), distill.item()


def answer_gradient(model, x, y, child_embedding):
    """A child's answer e has arrived for batch x:

        loss = CE(L t(x, e), y) + 1/2 sum (e - s(x))^2
    returns (d loss / d params, d loss / d e): the second is the grad message.
    """
    params = list(model.parameters())
    e = child_embedding.detach().requires_grad_(True)
    ce = F.cross_entropy(model.logits(model.embed(x, e)), y)
    distill = 0.5 * (e.detach() - model.student(x)).pow(2).sum()
    *param_grads, grad_e = grads_of(ce + distill, params + [e])
    return param_grads, grad_e, ce.item(), distill.item()


def delayed_gradient(model, x, child_input, grad_embedding, input_is_real):
    """A parent's dloss/de for an answer e = t(x, input) we sent earlier.

    Recomputed at the CURRENT weights (they may have moved since the answer:
    the delayed gradient of Huo et al. 2018). Returns parameter gradients and,
    if the input was a real child answer, dloss/dinput to pass on to the child.
    """
    params = list(model.parameters())
    child_input = child_input.detach().requires_grad_(input_is_real)
    embedding = model.embed(x, child_input)
    wrt = params + ([child_input] if input_is_real else [])
    grads = grads_of(embedding, wrt, grad_embedding)
    return (grads[:-1], grads[-1]) if input_is_real else (grads, None)


class GradientQueue:
    """Bounded queue of (gradients, version); LIFO or FIFO; drops the oldest when full."""

    def __init__(self, size, order):
        self.items, self.size, self.order = collections.deque(), size, order
        self.drops = 0

    def push(self, grads, version):
        if len(self.items) == self.size:
            self.items.popleft()  # the oldest is the stalest: drop it
            self.drops += 1
        self.items.append((grads, version))

    def pop(self, n):
        take = self.items.pop if self.order == "lifo" else self.items.popleft
        return [take() for _ in range(n)]


def learn_step(params, optimizer, batch):
    """Average the queued gradients into .grad and take one optimizer step (MLI's Train)."""
    for i, p in enumerate(params):
        p.grad = torch.stack([grads[i] for grads, _ in batch]).mean(0)
    optimizer.step()


# ============================================================================ the loop
class Stopped(Exception):
    """The run was stopped from outside (another component failed, or Ctrl-C)."""


class Worker:
    """One component's loop: handle messages, take a step, learn, report.

    Shutdown handshake (links are first-in first-out): when its own steps are
    done a component sends `done` to each neighbour (no more requests from
    it); once it has both sent `done` and received a neighbour's `done`, it
    sends that neighbour `bye` (no more messages of any kind). It leaves when
    it has sent and received `done` and `bye` with every neighbour, so nobody
    ever sends to a component that has left.
    """

    def __init__(self, rank, args, data, transport, board, device):
        K = args.components
        self.rank, self.args, self.data, self.net, self.board = rank, args, data, transport, board
        if args.topology == "sequence":
            self.children = [rank - 1] if rank > 0 else []
            self.parents = [rank + 1] if rank < K - 1 else []
        else:
            self.children = self.parents = [j for j in range(K) if j != rank]
        self.neighbours = sorted(set(self.children) | set(self.parents))
        torch.manual_seed(args.seed * 100 + rank)
        self.model = Component(data.input_size, args.hidden, args.embedding_size,
                               data.num_classes, args.init).to(device)
        self.params = list(self.model.parameters())
        self.optimizer = torch.optim.Adam(self.params, lr=args.lr, fused=True)
        self.queue = GradientQueue(args.queue_size, args.queue_order)
        self.stream = torch.Generator().manual_seed(args.seed * 100 + rank)
        self.order, self.cursor, self.served = None, 0, 0
        self.version = 0                       # optimizer steps taken
        self.pending = {}                      # my spike key -> what to do with the answers
        self.answered = collections.OrderedDict()  # (parent, key) -> what the answer used
        self.next_key = 0
        self.done_sent, self.done_from, self.bye_sent, self.bye_from = False, set(), set(), set()
        self.stats = collections.Counter()
        self.accuracy, self.waiting = None, False

    # -- data: indices travel, pixels stay ------------------------------------
    def next_ids(self):
        n = len(self.data.train_x)
        if self.order is None or self.cursor + self.args.batch_size > n:
            self.order, self.cursor = torch.randperm(n, generator=self.stream), 0
        ids = self.order[self.cursor:self.cursor + self.args.batch_size]
        self.cursor += self.args.batch_size
        self.served += len(ids)
        return ids

    def batch(self, ids):
        ids = ids.to(self.data.train_x.device)
        return self.data.train_x[ids], self.data.train_y[ids]

    # -- messages ---------------------------------------------------------------
    def send(self, dst, **message):
        if dst in self.bye_sent:
            return  # it has said goodbye to us, or we to it: nothing more on this link
        self.net.send(dst, message)
        self.stats["sent"] += 1

    def spike(self, ids, depth, **purpose):
        children = [c for c in self.children if c not in self.bye_sent]
        if not children:
            return False
        key, self.next_key = self.next_key, self.next_key + 1
        self.pending[key] = dict(purpose, ids=ids, need=set(children), answers={})
        for child in children:
            self.send(child, kind="spike", key=key, ids=ids, depth=depth)
        return True

    def answer_spike(self, parent, key, ids, input_embedding, input_is_real, child_key=None):
        x, _ = self.batch(ids)
        with torch.no_grad():
            embedding = self.model.embed(x, input_embedding)
        self.send(parent, kind="answer", key=key, emb=embedding)
        self.answered[(parent, key)] = dict(ids=ids, input=input_embedding, real=input_is_real,
                                            child_key=child_key, version=self.version)
        while len(self.answered) > 4 * MAX_IN_FLIGHT * max(1, len(self.parents)):
            self.answered.popitem(last=False)  # a grad that never came; forget it

    def handle(self, m):
        kind, src = m["kind"], m["src"]
        if kind == "spike":
            x, _ = self.batch(m["ids"])
            if (self.args.forward == "child" and m["depth"] > 1 and not self.done_sent
                    and self.spike(m["ids"], m["depth"] - 1, purpose="relay",
                                   parent=src, parent_key=m["key"])):
                return  # answered when our own children answer
            with torch.no_grad():
                synthetic = self.model.student(x)
            self.answer_spike(src, m["key"], m["ids"], synthetic, False)
        elif kind == "answer":
            self.on_answer(src, m["key"], m["emb"])
        elif kind == "grad":
            self.on_grad(src, m["key"], m["grad"])
        elif kind == "done":
            self.done_from.add(src)
            for key, p in list(self.pending.items()):  # its requests still waiting on our children
                if p["purpose"] == "relay" and p["parent"] == src:
                    del self.pending[key]
                    with torch.no_grad():
                        synthetic = self.model.student(self.batch(p["ids"])[0])
                    self.answer_spike(src, p["parent_key"], p["ids"], synthetic, False)
            if self.done_sent:  # else after our own done: a bye ends all our sending
                self.say_bye(src)
        elif kind == "bye":
            self.bye_from.add(src)

    def say_bye(self, n):
        self.send(n, kind="bye")
        self.bye_sent.add(n)

    def on_answer(self, child, key, embedding):
        p = self.pending.get(key)
        if p is None:
            return
        p["answers"][child] = embedding.to(self.data.train_x.device)
        p["need"].discard(child)
        if p["need"]:
            return
        del self.pending[key]
        combined = sum(p["answers"].values())  # kgraph: the classroom is the sum
        if p["purpose"] == "relay":
            self.answer_spike(p["parent"], p["parent_key"], p["ids"], combined, True, key)
            return
        if p["purpose"] == "target" and self.done_sent:
            return  # finished: no more learning, no more requests
        x, y = self.batch(p["ids"])
        param_grads, grad_e, ce, distill = answer_gradient(self.model, x, y, combined)
        self.queue.push(param_grads, self.version)
        self.stats["ce"], self.stats["distill"] = ce, distill
        for c in p["answers"]:
            self.send(c, kind="grad", key=key, grad=grad_e)
        if p["purpose"] == "own":
            self.stats["steps"] += 1
            self.waiting = False

    def on_grad(self, parent, key, grad_embedding):
        entry = self.answered.pop((parent, key), None)
        if entry is None or self.done_sent:
            self.stats["grads_lost"] += entry is None
            return
        x, _ = self.batch(entry["ids"])
        param_grads, grad_input = delayed_gradient(
            self.model, x, entry["input"], grad_embedding.to(x.device), entry["real"])
        self.queue.push(param_grads, entry["version"])
        if grad_input is not None:  # pass the delayed gradient on to our own child
            for c in self.children:
                self.send(c, kind="grad", key=entry["child_key"], grad=grad_input)

    # -- one own step -------------------------------------------------------------
    def step(self):
        ids = self.next_ids()
        if self.args.forward == "child" and self.children:
            self.waiting = self.spike(ids, self.args.max_depth, purpose="own")
            if self.waiting:
                return
        x, y = self.batch(ids)
        grads, ce, distill = own_step_gradient(self.model, x, y, is_leaf=not self.children)
        self.queue.push(grads, self.version)
        self.stats["steps"] += 1
        self.stats["ce"] = ce
        if not self.children:
            self.stats["distill"] = distill
        in_flight = sum(p["purpose"] == "target" for p in self.pending.values())
        if self.children and in_flight < MAX_IN_FLIGHT:
            self.spike(ids, 1, purpose="target")  # the answer arrives when it arrives
        elif self.children:
            self.stats["spikes_skipped"] += 1

    def learn(self):
        depth = len(self.queue.items)
        self.stats["queue_max"] = max(self.stats["queue_max"], depth)
        while len(self.queue.items) >= self.args.accumulate:
            batch = self.queue.pop(self.args.accumulate)
            self.stats["staleness_sum"] += sum(self.version - v for _, v in batch)
            self.stats["staleness_n"] += len(batch)
            learn_step(self.params, self.optimizer, batch)
            self.version += 1

    def evaluate(self):
        began = time.perf_counter()
        _, self.accuracy = evaluate(self.model.predict, self.data.test_x, self.data.test_y)
        self.stats["eval_seconds"] += time.perf_counter() - began

    def report(self, finished=False):
        s = self.stats
        self.board.set(f"report/{self.rank}", json.dumps(dict(
            steps=s["steps"], learn_steps=self.version, epoch=self.served / len(self.data.train_x),
            accuracy=self.accuracy, sent=s["sent"], received=s["received"],
            staleness_sum=s["staleness_sum"], staleness_n=s["staleness_n"],
            queue=len(self.queue.items), queue_max=s["queue_max"], drops=self.queue.drops,
            spikes_skipped=s["spikes_skipped"], grads_lost=s["grads_lost"],
            ce=s["ce"], distill=s["distill"], seconds=time.perf_counter() - self.start,
            eval_seconds=s["eval_seconds"], finished=finished)))

    # -- the loop -------------------------------------------------------------
    def run(self):
        args, net = self.args, self.net
        slow = args.slow_ms / 1000 if args.slow_component == self.rank else 0.0
        self.start = now = time.perf_counter()
        heard = {n: now for n in self.neighbours}
        next_beat = next_report = now
        next_eval = 0  # step 0 too: the curve starts at chance
        while True:
            now = time.perf_counter()
            if now >= next_report:
                if self.board.check(["stop"]):
                    raise Stopped()
                self.report()
                next_report = now + REPORT_S
            if now >= next_beat:
                for n in self.neighbours:
                    self.send(n, kind="beat")
                next_beat = now + HEARTBEAT_S
            for n in self.neighbours:
                if n not in self.bye_from and now - heard[n] > args.peer_timeout:
                    raise PeerFailure(f"component_{n} sent nothing for {args.peer_timeout:g} s "
                                      "(it died or the link is down)")
            # every message that is due, without waiting
            busy = not self.done_sent and not self.waiting
            while (m := net.receive(0.0 if busy else 0.005)) is not None:
                heard[m["src"]] = time.perf_counter()
                self.stats["received"] += 1
                self.handle(m)
                busy = True
            if not self.done_sent and not self.waiting:
                steps = self.stats["steps"]
                if steps >= next_eval:
                    self.evaluate()
                    next_eval += args.eval_every
                if args.seconds is not None:
                    finished = now - self.start >= args.seconds
                else:
                    finished = steps >= args.iterations
                if finished:
                    self.done_sent = True
                    for n in self.neighbours:
                        self.send(n, kind="done")
                    for n in sorted(self.done_from):
                        self.say_bye(n)
                else:
                    if slow:
                        time.sleep(slow)
                    if args.fail_component == self.rank and steps >= args.fail_after:
                        raise RuntimeError(f"failing on purpose after {args.fail_after} steps "
                                           "(--fail-component)")
                    self.step()
            self.learn()
            if (self.done_sent and self.done_from == set(self.neighbours)
                    and self.bye_from == set(self.neighbours)):
                break
        self.evaluate()
        self.report(finished=True)
        self.board.set(f"finished/{self.rank}", "1")


def run_worker(worker):
    """Run one worker; True when it finished. A failure is posted on the board
    under the component's name, so the monitor can stop the others and name it."""
    try:
        worker.run()
        return True
    except Stopped:
        return False
    except BaseException as error:
        worker.board.set("failed", f"component_{worker.rank}: {type(error).__name__}: {error}")
        raise


# ============================================================================ backends
class ComponentFailed(Exception):
    pass


def monitor(run, board, K, args, alive=None):
    """Print one merged line every --log-seconds until every component has finished."""
    last_t, last_msgs, last_stale = time.perf_counter(), 0, (0, 0)
    reports = {}
    while True:
        deadline = last_t + args.log_seconds
        finished = [f"finished/{i}" for i in range(K)]
        failure = None
        try:
            while time.perf_counter() < deadline and not board.check(finished):
                if alive is not None:  # a killed process is named before its neighbours notice
                    alive()
                if board.check(["failed"]):
                    raise ComponentFailed(board.get("failed").decode())
                time.sleep(0.05)
        except ComponentFailed as error:
            failure = error  # log what the reports say so far, then stop the run
        for i in range(K):
            if board.check([f"report/{i}"]):
                reports[i] = json.loads(board.get(f"report/{i}"))
        now = time.perf_counter()
        msgs = sum(r["received"] for r in reports.values())
        stale = (sum(r["staleness_sum"] for r in reports.values()),
                 sum(r["staleness_n"] for r in reports.values()))
        d_stale = (stale[0] - last_stale[0]) / max(1, stale[1] - last_stale[1])
        row_extra = {"msg/s": round((msgs - last_msgs) / (now - last_t), 1),
                     "stale": round(d_stale, 2),
                     "queue": sum(r["queue"] for r in reports.values()),
                     "drops": sum(r["drops"] for r in reports.values())}
        last_t, last_msgs, last_stale = now, msgs, stale
        accuracy = {f"component_{i}": r["accuracy"] for i, r in sorted(reports.items())
                    if r["accuracy"] is not None}
        epoch = sum(r["epoch"] for r in reports.values()) / max(1, len(reports))
        steps = sum(r["steps"] for r in reports.values())
        ce = [r["ce"] for r in reports.values() if r["ce"]]
        run.log(steps, epoch, accuracy=accuracy,
                losses={"ce": sum(ce) / len(ce)} if ce else None, extra=row_extra)
        summarise(run, reports, stale)
        if failure is not None:
            raise failure
        if len(reports) == K and all(r["finished"] for r in reports.values()):
            return


def summarise(run, reports, stale):
    run.summary["components"] = {
        f"component_{i}": dict(steps=r["steps"], learn_steps=r["learn_steps"],
                               steps_per_second=round(r["steps"] / max(r["seconds"], 1e-9), 2),
                               train_steps_per_second=round(
                                   r["steps"] / max(r["seconds"] - r["eval_seconds"], 1e-9), 2),
                               messages_received=r["received"], messages_sent=r["sent"],
                               mean_staleness=round(r["staleness_sum"] / max(1, r["staleness_n"]), 3),
                               queue_max=r["queue_max"], drops=r["drops"],
                               spikes_skipped=r["spikes_skipped"], grads_lost=r["grads_lost"],
                               seconds=round(r["seconds"], 3))
        for i, r in sorted(reports.items())}
    seconds = max((r["seconds"] for r in reports.values()), default=0) or 1e-9
    run.summary["messages_per_second"] = round(sum(r["received"] for r in reports.values()) / seconds, 1)
    run.summary["steps_per_second"] = round(sum(r["steps"] for r in reports.values()) / seconds, 2)
    run.summary["mean_staleness"] = round(stale[0] / max(1, stale[1]), 3)


def run_threads(args, device, run):
    data = load_data(args.dataset, args.data_dir, device, flat=True)
    board = DictBoard()
    transports = ThreadTransport.group(args.components, args.latency_ms / 1000,
                                       args.jitter_ms / 1000, args.seed)
    # Built one after another here: seeding is global, threads would race for it.
    workers = [Worker(i, args, data, transports[i], board, device) for i in range(args.components)]
    threads = [threading.Thread(target=run_worker, args=(w,), daemon=True, name=f"component_{w.rank}")
               for w in workers]
    for t in threads:
        t.start()
    try:
        monitor(run, board, args.components, args)
    finally:
        board.set("stop", "1")
        for t in threads:
            t.join(timeout=args.peer_timeout + 5)


def process_worker(rank, args, host, port):
    """A spawned process: one component, gloo point-to-point to its neighbours."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher stops us, not the terminal
    code = 0
    try:
        torch.set_num_threads(args.threads or 1)
        device = cli.resolve_device(args.device)
        data = load_data(args.dataset, args.data_dir, device, flat=True)
        store = connect_store(host, port, False, args.peer_timeout + 30)
        board = torch.distributed.PrefixStore("board/", store)
        transport = gloo_transport(store, rank, args)
        if run_worker(Worker(rank, args, data, transport, board, device)):
            transport.close()
    except BaseException:
        code = 1
        if not isinstance(sys.exc_info()[1], PeerFailure):
            import traceback
            traceback.print_exc()
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(code)  # the receiver thread may sit in gloo; do not wait for it


def gloo_transport(store, rank, args):
    K = args.components
    neighbours = K - 1 if args.topology == "kgraph" else (rank > 0) + (rank < K - 1)
    # each neighbour's last message is its "bye"; then the receiver thread ends
    return GlooTransport(torch.distributed.PrefixStore("pg/", store), rank, K, args.peer_timeout,
                         ("bye", neighbours), args.latency_ms / 1000, args.jitter_ms / 1000,
                         args.seed)


def run_processes(args, run):
    import torch.multiprocessing as mp
    port = args.master_port or free_port(args.master_addr)
    store = connect_store(args.master_addr, port, True, args.peer_timeout + 30)
    board = torch.distributed.PrefixStore("board/", store)
    context = mp.get_context("spawn")
    procs = [context.Process(target=process_worker, args=(i, args, args.master_addr, port),
                             name=f"component_{i}") for i in range(args.components)]
    for p in procs:
        p.start()
    # who is who, for `kill` in demos and tests
    (run.dir / "workers.json").write_text(json.dumps(
        {f"component_{i}": p.pid for i, p in enumerate(procs)}) + "\n")

    def alive():
        for i, p in enumerate(procs):
            if p.exitcode not in (None, 0) and not board.check(["failed"]):
                reason = (f"killed by signal {-p.exitcode}" if p.exitcode < 0
                          else f"exited with code {p.exitcode}")
                raise ComponentFailed(f"component_{i}: process {reason}")

    try:
        monitor(run, board, args.components, args, alive)
    finally:
        board.set("stop", "1")
        deadline = time.perf_counter() + 5
        for p in procs:
            p.join(timeout=max(0.1, deadline - time.perf_counter()))
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()


def torchrun_store(rank):
    """The store torchrun set up: its agent's store, or one rank 0 hosts (as env:// does)."""
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    use_agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = connect_store(host, port, rank == 0 and not use_agent, 60)
    return torch.distributed.PrefixStore("async_mach/", store)


def run_torchrun(args, device, rank, run=None):
    data = load_data(args.dataset, args.data_dir, device, flat=True)
    store = torchrun_store(rank)
    board = torch.distributed.PrefixStore("board/", store)
    transport = gloo_transport(store, rank, args)
    worker = Worker(rank, args, data, transport, board, device)
    if rank != 0:  # a plain component
        if run_worker(worker):
            transport.close()
        return
    thread = threading.Thread(target=run_worker, args=(worker,), daemon=True)
    thread.start()
    try:
        monitor(run, board, args.components, args)
        thread.join()
        transport.close()
    finally:
        board.set("stop", "1")


# ============================================================================ main
def main(argv=None):
    parser = build_parser()
    args, device = cli.setup(parser, "async_mach", argv)
    K = args.components
    if args.slow_component is not None and args.slow_component >= K:
        parser.error(f"--slow-component {args.slow_component}: there are only {K} "
                     f"components, numbered 0 to {K - 1}")
    if args.fail_component is not None and args.fail_component >= K:
        parser.error(f"--fail-component {args.fail_component}: numbered 0 to {K - 1}")
    if args.accumulate > args.queue_size:
        parser.error(f"--accumulate {args.accumulate} is more than --queue-size {args.queue_size}: "
                     "the queue could never fill a learn step; raise --queue-size or lower --accumulate")
    if args.topology == "kgraph" and K < 2:
        parser.error("--topology kgraph needs --components 2 or more")
    rank = 0
    if args.backend == "torchrun":
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            parser.error("--backend torchrun: RANK/WORLD_SIZE are not set; start it with "
                         "torchrun --nproc-per-node K async_mach.py --backend torchrun")
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        if world != K:
            parser.error(f"--components {K} but torchrun started {world} ranks; "
                         f"pass --components {world} or start {K} ranks")
        if rank != 0:
            try:
                return run_torchrun(args, device, rank)
            except KeyboardInterrupt:
                sys.exit(130)
    with Run(args, "async_mach", device) as run:
        run.summary.update(backend=args.backend, components=K, topology=args.topology,
                           forward=args.forward, latency_ms=args.latency_ms,
                           jitter_ms=args.jitter_ms)
        if args.backend == "thread":
            run_threads(args, device, run)
        elif args.backend == "process":
            run_processes(args, run)
        else:
            run_torchrun(args, device, 0, run)


def entry():
    try:
        main()
    except (ComponentFailed, PeerFailure) as error:
        print(f"async_mach.py: failed: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cli.run_script(entry)
