"""Message passing between asynchronous components, the same for threads,
processes on one machine and ranks on several hosts. Nothing here knows
what the messages mean: async_mach.py defines the protocol, and
common/runtime.py starts the components that use these links.

Two planes:
  * messages (the data plane): `send(dst, message)` is fire-and-forget;
    `receive(timeout)` returns the next message that is due, or None.
    A message is a small dict of numbers, lists and tensors.
      - ThreadTransport: one bounded queue.Queue per component;
      - GlooTransport: torch.distributed point-to-point over gloo. A message
        is encoded into a uint8 tensor and sent as (length, bytes) to the
        destination rank; a receiver thread waits for the next message from
        any rank, with a timeout, and puts it into the same kind of queue.
        The encoding is data only (see `encode`): nothing that arrives from
        the network is ever unpickled or executed; a payload that does not
        parse is counted and dropped.
  * a board (the control plane): a small key-value store where components
    post their progress reports, failures and the stop signal. Threads use a
    dict; processes use torch.distributed's TCPStore, the rendezvous store
    (both in common/rendezvous.py).

Each transport also carries its component's clock (`transport.clock`): wall
time here (WALL_CLOCK); virtual time in the simulator (common/virtual_time.py),
where the same component code runs with the same messages.

Simulated network delay (`latency_s`, `jitter_s`) is applied on arrival:
each message is held until arrival + latency + U(0, jitter), never before
an earlier message from the same sender (links stay first-in first-out,
like TCP, which the shutdown handshake relies on).
"""
import contextlib
import datetime
import heapq
import itertools
import json
import math
import queue
import random
import threading
import time

import torch

from common.cli import RunFailed

INBOX_LIMIT = 10_000  # the protocol bounds traffic far below this; a safety net


class PeerFailure(RunFailed):
    """A neighbour went silent or its link broke: the run failed (one line, exit 1)."""


def first_line(error):
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:160]


# -- encoding -----------------------------------------------------------------
# The wire format: a 4-byte big-endian header length, a JSON header
#   {"fields": {name: str | int | float | bool | None}, "tensors": [[name, dtype, shape], ...]}
# then each tensor's raw bytes, in that order. JSON holds data only, so a payload
# can be malformed but never executable; decode checks every size before using it.
WIRE_DTYPES = {"float32": torch.float32, "float64": torch.float64, "int64": torch.int64,
               "int32": torch.int32, "uint8": torch.uint8, "bool": torch.bool}
MAX_HEADER_BYTES = 64 * 1024
MAX_MESSAGE_BYTES = 256 * 2**20   # far above any message of the protocol; a safety bound


class BadMessage(ValueError):
    """A payload that is not a well-formed message: counted and dropped by the receiver."""


def encode(message):
    """dict of JSON scalars and tensors -> uint8 tensor (header length, header, tensor bytes)."""
    fields, specs, blobs = {}, [], []
    for name, value in message.items():
        if torch.is_tensor(value):
            tensor = value.detach().cpu().contiguous()
            dtype = str(tensor.dtype).removeprefix("torch.")
            if dtype not in WIRE_DTYPES:
                raise TypeError(f"{name}: tensors of {tensor.dtype} do not travel; use one of {list(WIRE_DTYPES)}")
            specs.append([name, dtype, list(tensor.shape)])
            blobs.append(tensor.reshape(-1).view(torch.uint8))
        elif value is None or isinstance(value, (str, int, float, bool)):
            fields[name] = value
        else:
            raise TypeError(f"{name}: a {type(value).__name__} does not travel; send numbers, strings or tensors")
    header = json.dumps({"fields": fields, "tensors": specs}).encode()
    prefix = torch.frombuffer(bytearray(len(header).to_bytes(4, "big") + header), dtype=torch.uint8)
    return torch.cat([prefix, *blobs])


