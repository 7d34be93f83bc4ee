"""Processes on one machine that pass fixed-shape tensors through shared memory:
the transport and the process plumbing of synthgrad_demo.py --async. Nothing
here knows what the messages mean; the script's process bodies define that.

    workers = Workers(threads=1)                      # forked processes, not yet started
    ask = workers.channel(1, (100, 24))               # one slot holding a 100 x 24 tensor
    workers.add("input", input_body, ask, ..., shares=layer)   # runs input_body(me, ask, ...)
    with workers:                                     # start them; stop them however it ends
        for seconds, steps in workers.ticks(0.25):    # all set up, then every 0.25 s:
            ...                                       # {name: steps so far}, `layer` up to date

A body is `body(me, *args)`, `me` being its view of its own process (a
`Child`): it sets itself up, calls `me.start()` (which returns once every
body has, so their clocks start together), then loops `while me.alive()`,
calling `me.step(note)` after each step. Weights travel as shared tensors:
the module given as `shares` is published at each `me.step` and loaded
back into the parent's copy at each tick. A `Memory` keeps the latest rows
a body received, to train on.
"""
import os
import queue
import signal
import time

import torch
import torch.multiprocessing as mp

from common.cli import RunFailed


class WorkerDied(RunFailed):
    """One of the processes ended while the others were running."""


class Stopped(Exception):
    """Raised in a body told to stop while it waits; its process then ends quietly."""


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

    def send(self, *tensors, timeout=None, alive=None):
        """Returns False, and drops the message, if no slot frees up in `timeout` (0: fire-and-forget).
        With `alive`: keeps trying while alive() holds, False once it does not."""
        if alive is not None:
            while alive():
                if self.send(*tensors, timeout=0.5):
                    return True
            return False
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

    def poll(self, timeout=0):
        """The next message's tensors, or None if none arrives within `timeout` seconds."""
        try:
            return self.receive(timeout=timeout)
        except queue.Empty:
            return None

    def drain(self, wait=0, limit=None):
        """Yield the messages that have arrived (at most `limit`), waiting up to `wait` s for the first."""
        count = 0
        while limit is None or count < limit:
            message = self.poll(wait if count == 0 else 0)
            if message is None:
                return
            count += 1
            yield message

    def request(self, answers, *tensors, alive):
        """Send a message here, then wait for the reply on `answers` and return its tensors;
        raises Stopped if alive() stops holding meanwhile."""
        reply = answers.wait(alive) if self.send(*tensors, alive=alive) else None
        if reply is None:
            raise Stopped
        return reply

    def serve(self, answers, fn, timeout=0):
        """If a request arrives here within `timeout` s, send fn(its tensors) back on `answers`
        (without autograd: only the values travel). True if one was answered."""
        request = self.poll(timeout)
        if request is not None:
            with torch.no_grad():
                answers.send(fn(*request), timeout=0.5)
        return request is not None

    def wait(self, alive):
        """The next message's tensors, waiting while alive() holds; None once it does not."""
        while alive():
            message = self.poll(0.5)
            if message is not None:
                return message
        return None


class Memory:
    """The latest `capacity` rows of each tensor received, in ring buffers, and random batches of them."""

    def __init__(self, capacity, *widths):
        self.buffers, self.written = [torch.zeros(capacity, width) for width in widths], 0

    @property
    def size(self):
        return min(self.written, len(self.buffers[0]))

    def add(self, *tensors):
        index = torch.arange(self.written, self.written + len(tensors[0])) % len(self.buffers[0])
        for buffer, tensor in zip(self.buffers, tensors):
            buffer[index] = tensor
        self.written += len(tensors[0])

    def extend(self, messages):
        for tensors in messages:
            self.add(*tensors)

    def sample(self, batch, generator):
        index = torch.randint(self.size, (batch,), generator=generator)
        return [buffer[index] for buffer in self.buffers]


# ----------------------------------------------------------------------------- shared weights
def share(module):
    """Shared-memory copies of a module's parameters and buffers, in state_dict order."""
    return [t.detach().clone().share_memory_() for t in module.state_dict().values()]


def publish(module, shared):
    """Worker side: copy the module's current weights into the shared tensors."""
    with torch.no_grad():
        for p, s in zip(module.state_dict().values(), shared):
            s.copy_(p)


def load(module, shared):
    """Parent side: copy the last published weights into the module."""
    with torch.no_grad():
        for p, s in zip(module.state_dict().values(), shared):
            p.copy_(s)


