"""Virtual time: K components on K imagined machines, simulated in one process
(`--backend virtual`). Nothing here is the idea: the components are the same
code (async_mach.ComponentLoop), sending the same messages, as on the thread,
process and torchrun backends; only their clocks and their links differ.

  * Each component has its own clock, in virtual seconds, which advances only
    by the work the component does. Every torch op it runs, forward and
    backward (seen by a torch dispatch mode), costs

        (flops / gflops + elements / gelements) * 1e-9 + op_us * 1e-6,   divided by its speed

    flops: of a matrix multiply (torch.utils.flop_counter's formulas), else 0;
    elements: what any other op writes (activations; for Adam's in-place update,
    the tensors it is given);
    op_us: the fixed cost of one op. By default (DEFAULT_MACHINE) the prices are
    fixed: 83.46 GFLOPS, 8.466 Gelem/s, 6.41 us per op, which
    benchmarks/async_study.py measured (one torch thread, batch 50) on its 2-core
    VM (AMD EPYC, torch 2.14.1) and calibrated against the process backend;
    results/benchmarks/async_study.json records them ("machine"). Its probe then
    took an op's fixed cost from the full-width MLP on one example (which counts
    elements as op cost); `measure_machine` now uses a 16-wide one. So the same
    flags give the same numbers on any machine. --machine GFLOPS GELEMENTS OP_US
    sets the prices by hand; --machine measure probes this machine at the start
    (common/machine_prices.py's `measure_machine`, at --threads) and refuses a result outside PLAUSIBLE
    (exit 2, nothing kept). Measured against the real thing (one core,
    batch 50, async_mach's component): own step 3.7 ms real, 3.2 ms priced; answer
    5.4/5.0; delayed gradient 2.7/3.0; answering a spike 1.6/1.7; a learn step
    1.8/1.0: a middle component's work per step about 15 % under its real time.
    --speeds scales each component (0.1: ten times slower). Evaluation is off
    the clock (an observer's measurement, not the component's work); encoding
    messages costs nothing (there is none: tensors are handed over).
  * A message sent at virtual time t arrives at t + latency + U(0, jitter),
    never before an earlier message on the same link (first-in first-out).
  * One component runs at a time: the scheduler runs the one whose clock is
    earliest (ties: the lowest rank) for one turn of its loop, from one tick of
    its clock (runtime.Pulse, once per turn) to the next. It receives the messages
    that arrived by the start of its turn: all of them have been sent (whoever
    sends later is at that time or after it), while one arriving during the
    turn may come from a component that has not yet run that far: it waits for
    the next turn, as a message that arrives mid-step waits for the loop. A
    component waiting for a message (a receive with a timeout) is next due when
    the first message in its inbox arrives or its timeout ends, whichever is
    earlier: it sleeps until then, in virtual time.
  * Deterministic: the same flags and seed give the same numbers, whatever the
    machine's speed. A run prints its prices as the --machine flag that repeats
    it anywhere; summary.json records them, and config.json (unless measured).
"""
import contextlib
import functools
import heapq
import itertools
import random
import threading

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import flop_registry

from common.transport import PeerFailure

INBOX_LIMIT = 10_000  # the protocol bounds traffic far below this; a safety net


@functools.lru_cache(maxsize=4096)
def _flops_of_shapes(func, shapes, out_shape):
    meta = lambda s: torch.empty(s, device="meta") if isinstance(s, torch.Size) else s
    return flop_registry[func.overloadpacket](*map(meta, shapes), out_val=meta(out_shape))


def matmul_flops(func, count, args, kwargs, out):
    """The flops of a matrix multiply, remembered by its arguments' shapes (the formulas are slow)."""
    if kwargs or not isinstance(out, torch.Tensor) or not all(
            isinstance(a, (torch.Tensor, int, float)) for a in args):
        return count(*args, **kwargs, out_val=out)
    return _flops_of_shapes(func, tuple(a.shape if isinstance(a, torch.Tensor) else a for a in args),
                            out.shape)


class Counting(TorchDispatchMode):
    """The flops, elements and ops of the torch ops run inside, on this thread, while counting."""

    def __init__(self):
        super().__init__()
        self.flops = self.elements = self.ops = 0
        self.counting = True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not self.counting:
            return out
        self.ops += 1
        count = flop_registry.get(func.overloadpacket)
        if count is not None:
            self.flops += matmul_flops(func, count, args, kwargs, out)
        elif isinstance(out, torch.Tensor):  # most ops: one tensor written
            self.elements += out.numel()
        else:  # what it writes; an in-place op that returns nothing (Adam's): what it is given
            written = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
            given = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
            self.elements += sum(t.numel() for t in written or given)
        return out


def unit_prices(machine, speed=1.0):
    """Seconds per flop, per element written and per op on `machine` at `speed`."""
    return (1e-9 / (machine["gflops"] * speed), 1e-9 / (machine["gelements"] * speed),
            1e-6 * machine["op_us"] / speed)


def seconds_of(counts, machine, speed=1.0):
    """Seconds of counted work (flops, elements, ops): the formula above."""
    return sum(count * unit for count, unit in zip(counts, unit_prices(machine, speed)))


class VirtualClock(Counting):
    """One component's clock: the work it counts, priced by the machine, plus its waiting."""

    def __init__(self, rank, world, machine, speed=1.0):
        super().__init__()
        self.rank, self.world = rank, world
        self.prices = unit_prices(machine, speed)
        self.waited, self.had_turn = 0.0, False
        self.waiting_until = None  # while it waits for a message: when its timeout ends
        self.turn_began = 0.0       # it receives what arrived by then

    @property
    def t(self):
        per_flop, per_element, per_op = self.prices
        return self.waited + self.flops * per_flop + self.elements * per_element + self.ops * per_op

    @t.setter
    def t(self, value):  # only ever forward: waiting, sleeping
        self.waited += value - self.t

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

    @contextlib.contextmanager
    def off_the_clock(self):
        self.counting = False
        try:
            yield
        finally:
            self.counting = True


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

    def __init__(self, K, machine, speeds, latency_s, jitter_s, seed, stopped):
        self.clocks = [VirtualClock(r, self, machine, speeds[r]) for r in range(K)]
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