def decode(payload):
    """The inverse of encode; raises BadMessage for anything that is not a well-formed message."""
    data = payload.numpy().tobytes()
    size = int.from_bytes(data[:4], "big") if len(data) >= 4 else -1
    if not 0 < size <= min(MAX_HEADER_BYTES, len(data) - 4):
        raise BadMessage(f"header length {size} does not fit a {len(data)}-byte payload")
    try:
        header = json.loads(data[4:4 + size])
        fields, specs = header["fields"], header["tensors"]
        if not isinstance(fields, dict) or not isinstance(specs, list):
            raise TypeError("fields must be an object, tensors a list")
        message = {}
        for name, value in fields.items():
            if not (value is None or isinstance(value, (str, int, float, bool))):
                raise TypeError(f"field {name} is not a number or a string")
            message[name] = value
        offset = 4 + size
        for name, dtype, shape in specs:
            if not (isinstance(name, str) and dtype in WIRE_DTYPES and isinstance(shape, list)
                    and all(isinstance(n, int) and n >= 0 for n in shape)):
                raise TypeError(f"tensor {name!r}: bad dtype or shape")
            kind = WIRE_DTYPES[dtype]
            nbytes = math.prod(shape) * torch.empty(0, dtype=kind).element_size()
            if offset + nbytes > len(data):
                raise TypeError(f"tensor {name}: {nbytes} bytes announced, {len(data) - offset} left")
            raw = bytearray(data[offset:offset + nbytes])
            message[name] = (torch.frombuffer(raw, dtype=kind) if nbytes else torch.empty(0, dtype=kind)).reshape(shape)
            offset += nbytes
    except (ValueError, TypeError, KeyError) as error:   # json's errors are ValueErrors
        raise BadMessage(f"malformed message: {error}") from None
    if offset != len(data):
        raise BadMessage(f"{len(data) - offset} bytes after the last tensor")
    return message


class WallClock:
    """A component's clock on a real backend: the wall clock. `tick` is where the
    simulator takes its turns; `off_the_clock` is where it stops its clock."""
    now, sleep = staticmethod(time.perf_counter), staticmethod(time.sleep)

    def tick(self):
        pass

    def off_the_clock(self):
        return contextlib.nullcontext()


WALL_CLOCK = WallClock()


# -- the delay line shared by both transports ---------------------------------
class _Inbox:
    """Arrived messages, each released when its simulated delay has passed."""

    def __init__(self, latency_s, jitter_s, seed):
        self.arrived = queue.Queue(maxsize=INBOX_LIMIT)
        self.latency_s, self.jitter_s = latency_s, jitter_s
        self.rng = random.Random(seed)
        self.held, self.order = [], itertools.count()  # heap of (due, n, message)
        self.last_due = {}

    def put(self, message):
        try:
            self.arrived.put(message, timeout=30)
        except queue.Full:
            raise PeerFailure(f"inbox of {INBOX_LIMIT} messages stayed full for 30 s") from None

    def _hold(self, message):
        now = time.perf_counter()
        due = now + self.latency_s + self.rng.uniform(0, self.jitter_s)
        due = max(due, self.last_due.get(message["src"], 0.0))  # first-in first-out per link
        self.last_due[message["src"]] = due
        heapq.heappush(self.held, (due, next(self.order), message))

    def get(self, timeout):
        """The next due message, waiting at most `timeout` seconds; else None."""
        if not self.latency_s and not self.jitter_s:
            try:
                return self.arrived.get(timeout=timeout) if timeout else self.arrived.get_nowait()
            except queue.Empty:
                return None
        deadline = time.perf_counter() + (timeout or 0)
        while True:
            while True:  # move every arrival onto the delay line
                try:
                    self._hold(self.arrived.get_nowait())
                except queue.Empty:
                    break
            now = time.perf_counter()
            if self.held and self.held[0][0] <= now:
                return heapq.heappop(self.held)[2]
            if now >= deadline:
                return None
            wake = min(deadline, self.held[0][0]) if self.held else deadline
            try:
                self._hold(self.arrived.get(timeout=max(wake - now, 1e-4)))
            except queue.Empty:
                pass


# -- transports ---------------------------------------------------------------
class ThreadTransport:
    """Components as threads of one process: a send is a put into the inbox."""
    clock = WALL_CLOCK

    def __init__(self, rank, inboxes):
        self.rank, self.inboxes = rank, inboxes

    @classmethod
    def group(cls, size, latency_s=0.0, jitter_s=0.0, seed=0):
        inboxes = [_Inbox(latency_s, jitter_s, seed * 1000 + r) for r in range(size)]
        return [cls(r, inboxes) for r in range(size)]

    def send(self, dst, message):
        self.inboxes[dst].put(dict(message, src=self.rank))

    def receive(self, timeout=0.0):
        return self.inboxes[self.rank].get(timeout)

    def close(self):
        pass


