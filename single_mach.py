"""single_mach.py: one MACH component, a teacher and the student that distils it.

Docs: README.md, section "single_mach.py". Reproduces "Test 1" of the MACH
repository (unconst/MACH; TensorFlow 1.x, October 2019):
F(x) = f0, one component, with a local student.

A MACH component is a teacher f0 that learns the task and a student f0'
that learns to imitate the teacher's embedding from the same input, without
ever seeing a label. Once trained, the student can stand in for the teacher
wherever a neighbour needs f0's embedding: that is what lets later scripts
(sequential_mach.py, kgraph_mach.py, async_mach.py) train and answer
without running their neighbours.

    teacher  t = relu(W3 relu(W2 relu(W1 x)))          x -> 512 -> 256 -> 128
    student  s = W3' relu(W2' relu(W1' x))              x -> 512 -> 256 -> 128 (linear out)
    logits     = L t  (teacher),  L s  (student)        one 128 -> 10 layer, shared

    loss = CE(L t, y) + distill,   distill = 1/2 * sum_{batch, units} (sg(t) - s)^2

sg() is stop-gradient: the distillation term trains only the student, and
the cross-entropy term trains only the teacher and L. This is TF's
`l2_loss(stop_gradient(t) - s)`, a sum over the batch, not a mean.

Original defaults kept: batch 128, Adam lr 1e-4, 10,000 iterations,
embedding 128, hidden 512 and 256, truncated-normal std 0.1 weights and 0.1
biases (--init tf). Deviations: inputs are standardised (mean 0, std 1)
rather than scaled to [0, 1]; test accuracy is measured every
--eval-every 500 steps on the whole test set (the original printed every 100).
--baseline (ours) also trains the teacher's MLP alone by backprop, on the same batches
with its own Adam and its own clock: what a MACH component costs against plain backprop.

Original result (MNIST, defaults): teacher 97.87 %, student 97.49 %.
Measured results (generated from the logged runs, with hardware and seeds): README.md,
section "single_mach.py"; against a tuned backprop: the README's first table.

    python single_mach.py --dataset fashion-mnist
"""
from contextlib import nullcontext

from common import cli


def build_parser():
    parser = cli.make_parser(__doc__, iterations=10_000, batch_size=128, lr=1e-4,
                             eval_every=500)
    mach = parser.add_argument_group("MACH (original defaults)")
    mach.add_argument("--embedding-size", type=cli.positive_int, default=128,
                      help="size of the teacher's and the student's embedding")
    mach.add_argument("--hidden", type=cli.positive_int, nargs=2, default=[512, 256],
                      metavar=("H1", "H2"), help="hidden sizes of teacher and student")
    mach.add_argument("--init", choices=cli.INITS, default="tf",
                      help="tf: truncated normal std 0.1, bias 0.1 (original); torch: PyTorch default")
    mach.add_argument("--baseline", action="store_true",
                      help="also train the teacher's network alone by backprop (no student): same "
                           "batches, its own Adam and clock")
    return parser


if __name__ == "__main__":  # a bad flag is refused before the 2-3 s of `import torch` below
    cli.check_flags(build_parser())
import torch
import torch.nn.functional as F
from torch import nn
from common.data import Batches, load_data
from common.models import make_optimizer, mlp
from common.clocks import Clock
from common.evaluation import evaluate
from common.run_folder import Run


class SingleMach(nn.Module):
    """A teacher, its student and the logits layer they share."""

    def __init__(self, input_size, hidden, embedding_size, num_classes, init):
        super().__init__()
        sizes = [input_size, *hidden, embedding_size]
        self.teacher = mlp(sizes, activate_output=True, init=init)   # ReLU on all three
        self.student = mlp(sizes, activate_output=False, init=init)  # linear embedding
        self.logits = mlp([embedding_size, num_classes], init=init)

    def losses(self, x, y):
        teacher_embedding = self.teacher(x)
        student_embedding = self.student(x)
        cross_entropy = F.cross_entropy(self.logits(teacher_embedding), y)
        # 1/2 sum (sg(t) - s)^2: the student chases the teacher, never the reverse.
        distill = 0.5 * (teacher_embedding.detach() - student_embedding).pow(2).sum()
        return cross_entropy, distill

    def teacher_logits(self, x):
        return self.logits(self.teacher(x))

    def student_logits(self, x):
        # Answers without the teacher: the student's embedding through the shared layer.
        return self.logits(self.student(x))


