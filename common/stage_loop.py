"""The loop every rank of a parallel-race run runs, whatever its method, and how its
evaluations become the run's rows. The methods (a `trainer` per rank) live in
common/pipeline_sync.py and common/pipeline_decoupled.py; the processes in common/stage_group.py.

    evaluate (step 0)
    for step = 1 .. --steps:
        with the rank's clock and activation meter:  trainer.step(batch, last)
        every --eval-every steps and at the last:    evaluate, off every clock

Every rank draws the same batches: common.data.Batches over the training indices, seeded
by --seed, so stage k trains on batch s at its step s whatever the others do; the first
stage reads the images, every stage the labels (as if they travelled with the activations).

An evaluation is collective and off every clock, on the first --eval-size test images:
  pipeline layout (every split method): stage 0 pushes the images through its blocks and
      sends them on, in chunks; the last stage applies the output layer and counts the
      correct answers. The network is each stage as it is after its own step s: for the
      decoupled methods, the full network's forward, whose last head is the output layer.
  replicated layout (DDP, one-process backprop): rank k tests the whole network on its 1/K
      of the images.
Then every rank's figures (REPORT) are gathered (a float64 tensor each: nothing pickled
travels), and rank 0 hands the row to its sink. The barrier drains a decoupled pipeline;
the first input a stage awaits after it is awaited off the clock (trainer.prefetch): the
refill is the evaluation's cost, not training's.
"""
import torch
import torch.distributed as dist

from common.data import Batches
from common.evaluation import eval_mode
from common.stage_meters import ActivationMeter, RankClock, Timeline
from common.stage_networks import build_network

REPORT = ("steps", "seconds", "cpu_seconds", "wait_seconds", "compute_seconds", "peak_activation_bytes",
          "sent_bytes", "sent_messages", "loss", "has_loss", "correct", "evaluated")
EVAL_CHUNK = 1000
EVAL_TAG = 7


def run_rank(args, data, make_trainer, rank, sink):
    """One rank of a run: build the whole network from the seed, keep this rank's part
    (make_trainer), train --steps steps, evaluate on the way; rank 0 passes rows to `sink`."""
    K = args.K
    net = build_network(args.network, args.seed, args.width, args.depth, data.num_classes)
    torch.manual_seed(args.seed * 1000 + rank)   # this rank's own draws (dropout, a module's init)
    timeline = Timeline(args.out_path / f"stage_{rank}_events.jsonl")
    meter = ActivationMeter(net.parameters())
    trainer = make_trainer(args, net, rank, data, timeline, meter)
    clock = RankClock()
    batches = iter(Batches(torch.arange(len(data.train_x)), data.train_y, args.batch_size, args.seed))

    def point(step):
        with timeline.span("eval"):
            correct, evaluated = evaluate(trainer, rank, K, data, args.eval_size)
            mine = dict(steps=step, seconds=clock.seconds, cpu_seconds=clock.cpu_seconds,
                        wait_seconds=timeline.wait_seconds, compute_seconds=timeline.compute_seconds,
                        peak_activation_bytes=meter.peak,
                        sent_bytes=timeline.sent_bytes, sent_messages=timeline.sent_messages,
                        loss=trainer.loss if trainer.loss is not None else 0.0,
                        has_loss=float(trainer.loss is not None), correct=correct, evaluated=evaluated)
            figures = gather(torch.tensor([float(mine[f]) for f in REPORT], dtype=torch.float64), K)
        timeline.flush()
        if rank == 0:
            sink(make_row(step, step * args.batch_size / len(data.train_x), figures))

    try:
        point(0)
        for step in range(1, args.steps + 1):
            timeline.step = step
            index, y = next(batches)
            with clock, meter:
                trainer.step(index, y, last=step == args.steps)
            if step % args.eval_every == 0 or step == args.steps:
                point(step)
                if step < args.steps:
                    trainer.prefetch()
    finally:
        timeline.flush()   # however it ends, the timeline so far is kept
    if args.save_weights:
        torch.save(trainer.state(), args.out_path / f"stage_{rank}.pt")


def gather(vector, K):
    """Every rank's vector, in rank order (rank 0 reads them)."""
    if K == 1:
        return [vector]
    out = [torch.zeros_like(vector) for _ in range(K)]
    dist.all_gather(out, vector)
    return out


