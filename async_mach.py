"""async_mach.py: MACH components that train truly asynchronously, each on its own
loop, in threads, in processes, or on several hosts, talking only to neighbours.

Reproduces "Test 4" of the MACH repository (unconst/MACH): "the learning component
runs on its own loop during training appending gradient to a queue", with the
learning step of the MLI crate (Rust): gradients are computed without touching the
model, queued, and applied later. Docs, the deviations from the original and the
measured results (Fashion-MNIST, CPU): README.md, section "async_mach.py".

Component i has a student s_i, a teacher t_i, logits L_i, its own Adam and its own
data stream. Its child c is i-1 (--topology sequence; 0 is the leaf) or every other
component, their answers summed (kgraph). Messages carry sample indices, not pixels:

    parent i                                child c
      |-- spike(key, ids, depth) ---------------->|  e_c = t_c(x, s_c(x)), or t_c(x, e_c-1)
      |<------------------ answer(key, e_c) ------|  if depth > 1 (--forward child)
      |-- grad(key, dloss_i/de_c) --------------->|  dloss_i/dtheta_c at c's CURRENT weights
      |   fire-and-forget                         |  (a delayed gradient); dloss_i/de_c-1
                                                  |  goes on to c's own child
    own step, never waiting: loss_i = CE(L_i t_i(x, sg(s_i(x))), y)
    on an answer:            loss_i = CE(L_i t_i(x, e_c), y) + 1/2 sum (e_c - s_i(x))^2

Each gradient waits on a bounded queue with the optimizer step it was computed at;
a learn step averages --accumulate of them (newest first with LIFO) into one Adam
step. Staleness = optimizer steps between a gradient's forward pass and its use.
Launching and watching the components (not the idea): common/runtime.py.

    python async_mach.py --dataset fashion-mnist         # 3 threads; or --backend process
    python async_mach.py --dataset fashion-mnist --backend virtual --components 8 --latency-ms 50
"""
import collections
import functools

from common import cli, runtime_flags

MAX_IN_FLIGHT = 4  # unanswered spikes a parent allows per child before it skips one


def build_parser():
    parser = cli.make_parser(__doc__, iterations=3000, batch_size=50, lr=1e-4, eval_every=500)
    mach = parser.add_argument_group("components")
    mach.add_argument("--components", type=cli.positive_int, default=3, help="number of components K")
    mach.add_argument("--topology", choices=("sequence", "kgraph"), default="sequence",
                      help="sequence: child of i is i-1; kgraph: every other component")
    mach.add_argument("--forward", choices=("student", "child"), default="student",
                      help="student: never wait (synthetic input); child: wait for the child")
    mach.add_argument("--max-depth", type=cli.positive_int, default=2,
                      help="--forward child: hops a spike travels before a student answers")
    mach.add_argument("--embedding-size", type=cli.positive_int, default=128,
                      help="size of the embedding e a component answers with")
    mach.add_argument("--hidden", type=cli.positive_int, nargs=2, default=[512, 256],
                      metavar=("H1", "H2"), help="hidden sizes of teacher and student")
    mach.add_argument("--init", choices=cli.INITS, default="tf",
                      help="tf: truncated normal std 0.1, bias 0.1 (original; measured fine with kgraph)")
    learn = parser.add_argument_group("gradient queue (MLI)")
    learn.add_argument("--queue-size", type=cli.positive_int, default=16,
                       help="gradients a component holds; when full the oldest is dropped")
    learn.add_argument("--queue-order", choices=("lifo", "fifo"), default="lifo",
                       help="which gradients a learn step takes first (original: lifo)")
    learn.add_argument("--accumulate", type=cli.positive_int, default=1,
                       help="gradients averaged into one optimizer step (at most --queue-size)")
    runtime_flags.add_arguments(parser)  # --backend, --seconds, --latency-ms, --peer-timeout, ...
    return parser


def validate(args):
    """How the flags combine; checked before anything is loaded or written."""
    if args.accumulate > args.queue_size:
        raise cli.UserError(f"--accumulate {args.accumulate} is more than --queue-size {args.queue_size}: the "
                            "queue could never fill a learn step; raise --queue-size or lower --accumulate")
    if args.topology == "kgraph" and args.components < 2:
        raise cli.UserError("--topology kgraph needs --components 2 or more")
    runtime_flags.validate(args)  # its own flags, and the ranks torchrun started


