"""K stages on K imagined devices, priced: a deterministic discrete-event model of one method's
training steps in the parallel race (benchmarks/parallel_race.py) for any K, on links with
latency and bandwidth, where only K = 2 runs for real on two cores. It prices; it does not train.

    python -m common.stage_virtual_time        # mlp 16 x 1024, K = 2..16, four links: a table

Link, one direction between neighbours; b bytes handed over at t (bandwidth None: infinite):
    start = max(t, free);  free = start + b / bandwidth;  arrival = free + latency
gloo's TCP pairs rendezvous: the bytes leave once the receiver's "receive posted" notice is
back, so t = max(sent, posted + latency); a sender's wait for its send ends at `free`.

Actions and their prices (forward, backward, update, a synthetic module's): common/stage_prices.py,
from virtual_time's formula and DEFAULT_MACHINE; `seconds={(k, what): s}` replaces prices
(calibration from stage_<k>_events.jsonl).

Schedules: one generator of actions per stage, run in order; a receive waits for its arrival,
a send's wait for its end (idle time). From torch 2.14's _step_microbatches:
  gpipe   per microbatch: post the receive, wait, F (the last stage's loss inside), fire the
          send; wait the sends; the M backwards alike, downwards; update (grads / M, Adam).
  1f1b    K - k warm-up forwards (each waits the previous send), then B, F, B, ...: a forward's
          send fires with the next backward's receive, both waited for, a backward's with the
          next forward's receive; the cool-down backwards. backprop = gpipe with K = M = 1.
  ddp     every rank alike: forward, backward of the whole network on B/K. DDP's buckets (in
          gradient order, 1 MiB then 25 MiB, closed once full) are all-reduced one after another,
          bucket j from when the backward made it: a ring of 2(K-1) rounds, each W_j/K bytes to
          the next rank (receives posted ahead) and W_j/K elements added (one op), on gloo's
          thread beside the backward (not busy time). The update waits for the last bucket.
  dgl, predsim  receive h_{k-1}(s), forward body + head + loss, send h_k, backward, update.
          A send first waits for the previous one's end; the receiving thread posts receive s
          once s-1 arrived and fewer than --queue wait (common/stage_group.Link).
  dni, cdni  forward, send, M_k's forward, backward, update, target sent down; M_k learns from
          the targets arrived, waiting while more than 2 queue + 2 are stashed.
  ddg     forward (copying the weights), send; batch s's backward + update once dL/dh_k(s) is
          back, waiting while K - k are unanswered. Last stages (dni, ddg): backprop on their
          part, gradient sent down. Links down hold 2 queue + 2 + K.
A poll (has it arrived?) is answered in time order: once every other stage waits or is later.

Over the last half of `steps` (finish(s): the latest stage's end of step s, n = steps):
    seconds_per_step = (finish(n-1) - finish(n/2-1)) / (n - n/2);  bubble_k = 1 - busy_k / that span
Left out: what torch's engines do around the actions (PipelineStage's bookkeeping, DDP's bucket
copies), gloo's segmented ring and its two worker threads, compute slowed by communication,
jitter. On the meta device one_hot skips its range checks: predsim and cdni's M_k, 2 ops short.

Priced, not yet calibrated (the table above, DEFAULT_MACHINE, batch 128): the 16-block mlp on
one device 171 ms a step; at K = 16 on 1 ms links GPipe (M = 32) 205 ms, DDP 139, DGL 7.9.
"""
import types

import torch

from common.runtime_flags import DEFAULT_MACHINE
from common.stage_prices import LOCAL, split_network, stage_counts, stage_seconds
from common.virtual_time import seconds_of

SCHEDULE = {"backprop": "one process", "gpipe": "GPipe", "1f1b": "1F1B", "ddp": "DDP, ring all-reduce"}
METHODS = (*SCHEDULE, "dgl", "predsim", "dni", "cdni", "ddg")
BUCKETS = (2 ** 20, 25 * 2 ** 20)   # DDP's first bucket cap and every later one's (bytes)


# ============================================================================ links
class Link:
    """One direction between two neighbours: latency_s, bandwidth in bytes/s (None: infinite).
    on_cpu: the ranks' own cores move the bytes (localhost TCP: the kernel copies on both ends),
    so a DDP all-reduce is busy time of its rank and does not overlap its backward."""

    def __init__(self, latency_s=0.0, bandwidth=None, on_cpu=False):
        self.latency_s, self.bandwidth, self.on_cpu, self.free = latency_s, bandwidth, on_cpu, 0.0

    def copy(self):
        return Link(self.latency_s, self.bandwidth, self.on_cpu)

    def transmit(self, t, nbytes):
        """(end of sending, arrival) of nbytes handed over at t, after what it already carries."""
        start = max(t, self.free)
        self.free = start + (nbytes / self.bandwidth if self.bandwidth else 0.0)
        return self.free, self.free + self.latency_s