def train_step(model, optimizer, x, y):
    """Both losses, one backward, one Adam update; stop-gradient keeps the two apart."""
    cross_entropy, distill = model.losses(x, y)
    optimizer.zero_grad(set_to_none=True)
    (cross_entropy + distill).backward()
    optimizer.step()
    return cross_entropy, distill


def main(argv=None):
    args, device = cli.setup(build_parser(), "single_mach", argv)
    data = load_data(args.dataset, args.data_dir, device, flat=True)
    model = SingleMach(data.input_size, args.hidden, args.embedding_size,
                       data.num_classes, args.init).to(device)
    optimizer = make_optimizer(model.parameters(), "adam", args.lr)
    if args.baseline:  # what MACH costs: the same MLP, x -> 512 -> 256 -> 128 -> 10, backprop only
        plain = nn.Sequential(mlp([data.input_size, *args.hidden, args.embedding_size], activate_output=True,
                                  init=args.init),
                              mlp([args.embedding_size, data.num_classes], init=args.init)).to(device)
        plain_optimizer = make_optimizer(plain.parameters(), "adam", args.lr)
    batches = Batches(data.train_x, data.train_y, args.batch_size, args.seed)
    stream = iter(batches)

    # With --baseline the two share the loop, each on its own clock (same batches); without it
    # no clock (on a GPU each reading would synchronise the step).
    clocks = {"mach": Clock(device), "backprop": Clock(device)}
    with Run(args, "single_mach", device, total=args.iterations) as run:
        if args.baseline:
            run.clock_of = lambda name: "sec/backprop" if name == "backprop" else "sec/mach"
        for step in run.steps():
            x, y = next(stream)
            with clocks["mach"] if args.baseline else nullcontext():
                cross_entropy, distill = train_step(model, optimizer, x, y)
            if args.baseline:
                with clocks["backprop"]:
                    plain_optimizer.zero_grad(set_to_none=True)
                    F.cross_entropy(plain(x), y).backward()
                    plain_optimizer.step()

            if step % args.eval_every == 0 or step == args.iterations:
                with run.evaluating(), torch.inference_mode():
                    accuracy = {"teacher": evaluate(model.teacher_logits, data.test_x, data.test_y)[1],
                                "student": evaluate(model.student_logits, data.test_x, data.test_y)[1]}
                    if args.baseline:
                        accuracy["backprop"] = evaluate(plain, data.test_x, data.test_y)[1]
                run.log(step, batches.epoch, accuracy=accuracy,
                        losses={"ce": cross_entropy.item(), "distill": distill.item() / len(x)},  # per example
                        extra={f"sec/{k}": round(c.seconds, 3) for k, c in clocks.items()}
                        if args.baseline else None)

        # For the results table: the student against the teacher it distils.
        for name, original in (("teacher", "97.87"), ("student", "97.49")):
            run.declare_row(name, "test accuracy", round(100 * run.summary["test_accuracy"][name], 4),
                            "%", f"{original} % on MNIST (original MACH code)", headline=True)
        if not args.baseline:
            run.time_to_target([("student", "teacher")])
            return
        run.declare_row("backprop", "test accuracy", round(100 * run.summary["test_accuracy"]["backprop"], 4),
                        "%", headline=True)
        for name, clock in clocks.items():
            run.declare_row(name, "own training seconds", round(clock.seconds, 2), "s")
        run.time_to_target([("teacher", "backprop"), ("student", "backprop"), ("student", "teacher")])


if __name__ == "__main__":
    cli.run_script(main)