class GlooTransport:
    """One rank of a torch.distributed gloo group; messages to and from any rank.

    The receiver thread waits at most `timeout_s` for the next message from
    anyone: components send heartbeats, so silence that long means a dead
    peer or a broken link, and the run fails instead of hanging. It stops by
    itself once `last` = (kind, count) final messages have arrived. Joining
    the group waits at most `join_timeout_s` for every rank.
    """
    clock = WALL_CLOCK

    def __init__(self, store, rank, world_size, timeout_s, last, latency_s=0.0, jitter_s=0.0,
                 seed=0, join_timeout_s=30.0):
        import torch.distributed as dist
        self.dist, self.rank, self.timeout_s = dist, rank, timeout_s
        try:
            dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size,
                                    timeout=datetime.timedelta(seconds=join_timeout_s))
        except (RuntimeError, TimeoutError) as error:
            raise PeerFailure(f"rank {rank}: the {world_size} ranks did not all join within {join_timeout_s:g} s "
                              f"({first_line(error)}); are the others started, and can they reach "
                              "this host?") from None
        self.inbox = _Inbox(latency_s, jitter_s, seed * 1000 + rank)
        self.send_lock = threading.Lock()
        self.error, self.bad_messages = None, 0
        self.last_kind, self.finals_left = last  # (kind, count): stop after these
        self.receiver = threading.Thread(target=self._receive_loop, daemon=True,
                                         name=f"receiver-{rank}")
        self.receiver.start()

    def _receive_loop(self):
        wait = datetime.timedelta(seconds=self.timeout_s)
        try:
            while self.finals_left > 0:
                length = torch.zeros(1, dtype=torch.int64)
                work = self.dist.irecv(length)  # from any rank
                try:
                    work.wait(wait)
                except RuntimeError:
                    raise PeerFailure(f"no message from any neighbour for {self.timeout_s:g} s "
                                      "(a peer died or the network is down)") from None
                src, size = work._source_rank(), int(length)
                if not 0 < size <= MAX_MESSAGE_BYTES:  # its bytes could not be taken in: the link is broken
                    raise PeerFailure(f"rank {src} announced a message of {size} bytes "
                                      f"(limit {MAX_MESSAGE_BYTES}); is something else on this port?")
                payload = torch.empty(size, dtype=torch.uint8)
                self.dist.irecv(payload, src=src).wait(wait)
                try:
                    message = dict(decode(payload), src=src)   # the sender is who gloo says it is
                except BadMessage:
                    self.bad_messages += 1
                    continue
                self.inbox.put(message)
                if message.get("kind") == self.last_kind:
                    self.finals_left -= 1
        except Exception as error:  # handed to the component's loop, which fails the run
            self.error = error

    def send(self, dst, message):
        self.send_payload(dst, encode(dict(message, src=self.rank)))

    def send_payload(self, dst, payload):
        """Send encoded bytes (a uint8 tensor) as one message: `send`'s wire step."""
        with self.send_lock:  # length and bytes must not interleave with another send
            # A link that went down takes TCP minutes to notice: wait --peer-timeout at most.
            wait = datetime.timedelta(seconds=self.timeout_s)
            try:
                for tensor in (torch.tensor([payload.numel()], dtype=torch.int64), payload):
                    if not self.dist.isend(tensor, dst=dst).wait(wait):
                        raise RuntimeError(f"no progress for {self.timeout_s:g} s")
            except RuntimeError as error:  # the link broke: the peer is the likely cause, not us
                raise PeerFailure(f"component_{dst} unreachable: a message to it failed or made no progress "
                                  f"for {self.timeout_s:g} s ({first_line(error)})") from None

    def receive(self, timeout=0.0):
        message = self.inbox.get(timeout)
        if message is None and self.error is not None:
            raise PeerFailure(str(self.error))
        return message

    def close(self):
        self.receiver.join(timeout=self.timeout_s)
        if not self.receiver.is_alive():
            self.dist.destroy_process_group()
