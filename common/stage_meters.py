"""What each rank of the parallel race measures about itself: its own training clock (wall
and CPU), the activations its autograd graphs hold, and a timeline of what it did (compute
spans, waits, messages with their sizes), written as JSON lines for a simulator to replay.

Per rank, over its training only (evaluation is off every clock):

    steps per second   = steps / seconds
    CPU time per step  = cpu_seconds / steps        (time.process_time: every thread of the
                                                    rank's process, gloo's I/O threads too)
    bubble             = 1 - cpu_seconds / seconds  the idle share of the rank's wall time

The bubble is read off the two clocks, the same way for every method, including torch's
pipelining engine and DDP, whose waits happen inside torch. It assumes what the race
prescribes: one torch thread per rank, OMP_WAIT_POLICY=PASSIVE (a waiting thread sleeps)
and a core per rank; on an oversubscribed machine, time a rank was runnable but not
scheduled also counts as idle. For GPipe with M microbatches on K equal stages the bubble
is (K - 1) / (M + K - 1), and 1F1B's the same (it holds fewer activations, not fewer idle
slots); decoupled stages idle only when their neighbour is slower.

Peak activations: the most bytes that autograd held for backward at once (saved tensors,
torch.autograd.graph.saved_tensors_hooks), parameters excluded and each storage counted
once. GPipe holds M microbatches' activations at its peak, 1F1B at most K - k on stage k.

Also per rank, from the timeline below: wait_seconds (blocked on a neighbour in our own code;
the engines' waits inside torch are not seen) and compute_seconds (wall seconds inside compute
spans: with a core per rank, about cpu_seconds; on a loaded machine also descheduled time).

The timeline (stage_<k>_events.jsonl, one JSON object a line) has
    {"t0": 0, "kind": "start", "unix"}                                   its origin, to align ranks
    {"t0", "t1", "kind": "compute", "what": forward|backward|update|synthetic|synthetic_learn, "step", ...}
    {"t0", "t1", "kind": "wait", "what": recv|send, "peer", "step"}      blocked on a neighbour
    {"t0", "kind": "message", "what": activation|gradient|target|allreduce, "peer", "bytes",
     "sent": true (a send) | false (a receive), "step"}
    {"t0", "t1", "kind": "eval", "step"}                                 off the clock
with t0, t1 in wall seconds since the origin; "step" is the rank's step (0: before the
first). Which spans each method records: the docstrings of common/pipeline_sync.py and
common/pipeline_decoupled.py.
"""
import json
import time
from contextlib import contextmanager

import torch


class RankClock:
    """One rank's training clock: wall and CPU seconds spent inside `with clock:`."""

    def __init__(self):
        self.seconds = self.cpu_seconds = 0.0

    def __enter__(self):
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.seconds += time.perf_counter() - self._wall
        self.cpu_seconds += time.process_time() - self._cpu
        return False


class _Held:
    """A saved tensor, counted while autograd keeps it (until the graph is freed)."""
    __slots__ = ("tensor", "meter", "key")

    def __init__(self, tensor, meter, key):
        self.tensor, self.meter, self.key = tensor, meter, key

    def __del__(self):
        self.meter._release(self.key)


class ActivationMeter:
    """Bytes of tensors saved for backward, now and at most; `with meter:` counts them."""

    def __init__(self, parameters):
        self.excluded = {p.untyped_storage().data_ptr() for p in parameters}
        self.live = {}           # storage pointer -> [saved tensors using it, its bytes]
        self.bytes = self.peak = 0
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, tensor):
        key = tensor.untyped_storage().data_ptr()
        if key in self.excluded:
            return tensor
        entry = self.live.setdefault(key, [0, tensor.untyped_storage().nbytes()])
        if entry[0] == 0:
            self.bytes += entry[1]
            self.peak = max(self.peak, self.bytes)
        entry[0] += 1
        return _Held(tensor, self, key)

    def hold(self, tensor):
        """Count a tensor a method keeps for later by hand (not autograd) while the returned
        holder lives; holder.tensor is the tensor."""
        return self._pack(tensor)

    def exclude(self, tensors, excluded=True):
        """Not activations (copies of weights): leave these storages out, or count them again."""
        keys = {t.untyped_storage().data_ptr() for t in tensors}
        self.excluded = self.excluded | keys if excluded else self.excluded - keys

    @staticmethod
    def _unpack(packed):
        return packed.tensor if isinstance(packed, _Held) else packed

    def _release(self, key):
        entry = self.live[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.bytes -= entry[1]
            del self.live[key]

    def __enter__(self):
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc):
        return self.hooks.__exit__(*exc)


class Timeline:
    """The rank's events (module docstring), appended to `path` by flush() (None: not kept)."""

    def __init__(self, path):
        self.origin = time.perf_counter()
        self.path, self.events = path, [dict(t0=0.0, kind="start", unix=time.time())]
        self.step = 0
        self.wait_seconds = self.compute_seconds = 0.0
        self.sent_bytes = self.sent_messages = 0
        if path is not None:
            path.write_text("")

    def now(self):
        return time.perf_counter() - self.origin

    @contextmanager
    def span(self, kind, what=None, **fields):
        t0 = self.now()
        try:
            yield
        finally:
            t1 = self.now()
            self.events.append(dict(t0=round(t0, 6), t1=round(t1, 6), kind=kind, what=what, step=self.step,
                                    **fields))
            if kind == "wait":
                self.wait_seconds += t1 - t0
            elif kind == "compute":
                self.compute_seconds += t1 - t0

    def message(self, what, peer, nbytes, sent=True):
        self.events.append(dict(t0=round(self.now(), 6), kind="message", what=what, peer=peer,
                                bytes=nbytes, step=self.step, sent=sent))
        if sent:
            self.sent_bytes += nbytes
            self.sent_messages += 1

    def flush(self):
        if self.path is not None:
            with open(self.path, "a") as f:
                f.writelines(json.dumps(event) + "\n" for event in self.events)
        self.events.clear()   # on disk now; nothing here reads them again