class Channel:
    """One stage's messages to another over a Link, in order. capacity None: the receiver posts
    each receive ("post"); else a thread posts receive s once s-1 arrived and s-1-capacity was taken."""

    def __init__(self, link, capacity=None):
        self.link, self.capacity = link, capacity
        self.sent, self.posted, self.taken, self.done, self.arrival = [], [], [], [], []

    def post_time(self, s):
        if self.capacity is None:
            return self.posted[s] if s < len(self.posted) else None
        room = s - 1 - self.capacity
        if room < len(self.taken):
            return max(self.arrival[s - 1] if s else 0.0, self.taken[room] if room >= 0 else 0.0)

    def resolve(self):
        while len(self.done) < len(self.sent) and (post := self.post_time(len(self.done))) is not None:
            t, nbytes = self.sent[len(self.done)]
            end, arrival = self.link.transmit(max(t, post + self.link.latency_s), nbytes)
            self.done.append(end)
            self.arrival.append(arrival)


# ============================================================================ schedules
def _recv(ch):
    return ("post", ch), ("recv", ch)


def gpipe(k, K, M, steps, cost, up, down, nbytes):
    first, last = k == 0, k == K - 1
    for _ in range(steps):
        for m in range(M):
            yield from () if first else _recv(up[k - 1])
            yield "compute", f"F{m}", cost["forward"]
            yield from () if last else [("send", up[k], nbytes[k])]
        yield from () if last else [("flush", up[k])]
        for m in range(M):
            yield from () if last else _recv(down[k])
            yield "compute", f"B{m}", cost["backward"]
            yield from () if first else [("send", down[k - 1], nbytes[k - 1])]
        yield from () if first else [("flush", down[k - 1])]
        yield from (("compute", "U", cost["update"]), ("step",))


def one_f_one_b(k, K, M, steps, cost, up, down, nbytes):
    first, last = k == 0, k == K - 1
    send_up = ("send", None if last else up[k], nbytes[k])
    send_down = ("send", None if first else down[k - 1], nbytes[k - 1])
    for _ in range(steps):
        warmup, f, b = min(M, K - k), 0, 0
        for i in range(warmup):
            yield from () if first else _recv(up[k - 1])
            yield "compute", f"F{f}", cost["forward"]
            f += 1   # wait for the previous send; the last warm-up one goes with the first receive below
            yield from () if last else [("flush", up[k])] + [send_up] * (i != warmup - 1)
        while True:
            yield from () if last else (send_up, ("post", down[k]), ("flush", up[k]), ("recv", down[k]))
            yield "compute", f"B{b}", cost["backward"]
            b += 1
            if f == M:
                break
            yield from () if first else (send_down, ("post", up[k - 1]), ("flush", down[k - 1]), ("recv", up[k - 1]))
            yield "compute", f"F{f}", cost["forward"]
            f += 1
        yield from () if first else [send_down]
        while b < M:
            yield from () if last else _recv(down[k])
            yield "compute", f"B{b}", cost["backward"]
            b += 1
            yield from () if first else (("flush", down[k - 1]), send_down)
        yield from () if first else [("flush", down[k - 1])]
        yield from (("compute", "U", cost["update"]), ("step",))


def decoupled(method, k, K, steps, cost, up, down, nbytes, queue):
    first, last, dni, unanswered = k == 0, k == K - 1, method in ("dni", "cdni"), 0
    waits = not (last or method in LOCAL)   # something comes back from above
    limit = 2 * queue + 2 if dni else K - k - 1   # dni: targets stashed; ddg: K - k unanswered
    send_up = () if last else (("flush", up[k]), ("send", up[k], nbytes[k]))   # a send waits for the one before
    send_down = () if first or method in LOCAL else (("flush", down[k - 1]), ("send", down[k - 1], nbytes[k - 1]))
    descend = [("compute", "B", cost["backward"]), ("compute", "U", cost["update"]), *send_down]
    answer = [("compute", "L", cost.get("synthetic_learn"))] if dni else descend   # what a message from above sets off
    for _ in range(steps):
        yield from () if first else [("recv", up[k - 1])]
        yield "compute", "F", cost["forward"]
        yield from send_up
        if not waits or dni:
            yield from ([("compute", "S", cost["synthetic"])] if waits else []) + descend
        unanswered += waits
        while unanswered > limit or (unanswered and (yield "poll", down[k])):   # must wait, or it has arrived
            yield from [("recv", down[k])] if unanswered > limit else ()
            unanswered -= 1
            yield from answer
        yield "step",


