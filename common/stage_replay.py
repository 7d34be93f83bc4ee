"""The decoupled methods of the parallel race trained on K imagined devices: their real stage
code (common/pipeline_decoupled.py) in one process, a thread per stage, in the order a priced
run of K devices (common/stage_virtual_time.py) decides. What makes a decoupled run depend on
its clock is only what a stage finds when it polls ("has the gradient, or the target, of an
earlier batch come back yet?"): DDG applies a delayed gradient sooner or later, DNI's module
learns from a target sooner or later. Everything else a stage reads comes first in, first out.
So:

    1. simulate the K stages on the link (stage_virtual_time.price with trace): every poll's
       answer per stage, and the virtual time each step ends;
    2. train: stage k's thread runs Stream.step for steps 1..n as its rank would, its links
       in-process queues, its polls answered as the simulation answered them (a "yes" waits
       for the message, which the simulation says is sent);
    3. evaluate each stage after its own step s (every eval_every), as the process backend
       does, off the clock: test images through the stages' bodies, the last head counts.

The result is the accuracy after step s against the simulated seconds at which step s ends,
deterministic: the same poll answers train the same weights (tests/test_parallel_virtual.py).
DGL and predsim never poll: their curve is one per seed whatever the K-device clock, and equals
the process backend's (and one-process layerwise_demo's) at the same K.
"""
import contextlib
import queue
import threading
import types

import torch

from common.data import Batches
from common.evaluation import eval_mode
from common.pipeline_decoupled import BACKWARD_TAG, TRAINERS
from common.stage_networks import build_network

WAIT_S = 600.0   # a stage waits this long for a neighbour's message before the replay fails


class ScriptedLink:
    """An in-process link: messages first in, first out; poll() says what `answers` say."""

    def __init__(self):
        self.box, self.answers = queue.Queue(), iter(())

    def send(self, tensor):
        self.box.put(tensor.detach().clone())

    def flush(self):
        pass

    def get(self):
        try:
            return self.box.get(timeout=WAIT_S)
        except queue.Empty:
            raise RuntimeError(f"replay: no message for {WAIT_S:g} s: the poll answers do not fit "
                               "this method") from None

    def poll(self):
        return self.get() if next(self.answers, False) else None


class _Quiet:
    """What a rank's timeline and activation meter are, where nobody measures."""

    def span(self, *args, **kwargs):
        return contextlib.nullcontext()

    def message(self, *args, **kwargs):
        pass

    def hold(self, tensor):
        return types.SimpleNamespace(tensor=tensor)

    def exclude(self, *args, **kwargs):
        pass


def train(args, data, polls, eval_every, eval_size=10_000):
    """{step: test accuracy} of args.method on args.K stages (args as parallel_race.py run's),
    every poll of stage k answered by polls[k] in turn."""
    links = {}

    def open_link(stage, peer, shape, capacity, tag, what, receiving):
        ends = (peer, stage.rank) if receiving else (stage.rank, peer)
        link = links.setdefault((*ends, tag), ScriptedLink())
        if receiving and tag == BACKWARD_TAG:
            link.answers = iter(polls[stage.rank])
        return link
    replayed = type("Replayed", (TRAINERS[args.method],), {"open_link": open_link})
    net = build_network(args.network, args.seed, args.width, args.depth, data.num_classes)
    stages = []
    for k in range(args.K):
        torch.manual_seed(args.seed * 1000 + k)   # as run_rank seeds rank k's own draws
        stages.append(replayed(args, net, k, data, _Quiet(), _Quiet()))
    tests = [queue.Queue() for _ in range(args.K)]   # test activations into stage k
    accuracy, errors = {}, []

    @torch.no_grad()
    def evaluate(stage, step):
        body, head = stage.eval_parts()
        with eval_mode(*(m for m in (body, head) if m is not None)):
            h = body(data.test_x[:eval_size] if stage.first else tests[stage.rank].get(timeout=WAIT_S))
            if stage.last:
                accuracy[step] = float((head(h).argmax(1) == data.test_y[:eval_size]).float().mean())
            else:
                tests[stage.rank + 1].put(h)

    def run(stage):
        try:
            batches = iter(Batches(torch.arange(len(data.train_x)), data.train_y, args.batch_size, args.seed))
            evaluate(stage, 0)
            for step in range(1, args.steps + 1):
                index, y = next(batches)
                stage.step(index, y, last=step == args.steps)
                if step % eval_every == 0 or step == args.steps:
                    evaluate(stage, step)
        except BaseException as error:   # handed to the caller; the other stages time out
            errors.append(error)
    threads = [threading.Thread(target=run, args=(stage,), daemon=True, name=f"stage-{stage.rank}")
               for stage in stages]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return dict(sorted(accuracy.items())), net
