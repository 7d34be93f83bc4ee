"""The synchronous methods of the parallel race: each one's update is exactly one-process
backprop's on the same batch (tests/test_parallel_race.py checks it), and each is the
engine a user would pick, used as torch ships it:

    backprop  one process (--threads): min mean_i CE(net(x_i), y_i) over the batch B.
    gpipe     torch.distributed.pipelining: PipelineStage(stage k's blocks, + the output
              layer on the last), ScheduleGPipe(stage, M, loss_fn=CE): all M microbatch
              forwards, then all M backwards. torch sums the microbatch gradients and scales
              them by 1/M (scale_grads), so with microbatches of B/M examples
                  grad = 1/M sum_m grad mean_{i in m} CE = grad mean_{i in B} CE.
              Bubble on K equal stages (K - 1) / (M + K - 1); stage k holds M microbatches'
              activations at its peak.
    1f1b      Schedule1F1B: stage k runs K - k warm-up forwards, then alternates one forward
              and one backward, then drains. Same bubble; at most K - k microbatches' activations
              held. M >= K.
    ddp       DistributedDataParallel on K ranks, the whole network on each: rank r takes
              examples rB/K .. (r+1)B/K - 1 of the batch, and DDP averages the K gradients by
              all-reduce (in buckets, overlapping the backward): the batch's mean CE again.

Then each rank takes one optimizer step (--optimizer, --lr) on the parameters it holds.
Timeline (common/stage_meters.py): forward and backward per microbatch (torch's stage
methods, timed), update, and the messages their sends carry (microbatch activations and
gradients; DDP: one all-reduce of every gradient per step, the bytes of all of them).
"""
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

from common.models import make_optimizer
from common.stage_networks import named_state, split, stage_of

SCHEDULES = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}


class Backprop:
    """One-process backprop (K = 1): the reference every method is measured against."""
    replicated = True   # evaluation: the whole network here

    def __init__(self, args, net, rank, data, timeline, meter):
        self.net, self.data, self.timeline, self.loss = net, data, timeline, None
        self.model = self.wrap(net.backprop_net())
        self.optimizer = make_optimizer(self.model.parameters(), args.optimizer, args.lr)

    def wrap(self, model):
        return model

    def inputs(self, index, y):
        return self.data.train_x[index], y

    def step(self, index, y, last):
        x, y = self.inputs(index, y)
        span = self.timeline.span
        with span("compute", "forward"):
            loss = F.cross_entropy(self.model(x), y)
        with span("compute", "backward"):
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        self.record_messages()
        with span("compute", "update"):
            self.optimizer.step()
        self.loss = loss.item()

    def record_messages(self):
        """The step's messages, on the timeline: none in one process."""

    def prefetch(self):
        pass

    def eval_parts(self):
        return nn.Sequential(*self.net.blocks), self.net.heads[-1]

    def state(self):
        return named_state(self.net, [self.model])


class DataParallel(Backprop):
    """DDP: rank r's shard of the batch; the all-reduce inside backward averages the gradients."""

    def __init__(self, args, net, rank, data, timeline, meter):
        super().__init__(args, net, rank, data, timeline, meter)
        self.shard = slice(rank * args.batch_size // args.K, (rank + 1) * args.batch_size // args.K)
        self.gradient_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())

    def wrap(self, model):
        return nn.parallel.DistributedDataParallel(model)

    def inputs(self, index, y):
        return self.data.train_x[index[self.shard]], y[self.shard]

    def record_messages(self):
        """The backward's all-reduce carried every gradient once (a ring sends 2(K-1)/K of it);
        its waits sit inside the backward span, which DDP overlaps with them."""
        self.timeline.message("allreduce", None, self.gradient_bytes)

    def state(self):
        return named_state(self.net, [self.model.module])


class Pipelined:
    """Stage k of GPipe or 1F1B: torch's PipelineStage and schedule, M microbatches."""
    replicated = False

    def __init__(self, args, net, rank, data, timeline, meter):
        K, self.rank, self.net, self.data, self.timeline = args.K, rank, net, data, timeline
        bounds, shapes = split(net, K)
        self.body, self.head = stage_of(net, bounds, rank)
        self.last = rank == K - 1
        self.module = nn.Sequential(self.body, self.head) if self.last else self.body
        self.in_shape = shapes[rank - 1] if rank else None
        stage = PipelineStage(self.module, rank, K, torch.device("cpu"))
        self.schedule = SCHEDULES[args.method](stage, args.microbatches, loss_fn=F.cross_entropy)
        self.optimizer = make_optimizer(self.module.parameters(), args.optimizer, args.lr)
        self.loss = None
        microbatch = args.batch_size // args.microbatches
        time_stage(stage, timeline, rank, K,
                   sends_forward=4 * microbatch * torch.Size(shapes[rank]).numel() if not self.last else 0,
                   sends_backward=4 * microbatch * torch.Size(self.in_shape).numel() if rank else 0)

    def step(self, index, y, last):
        self.optimizer.zero_grad(set_to_none=True)
        if self.rank == 0:
            self.schedule.step(self.data.train_x[index], return_outputs=False)
        elif self.last:
            losses = []
            self.schedule.step(target=y, losses=losses, return_outputs=False)
            self.loss = torch.stack(losses).mean().item()   # microbatches of B/M: the batch's mean CE
        else:
            self.schedule.step(return_outputs=False)
        with self.timeline.span("compute", "update"):
            self.optimizer.step()

    def prefetch(self):
        pass

    def eval_parts(self):
        return self.body, self.head if self.last else None

    def state(self):
        return named_state(self.net, [self.module])


def time_stage(stage, timeline, rank, K, sends_forward, sends_backward):
    """Put torch's per-microbatch forward and backward of this stage on the timeline, with
    the bytes the schedule then sends (an activation on, a gradient back)."""
    forward, backward = stage.forward_one_chunk, stage.backward_one_chunk

    def timed_forward(chunk, *args, **kwargs):
        with timeline.span("compute", "forward", microbatch=chunk):
            out = forward(chunk, *args, **kwargs)
        if sends_forward:
            timeline.message("activation", rank + 1, sends_forward)
        return out

    def timed_backward(chunk, *args, **kwargs):
        with timeline.span("compute", "backward", microbatch=chunk):
            out = backward(chunk, *args, **kwargs)
        if sends_backward:
            timeline.message("gradient", rank - 1, sends_backward)
        return out
    stage.forward_one_chunk, stage.backward_one_chunk = timed_forward, timed_backward