def simulate(programs, trace=False):
    """Run each stage's actions to their end: stages with marks [(t, busy)] per step, sent bytes."""
    stages = [types.SimpleNamespace(gen=g, op=next(g), t=0.0, busy=0.0, sent=0, marks=[], trace=[], polls=[])
              for g in programs]

    def act(st):
        """st's next action: its reply (a poll's: arrived?), None while it waits on the unknown."""
        kind, ch = st.op[0], st.op[1] if len(st.op) > 1 else None
        if kind in ("recv", "poll"):
            if len(ch.taken) >= len(ch.arrival):
                return None
            if kind == "poll" and ch.arrival[len(ch.taken)] > st.t:
                return False
            st.t = max(st.t, ch.arrival[len(ch.taken)])
            ch.taken.append(st.t)
        elif kind == "flush":
            if len(ch.done) < len(ch.sent):
                return None
            st.t = max([st.t, *ch.done[-1:]])
        elif kind == "compute":
            st.trace += [(ch, st.t, st.t + st.op[2])] if trace else []
            st.t, st.busy = st.t + st.op[2], st.busy + st.op[2]
        elif kind == "send":
            ch.sent.append((st.t, st.op[2]))
            st.sent += st.op[2]
        elif kind == "post":
            ch.posted.append(st.t)
        else:   # step
            st.marks.append((st.t, st.busy))
        if kind not in ("compute", "step"):
            ch.resolve()
        return True

    def advance(st, reply):
        if st.op[0] == "poll":
            st.polls.append(reply)
        try:
            st.op = st.gen.send(reply if st.op[0] == "poll" else None)
        except StopIteration:
            st.op = None
    while True:
        moved = False
        for st in stages:
            while st.op is not None and (reply := act(st)) is not None:
                advance(st, reply)
                moved = True
        if not moved:
            polls = [st for st in stages if st.op is not None and st.op[0] == "poll"]
            if not polls and any(st.op is not None for st in stages):
                raise RuntimeError("the schedule deadlocks: every stage waits")
            if not polls:
                return stages
            advance(min(polls, key=lambda st: st.t), False)   # the earliest in time: not arrived


def ddp(K, steps, cost, buckets, link, add):
    """A rank's marks (all alike); buckets [(bytes, seconds into the backward it is made)]."""
    links, t, busy, marks = [link.copy() for _ in range(K)], 0.0, 0.0, []
    compute = cost["forward"] + cost["backward"] + cost.get("bucket_copy", 0.0) + cost["update"]
    for _ in range(steps):
        backward, ring = t + cost["forward"], 0.0
        if link.on_cpu:   # after the backward, on the same core: each round sends and receives W_j/K
            rounds = [(2 * nbytes / K / (link.bandwidth or float("inf")) + add(nbytes / K), link.latency_s)
                      for nbytes, _ in buckets for _ in range(2 * (K - 1))]
            ring = backward + cost["backward"] + sum(c + w for c, w in rounds)
            busy += sum(c for c, _ in rounds)
        for nbytes, made in [] if link.on_cpu else buckets:
            times = [max(ring, backward + made)] * K
            for _ in range(2 * (K - 1)):   # rank r sends to r + 1, adds what r - 1 sent
                arrivals = [links[r].transmit(times[r], nbytes / K)[1] for r in range(K)]
                times = [max(times[r], arrivals[r - 1]) + add(nbytes / K) for r in range(K)]
            ring = max(times)
        t = max(backward + cost["backward"], ring) + cost.get("bucket_copy", 0.0) + cost["update"]
        busy += compute
        marks.append((t, busy))
    sent = 2 * (K - 1) * sum(b for b, _ in buckets) / K * steps
    return [types.SimpleNamespace(marks=marks, sent=sent)] * K


def buckets_of(ready, scale, to_seconds):
    """DDP's buckets in gradient order: [(bytes, seconds into the backward its last gradient is made)]."""
    out, size, caps = [], 0, iter(BUCKETS)
    cap = next(caps)
    for i, (nbytes, counts) in enumerate(ready):
        size += nbytes
        if size >= cap or i == len(ready) - 1:
            out.append((size, scale * to_seconds(counts)))
            size, cap = 0, next(caps, cap)
    return out