@torch.no_grad()
def evaluate(trainer, rank, K, data, eval_size):
    """(correct, evaluated) on this rank's share of the first eval_size test images."""
    body, head = trainer.eval_parts()
    x, y = data.test_x[:eval_size], data.test_y[:eval_size]
    n = len(x)
    with eval_mode(*(m for m in (body, head) if m is not None)):
        if trainer.replicated:
            part = slice(rank * n // K, (rank + 1) * n // K)
            x, y = x[part], y[part]
            correct = sum(int((head(body(x[i:i + EVAL_CHUNK])).argmax(1) == y[i:i + EVAL_CHUNK]).sum())
                          for i in range(0, len(x), EVAL_CHUNK))
            return correct, len(x)
        correct = 0
        for start in range(0, n, EVAL_CHUNK):
            size = min(EVAL_CHUNK, n - start)
            if rank == 0:
                h = x[start:start + size]
            else:
                h = torch.empty(size, *trainer.in_shape)
                dist.recv(h, rank - 1, tag=EVAL_TAG)
            h = body(h)
            if rank < K - 1:
                dist.send(h.contiguous(), rank + 1, tag=EVAL_TAG)
            else:
                correct += int((head(h).argmax(1) == y[start:start + size]).sum())
        return (correct, n) if rank == K - 1 else (0, 0)


def make_row(step, epoch, vectors):
    """Rank 0's row: the accuracy and each rank's figures (see common/stage_meters.py)."""
    ranks = []
    for v in vectors:
        r = dict(zip(REPORT, v.tolist()))
        seconds, steps = r["seconds"], r["steps"]
        ranks.append(dict(steps=int(steps), seconds=round(seconds, 4), cpu_seconds=round(r["cpu_seconds"], 4),
                          steps_per_second=round(steps / seconds, 3) if seconds else None,
                          cpu_seconds_per_step=round(r["cpu_seconds"] / steps, 5) if steps else None,
                          bubble=round(max(0.0, 1 - r["cpu_seconds"] / seconds), 4) if seconds else None,
                          wait_seconds=round(r["wait_seconds"], 4), compute_seconds=round(r["compute_seconds"], 4),
                          peak_activation_bytes=int(r["peak_activation_bytes"]),
                          sent_bytes=int(r["sent_bytes"]), sent_messages=int(r["sent_messages"]),
                          loss=r["loss"] if r["has_loss"] else None))
    correct, evaluated = sum(v[REPORT.index("correct")] for v in vectors), sum(v[REPORT.index("evaluated")]
                                                                               for v in vectors)
    return dict(step=step, epoch=epoch, accuracy=float(correct / evaluated), ranks=ranks)


def log_row(run, row):
    """Log a row in the run folder: its accuracy against the slowest rank's clock, each rank's
    clock and figures in their own columns, the latest per-rank figures in the summary."""
    ranks = row["ranks"]
    slowest = max(r["seconds"] for r in ranks)
    run.own_train_seconds = slowest   # the run's training seconds: its slowest rank's clock
    losses = {f"stage_{k}": r["loss"] for k, r in enumerate(ranks) if r["loss"] is not None}
    steps_per_second = round(row["step"] / slowest, 3) if slowest else None
    bubbles = [r["bubble"] for r in ranks]
    quiet = {}
    for k, r in enumerate(ranks):
        quiet.update({f"sec/stage_{k}": r["seconds"], f"cpu/stage_{k}": r["cpu_seconds"],
                      f"bubble/stage_{k}": r["bubble"],
                      f"peak_mb/stage_{k}": round(r["peak_activation_bytes"] / 2**20, 3)})
    extra = {"steps/s": steps_per_second} if steps_per_second else {}
    extra.update({f"bubble/{k}": b for k, b in enumerate(bubbles) if b is not None})
    run.summary.update(ranks=ranks, steps_per_second=steps_per_second, bubble=bubbles,
                       peak_activation_bytes=[r["peak_activation_bytes"] for r in ranks],
                       cpu_seconds_per_step=[r["cpu_seconds_per_step"] for r in ranks])
    run.log(row["step"], row["epoch"], accuracy={"network": row["accuracy"]}, losses=losses,
            extra=extra, quiet=quiet)   # raises Diverged on a NaN or infinite loss, the row kept
