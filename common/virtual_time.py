"""Virtual time: K components on K imagined machines, simulated in one process
(`--backend virtual`). Nothing here is the idea: the components are the same
code (async_mach.Worker), sending the same messages, as on the thread,
process and torchrun backends; only their clocks and their links differ.

  * Each component has its own clock, in virtual seconds, which advances only
    by the work the component does: every matrix multiply its torch ops run,
    forward and backward (counted by a torch dispatch mode with the formulas of
    torch.utils.flop_counter), costs

        flops / (gflops * 1e9 * speed)        --gflops, --speeds (one per component)

    --gflops defaults to this machine's rate on a component-sized training
    step (`measure_gflops`, at start-up). Evaluation is off the clock (an
    observer's measurement, not the component's work); so are element-wise ops
    (the optimizer's update, activations) and encoding messages: a model, stated.
  * A message sent at virtual time t arrives at t + latency + U(0, jitter),
    never before an earlier message on the same link (first-in first-out).
  * One component runs at a time: the scheduler runs the one whose clock is
    earliest (ties: the lowest rank) for one turn of its loop, from one tick of
    its clock (runtime.Pulse, once per turn) to the next. It receives the messages
    that arrived by the start of its turn: all of them have been sent (whoever
    sends later is at that time or after it), while one arriving during the
    turn may come from a component that has not yet run that far: it waits for
    the next turn, as a message that arrives mid-step waits for the loop. A
    component waiting for a message (a receive with a
    timeout) is next due when the first message in its inbox arrives or its
    timeout ends, whichever is earlier: it sleeps until then, in virtual time.
  * Deterministic: the same flags and seed give the same numbers, whatever the
    machine's speed; pass the --gflops a run reported to repeat it elsewhere.
"""
import heapq
import itertools
import random
import statistics
import threading
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry

INBOX_LIMIT = 10_000  # the protocol bounds traffic far below this; a safety net


class VirtualClock(TorchDispatchMode):
    """One component's clock. Entered on its thread, it counts that thread's matrix multiplies."""

    def __init__(self, rank, world, seconds_per_flop):
        super().__init__()
        self.rank, self.world, self.seconds_per_flop = rank, world, seconds_per_flop
        self.t, self.counting, self.had_turn = 0.0, True, False
        self.waiting_until = None  # while it waits for a message: when its timeout ends
        self.turn_began = 0.0       # it receives what arrived by then

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        count = flop_registry.get(func.overloadpacket)
        if count is not None and self.counting:
            self.t += count(*args, **kwargs, out_val=out) * self.seconds_per_flop
        return out

    def now(self):
        return self.t

    def sleep(self, seconds):
        self.t += seconds

    def tick(self):
        """End this turn (if it had one) and wait for the scheduler's next."""
        self.world.wait_for_turn(self.rank, self.had_turn)
        self.had_turn = True

    def wait(self, seconds):
        """Wait for a message, at most `seconds`: the scheduler wakes us at the first arrival."""
        self.waiting_until = self.t + seconds
        self.world.wait_for_turn(self.rank, True)

    def off_the_clock(self):
        clock = self

        class Paused:
            def __enter__(self):
                clock.counting = False

            def __exit__(self, *exc):
                clock.counting = True
        return Paused()


class VirtualTransport:
    """A component's links: a send is stamped with its arrival time and put in a heap."""

    def __init__(self, rank, world, latency_s, jitter_s, seed):
        self.rank, self.world, self.clock = rank, world, world.clocks[rank]
        self.latency_s, self.jitter_s, self.rng = latency_s, jitter_s, random.Random(seed)
        self.last_arrival = {}

    def send(self, dst, message):
        arrival = self.clock.t + self.latency_s + self.rng.uniform(0, self.jitter_s)
        arrival = max(arrival, self.last_arrival.get(dst, 0.0))  # first-in first-out per link
        self.last_arrival[dst] = arrival
        inbox = self.world.inboxes[dst]
        if len(inbox) >= INBOX_LIMIT:
            from common.transport import PeerFailure
            raise PeerFailure(f"component_{dst}'s inbox holds {INBOX_LIMIT} messages")
        heapq.heappush(inbox, (arrival, next(self.world.order), dict(message, src=self.rank)))

    def receive(self, timeout=0.0):
        """The next message that has arrived by now; with a timeout, wait up to it
        (in virtual time) for one."""
        inbox, clock = self.world.inboxes[self.rank], self.clock
        if timeout and not (inbox and inbox[0][0] <= clock.turn_began):
            clock.wait(timeout)
        if inbox and inbox[0][0] <= clock.turn_began:
            return heapq.heappop(inbox)[2]
        return None

    def close(self):
        pass