# ----------------------------------------------------------------------------- processes
def wait_for(event, alive):
    while alive() and not event.wait(0.5):
        pass


class Child:
    """A body's view of its own process: its name, whether to go on, when to start, its steps."""

    def __init__(self, name, stop, parent_pid, ready, go, counter, shares=None, report_every=2000):
        self.name, self.stop, self.parent_pid = name, stop, parent_pid
        self.ready, self.go, self.counter, self.report_every = ready, go, counter, report_every
        self.shares = shares   # (module, its shared tensors) or None

    def alive(self):
        """False once the parent says stop, or is gone."""
        return not self.stop.is_set() and os.getppid() == self.parent_pid

    def start(self):
        """Say this body is set up; return when every body is (or when it should stop)."""
        self.ready.release()
        wait_for(self.go, self.alive)
        self.began = time.perf_counter()

    def step(self, note):
        """Publish the shared module's weights, if any, and count one step; every `report_every`
        steps print the rate and note() (a callable)."""
        if self.shares is not None:
            publish(*self.shares)
        self.counter[0] += 1
        steps = int(self.counter[0])
        if steps % self.report_every == 0:
            print(f"[{self.name}] step {steps}, {steps / (time.perf_counter() - self.began):.0f} "
                  f"steps/s, {note()}", flush=True)


def worker(body, threads, child, *body_args):
    """Process entry: `threads` torch threads, Ctrl-C left to the parent, then the body."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    try:
        body(child, *body_args)
    except Stopped:
        pass


def check_alive(processes):
    """Raise WorkerDied naming the first process of {name: Process} that has ended."""
    for name, p in processes.items():
        if not p.is_alive():
            raise WorkerDied(f"the {name} process (pid {p.pid}) died with exit code {p.exitcode}; "
                             "the others were stopped")


class Workers:
    """Forked daemon processes, one per body, started by `with` and stopped however it ends.

    Forked, not spawned: the children re-import nothing and start in
    milliseconds. On leaving, every body sees alive() turn False; each gets
    up to 5 s to return before it is terminated.
    """

    def __init__(self, threads=1):
        self.ctx, self.threads = mp.get_context("fork"), threads
        self.stop, self.go, self.ready = self.ctx.Event(), self.ctx.Event(), self.ctx.Semaphore(0)
        self.counters, self.processes, self.shared = {}, {}, []   # shared: [(module, tensors)]

    def channel(self, slots, *shapes):
        """A Channel these processes can share."""
        return Channel(self.ctx, slots, *shapes)

    def add(self, name, body, *args, shares=None):
        """A process `name` that will run body(me, *args). shares: a module the body trains; its
        copy there is published at each me.step() and loaded into this one at each tick."""
        shared = None if shares is None else (shares, share(shares))
        if shared is not None:
            self.shared.append(shared)
        self.counters[name] = torch.zeros(1, dtype=torch.int64).share_memory_()
        child = Child(name, self.stop, os.getpid(), self.ready, self.go, self.counters[name], shared)
        self.processes[name] = self.ctx.Process(target=worker, name=name, daemon=True,
                                                args=(body, self.threads, child, *args))

    def __enter__(self):
        for p in self.processes.values():
            p.start()
        return self

    def ticks(self, period):
        """Wait until every body has called start(), let them go, then every `period` s load the
        weights they last published and yield (seconds since, {name: steps so far}), checking
        every 20 ms that all live (a dead one raises WorkerDied)."""
        for _ in self.processes:
            while not self.ready.acquire(timeout=0.2):
                self.check_alive()
        self.go.set()
        began, last = time.perf_counter(), 0.0
        while True:
            time.sleep(0.02)
            self.check_alive()
            seconds = time.perf_counter() - began
            if seconds - last >= period:
                last = seconds
                self.load()
                yield seconds, self.steps()

    def check_alive(self):
        check_alive(self.processes)

    def load(self):
        """Copy the weights each body last published into this process's copy of its module."""
        for module, shared in self.shared:
            load(module, shared)

    def steps(self):
        """{name: steps its body has counted so far}."""
        return {name: int(counter[0]) for name, counter in self.counters.items()}

    def __exit__(self, *exc):
        self.stop.set()
        for p in self.processes.values():
            p.join(timeout=5)
        for p in self.processes.values():
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
        return False