# ============================================================================ the entry point
def price(method, network="mlp", K=2, microbatches=None, batch_size=128, link=None, machine=None,
          steps=50, queue=2, seconds=None, width=1024, depth=16, trace=False):
    """One method's steps on K devices: seconds_per_step (steady state); per stage the bubble,
    compute_seconds and sent_bytes_per_step (per step); action_seconds {(k, what): s} (after
    `seconds`' replacements); the schedule; with trace, each stage's [(action, t0, t1)] and the
    answers to its polls. microbatches: gpipe, 1f1b (default 2K); link: a Link (each direction
    gets a copy); machine: op prices {gflops, gelements, op_us} (default DEFAULT_MACHINE), or
    "measured": each action run for real on this CPU, one thread (stage_prices.stage_seconds)."""
    link, machine, seconds = link or Link(), machine or DEFAULT_MACHINE, seconds or {}
    pipelined, M = method in SCHEDULE, (microbatches or 2 * K) if method in ("gpipe", "1f1b") else 1
    K = 1 if method == "backprop" else K
    stages_K = 1 if method in ("backprop", "ddp") else K
    if method not in METHODS or batch_size % (M * (K if method == "ddp" else 1)) or (method == "1f1b" and M < K):
        raise ValueError(f"cannot price {method} with K={K}, M={M}, batch {batch_size}")
    batch = batch_size // (K if method == "ddp" else M)
    measured = machine == "measured"
    to_seconds = (lambda c: c) if measured else (lambda c: seconds_of(c, machine))
    counted = [(stage_seconds if measured else stage_counts)(method, network, width, depth, stages_K, k, batch, M)
               for k in range(stages_K)]
    actions = {(k, w): seconds.get((k, w), to_seconds(c)) for k, (cs, _) in enumerate(counted)
               for w, c in cs.items()}
    costs = [{w: s for (j, w), s in actions.items() if j == k} for k in range(stages_K)]
    if method == "ddp":
        scale = costs[0]["backward"] / to_seconds(counted[0][0]["backward"])
        params = sum(nbytes for nbytes, _ in counted[0][1]) / 4
        add = ((lambda nbytes: costs[0]["bucket_copy"] * nbytes / 4 / (2 * params)) if measured   # a pass, as a copy
               else (lambda nbytes: seconds_of((0, nbytes / 4, 1), machine)))
        stages = ddp(K, steps, costs[0], buckets_of(counted[0][1], scale, to_seconds), link, add)
    else:
        nbytes = [4 * batch * torch.Size(s).numel() for s in split_network(network, width, depth, K)[2]]
        new = lambda capacity: Channel(link.copy(), capacity)
        up = [new(None if pipelined else queue) for _ in range(K - 1)]
        down = [new(None if pipelined else 2 * queue + 2 + K) for _ in range(K - 1)]
        stages = simulate([one_f_one_b(k, K, M, steps, costs[k], up, down, nbytes) if method == "1f1b"
                           else gpipe(k, K, M, steps, costs[k], up, down, nbytes) if pipelined
                           else decoupled(method, k, K, steps, costs[k], up, down, nbytes, queue)
                           for k in range(K)], trace)
    half, mark = steps // 2, lambda st, s: st.marks[s] if s >= 0 else (0.0, 0.0)
    span = max(st.marks[-1][0] for st in stages) - max(mark(st, half - 1)[0] for st in stages)
    busy = [st.marks[-1][1] - mark(st, half - 1)[1] for st in stages]
    return dict(method=method, K=K, microbatches=M, schedule=SCHEDULE.get(method, f"decoupled, queue {queue}"),
                seconds_per_step=span / (steps - half), bubble=[1 - b / span for b in busy],
                compute_seconds=[b / (steps - half) for b in busy], action_seconds=actions,
                sent_bytes_per_step=[st.sent / steps for st in stages],
                finish=[max(st.marks[s][0] for st in stages) for s in range(steps)],   # when each step has ended
                **(dict(trace=[st.trace for st in stages], polls=[st.polls for st in stages]) if trace else {}))


if __name__ == "__main__":
    OTHERS = ("backprop", "predsim", "cdni")   # backprop: its own row; predsim, cdni: variants of dgl, dni
    links = {"0 ms, inf": Link(), "1 ms, inf": Link(1e-3), "0 ms, 10 Gbit/s": Link(0, 10e9 / 8),
             "1 ms, 10 Gbit/s": Link(1e-3, 10e9 / 8)}
    print(f"mlp 16 x 1024, batch 128, machine {DEFAULT_MACHINE}: ms per step (largest bubble) on each link")
    print(f"{'method':8} {'K':>3} " + "".join(f"{name:>22}" for name in links))
    for K, method in [(1, "backprop")] + [(K, m) for K in (2, 4, 8, 16) for m in METHODS if m not in OTHERS]:
        cells = [price(method, K=K, link=l, steps=8 if method in SCHEDULE else 50)   # sync: every step alike
                 for l in links.values()]
        print(f"{method:8} {K:3d} " + "".join(f"{1e3 * r['seconds_per_step']:.2f} ({max(r['bubble']):.2f})".rjust(22)
                                              for r in cells))