class VirtualWorld:
    """The clocks, the inboxes and the scheduler of K virtual machines."""

    def __init__(self, K, gflops, speeds, latency_s, jitter_s, seed, stopped):
        self.clocks = [VirtualClock(r, self, 1 / (gflops * 1e9 * speeds[r])) for r in range(K)]
        self.inboxes, self.order = [[] for _ in range(K)], itertools.count()
        self.transports = [VirtualTransport(r, self, latency_s, jitter_s, seed * 1000 + r)
                           for r in range(K)]
        self.stopped = stopped  # the exception a component raises when the run is stopped
        self.condition, self.turn, self.left, self.stopping = threading.Condition(), None, set(), False

    def active(self):
        return [r for r in range(len(self.clocks)) if r not in self.left]

    def now(self):
        """The run's virtual time: the earliest clock still running (the latest once all left)."""
        return min((self.due(r) for r in self.active()), default=max(c.t for c in self.clocks))

    def due(self, rank):
        """When component `rank` next runs: now, or, while it waits, at its first arrival or timeout."""
        clock, inbox = self.clocks[rank], self.inboxes[rank]
        if clock.waiting_until is None:
            return clock.t
        return min(clock.waiting_until, inbox[0][0] if inbox else float("inf"))

    # -- the scheduler: one component at a time ----------------------------------
    def run_component(self, rank, run_worker, worker):
        """A component's thread: its loop, on its own clock; the turn goes back when it leaves."""
        try:
            with self.clocks[rank]:
                run_worker(worker)
        finally:
            with self.condition:
                self.left.add(rank)
                if self.turn == rank:
                    self.turn = None
                self.condition.notify_all()

    def wait_for_turn(self, rank, had_turn):
        with self.condition:
            if had_turn:
                self.turn = None
                self.condition.notify_all()
            self.condition.wait_for(lambda: self.turn == rank or self.stopping)
            if self.stopping:
                raise self.stopped()

    def next_turn(self):
        """Run the component due first for one turn; False once all have left."""
        active = self.active()
        if not active:
            return False
        rank = min(active, key=lambda r: (self.due(r), r))
        clock = self.clocks[rank]
        clock.t, clock.waiting_until = max(clock.t, self.due(rank)), None
        clock.turn_began = clock.t
        with self.condition:
            self.turn = rank
            self.condition.notify_all()
            self.condition.wait_for(lambda: self.turn is None or rank in self.left)
        return True

    def stop(self):
        with self.condition:
            self.stopping = True
            self.condition.notify_all()


def measure_gflops(batch_size, sizes=(784, 512, 256, 128), repeats=30):
    """This machine's rate on a training step of a component-sized MLP (forward, backward,
    Adam): its matrix-multiply flops divided by the median time of a step, in GFLOP/s."""
    torch.manual_seed(0)
    layers = [torch.nn.Linear(a, b) for a, b in zip(sizes, sizes[1:])]
    model = torch.nn.Sequential(*itertools.chain(*((l, torch.nn.ReLU()) for l in layers)))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(batch_size, sizes[0])

    def step():
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()
    with FlopCounterMode(display=False) as counter:
        step()
    times = []
    for _ in range(repeats + 5):
        began = time.perf_counter()
        step()
        times.append(time.perf_counter() - began)
    return round(counter.get_total_flops() / statistics.median(times[5:]) / 1e9, 2)