if __name__ == "__main__":  # a bad flag is refused before the 2-3 s of `import torch` below
    cli.check_flags(build_parser(), validate)
import torch
import torch.nn.functional as F
from torch import nn
from common import runtime
from common.data import Batches, load_data
from common.evaluation import evaluate
from common.models import make_optimizer, mlp
from common.pulse import Pulse
from common.run_folder import Run


# ============================================================================ the component
class Component(nn.Module):
    """A student, a teacher that reads (x, child embedding), and its own logits."""

    def __init__(self, input_size, hidden, embedding_size, num_classes, init):
        super().__init__()
        self.student = mlp([input_size, *hidden, embedding_size], init=init)
        self.teacher = mlp([input_size + embedding_size, *hidden, embedding_size], activate_output=True, init=init)
        self.logits = mlp([embedding_size, num_classes], init=init)

    def embed(self, x, child_embedding):
        return self.teacher(torch.cat([x, child_embedding], 1))

    def predict(self, x):  # local inference: the student stands in for the child; no neighbour runs
        return self.logits(self.embed(x, self.student(x)))


def grads_of(loss_or_output, params, grad_output=None):
    """d(output)/d(params) without touching .grad: MLI's Backward on &self."""
    grads = torch.autograd.grad(loss_or_output, params, grad_outputs=grad_output, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def own_step_gradient(model, x, y, is_leaf):
    """--forward student: CE through the teacher fed with the synthetic input sg(s(x)).
    A leaf has no child; its student imitates zeros, as in sequential_mach."""
    params = list(model.parameters())
    synthetic = model.student(x)
    ce = F.cross_entropy(model.logits(model.embed(x, synthetic.detach())), y)
    distill = 0.5 * synthetic.pow(2).sum() if is_leaf else torch.zeros(())
    return grads_of(ce + distill, params), ce.item(), distill.item()


def answer_gradient(model, x, y, child_embedding):
    """A child's answer e has arrived for batch x: loss = CE(L t(x, e), y) + 1/2 sum (e - s(x))^2.
    Returns (d loss / d params, d loss / d e): the second is the grad message."""
    params = list(model.parameters())
    e = child_embedding.detach().requires_grad_(True)
    ce = F.cross_entropy(model.logits(model.embed(x, e)), y)
    distill = 0.5 * (e.detach() - model.student(x)).pow(2).sum()
    *param_grads, grad_e = grads_of(ce + distill, params + [e])
    return param_grads, grad_e, ce.item(), distill.item()


def delayed_gradient(model, x, child_input, grad_embedding, input_is_real):
    """A parent's dloss/de for an answer e = t(x, input) we sent earlier, recomputed at the
    CURRENT weights (they may have moved since the answer: the delayed gradient of Huo et
    al., arXiv 1804.10574). Returns parameter gradients and, if the input was a real child
    answer, dloss/dinput to pass on to the child."""
    params = list(model.parameters())
    child_input = child_input.detach().requires_grad_(input_is_real)
    embedding = model.embed(x, child_input)
    grads = grads_of(embedding, params + ([child_input] if input_is_real else []), grad_embedding)
    return (grads[:-1], grads[-1]) if input_is_real else (grads, None)


class GradientQueue:
    """Bounded queue of (gradients, version); LIFO or FIFO; drops the oldest when full."""

    def __init__(self, size, order):
        self.items, self.size, self.order, self.drops = collections.deque(), size, order, 0

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


# ============================================================================ the protocol
def family(rank, K, topology):
    """(children, parents, neighbours) of component `rank`."""
    if topology == "kgraph":
        others = [j for j in range(K) if j != rank]
        return others, others, others
    children, parents = ([rank - 1] if rank > 0 else []), ([rank + 1] if rank < K - 1 else [])
    return children, parents, children + parents


class ComponentLoop:
    """One component's event loop: handle messages, take a step, learn, report.

    Shutdown handshake (links are first-in first-out): when its own steps are done a component
    sends `done` to each neighbour (no more requests from it); once it has both sent `done` and
    received a neighbour's `done`, it sends that neighbour `bye` (no more messages of any kind).
    It leaves having sent and received `done` and `bye` with every neighbour: nobody ever sends
    to a component that has left.
    """

    def __init__(self, args, rank, data, transport, board, device):
        self.rank, self.args, self.data, self.transport, self.board = rank, args, data, transport, board
        self.children, self.parents, self.neighbours = family(rank, args.components, args.topology)
        torch.manual_seed(args.seed * 100 + rank)
        self.model = Component(data.input_size, args.hidden, args.embedding_size, data.num_classes,
                               args.init).to(device)
        self.params = list(self.model.parameters())
        self.optimizer = make_optimizer(self.params, "adam", lr=args.lr)
        self.queue = GradientQueue(args.queue_size, args.queue_order)
        ids = torch.arange(len(data.train_x))  # indices travel, pixels stay
        self.stream = Batches(ids, ids, args.batch_size, seed=args.seed * 100 + rank)
        self.ids = iter(self.stream)
        self.version, self.next_key = 0, 0     # optimizer steps taken; my next spike's key
        self.pending = {}                      # my spike key -> what to do with the answers
        self.answered = collections.OrderedDict()  # (parent, key) -> what the answer used
        self.done_sent, self.done_from, self.bye_sent, self.bye_from = False, set(), set(), set()
        self.counts = collections.Counter()    # steps, messages, drops ...: what the monitor sums
        self.last_loss = {"ce": 0.0, "distill": 0.0}   # of the latest own or answered step
        self.accuracy, self.waiting = None, False
        self.staleness = collections.Counter()  # staleness -> gradients learned at it

    def batch(self, ids):
        ids = ids.to(self.data.train_x.device)
        return self.data.train_x[ids], self.data.train_y[ids]

    # -- messages ---------------------------------------------------------------
    def send(self, dst, **message):
        if dst in self.bye_sent:
            return  # it has said goodbye to us, or we to it: nothing more on this link
        self.transport.send(dst, message)
        self.counts["sent"] += message["kind"] != "beat"   # msg/s counts work, not heartbeats

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

    def answer_from_student(self, parent, key, ids):
        with torch.no_grad():
            synthetic = self.model.student(self.batch(ids)[0])
        self.answer_spike(parent, key, ids, synthetic, False)

    def handle(self, m):
        kind, src = m["kind"], m["src"]
        if kind == "spike":
            if (self.args.forward == "child" and m["depth"] > 1 and not self.done_sent and
                    self.spike(m["ids"], m["depth"] - 1, purpose="relay", parent=src, parent_key=m["key"])):
                return  # answered when our own children answer
            self.answer_from_student(src, m["key"], m["ids"])
        elif kind == "answer":
            self.on_answer(src, m["key"], m["emb"])
        elif kind == "grad":
            self.on_grad(src, m["key"], m["grad"])
        elif kind == "done":
            self.done_from.add(src)
            for key, p in list(self.pending.items()):  # its requests still waiting on our children
                if p["purpose"] == "relay" and p["parent"] == src:
                    del self.pending[key]
                    self.answer_from_student(src, p["parent_key"], p["ids"])
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
        self.last_loss.update(ce=ce, distill=distill)
        for c in p["answers"]:
            self.send(c, kind="grad", key=key, grad=grad_e)
        if p["purpose"] == "own":
            self.counts["steps"] += 1
            self.waiting = False

    def on_grad(self, parent, key, grad_embedding):
        entry = self.answered.pop((parent, key), None)
        if entry is None or self.done_sent:
            self.counts["grads_lost"] += entry is None
            return
        x, _ = self.batch(entry["ids"])
        param_grads, grad_input = delayed_gradient(self.model, x, entry["input"], grad_embedding.to(x.device),
                                                   entry["real"])
        self.queue.push(param_grads, entry["version"])
        if grad_input is not None:  # pass the delayed gradient on to our own child
            for c in self.children:
                self.send(c, kind="grad", key=entry["child_key"], grad=grad_input)

    # -- one own step, and learning -------------------------------------------------
    def step(self):
        ids, _ = next(self.ids)
        if self.args.forward == "child" and self.children:
            self.waiting = self.spike(ids, self.args.max_depth, purpose="own")
            if self.waiting:
                return
        x, y = self.batch(ids)
        grads, ce, distill = own_step_gradient(self.model, x, y, is_leaf=not self.children)
        self.queue.push(grads, self.version)
        self.counts["steps"] += 1
        self.last_loss["ce"] = ce
        if not self.children:  # a leaf: nobody to ask
            self.last_loss["distill"] = distill
        elif sum(p["purpose"] == "target" for p in self.pending.values()) < MAX_IN_FLIGHT:
            self.spike(ids, 1, purpose="target")  # the answer arrives when it arrives
        else:
            self.counts["spikes_skipped"] += 1

    def learn(self):  # MLI's Train: every full batch of queued gradients, one optimizer step each
        self.counts["queue_max"] = max(self.counts["queue_max"], len(self.queue.items))
        while len(self.queue.items) >= self.args.accumulate:
            batch = self.queue.pop(self.args.accumulate)
            self.staleness.update(str(self.version - v) for _, v in batch)
            learn_step(self.params, self.optimizer, batch)
            self.version += 1

    def measure_accuracy(self):
        clock, began = self.transport.clock, self.transport.clock.now()
        with clock.off_the_clock():  # virtual time stops: measuring is not the component's work
            _, self.accuracy = evaluate(self.model.predict, self.data.test_x, self.data.test_y)
        self.counts["eval_seconds"] += clock.now() - began
        self.counts["evaluations"] += 1  # so the monitor logs each accuracy once, when it is new

    def progress(self):  # what the runtime's monitor reports and sums
        return dict(self.counts, **self.last_loss, learn_steps=self.version, epoch=self.stream.epoch,
                    accuracy=self.accuracy, queue=len(self.queue.items), drops=self.queue.drops,
                    staleness=self.staleness)

    def run(self):  # the loop
        pulse = Pulse(self, self.args)  # reports, stop, heartbeats, dead peers, --seconds
        next_eval = 0  # step 0 too: the curve starts at chance
        while True:
            pulse(quiet=self.bye_from)  # who said bye may fall silent
            for m in pulse.due(self.transport, idle=self.done_sent or self.waiting):
                self.counts["received"] += m["kind"] != "beat"
                self.handle(m)
            if not self.done_sent and not self.waiting:
                steps = self.counts["steps"]
                if steps >= next_eval:
                    self.measure_accuracy()
                    next_eval += self.args.eval_every
                if pulse.time_is_up(steps, self.args.iterations):
                    self.done_sent = True
                    for n in self.neighbours:
                        self.send(n, kind="done")
                    for n in sorted(self.done_from):
                        self.say_bye(n)
                else:
                    pulse.before_step(steps)  # the hidden test flags: slow down, or fail
                    self.step()
            self.learn()
            if self.done_sent and self.done_from == self.bye_from == set(self.neighbours):
                break
        self.measure_accuracy()
        pulse.report(finished=True)


# ============================================================================ main
def main(argv=None):
    args, device = cli.setup(build_parser(), "async_mach", argv, validate=validate)
    device = runtime.local_device(args, device)   # torchrun: cuda follows LOCAL_RANK
    K = args.components  # the last message a component gets from each neighbour is its "bye":
    farewells = ("bye", [len(family(r, K, args.topology)[2]) for r in range(K)])
    make_worker = functools.partial(ComponentLoop, args)  # (rank, data, transport, board, device)
    load = functools.partial(load_data, args.dataset, args.data_dir, flat=True)
    data = None if args.backend == "process" else load(device)  # processes load their own
    if runtime.rank(args) != 0:  # a torchrun rank: one component; rank 0 keeps the run folder
        return runtime.launch(None, args, make_worker, farewells, device, data)
    with Run(args, "async_mach", device) as run:
        run.summary.update(components=K, topology=args.topology, forward=args.forward)
        runtime.launch(run, args, make_worker, farewells, device, data, load)
        for name, value in run.summary["test_accuracy"].items():
            run.declare_row(name, "test accuracy", round(100 * value, 4), "%",
                            headline=name == f"component_{K - 1}")  # the top of the chain
        for metric in ("steps_per_second", "mean_staleness"):  # of all components together
            run.declare_row("all components", metric.replace("_", " "), run.summary[metric])


if __name__ == "__main__":
    cli.run_script(main)
