"""How a model is tested: its mean cross-entropy and accuracy over a whole split,
in batches, with dropout and BatchNorm in evaluation mode where asked.
Time spent here is kept off the training clocks by `Run.evaluating()`.
"""
from contextlib import contextmanager

import torch


@torch.inference_mode()
def evaluate(predict, x, y, batch_size=2000):
    """(mean cross-entropy, accuracy) of `predict(x) -> logits` over a whole split."""
    total_loss, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        logits = predict(x[start:start + batch_size])
        target = y[start:start + batch_size]
        total_loss += torch.nn.functional.cross_entropy(logits, target, reduction="sum").item()
        correct += (logits.argmax(1) == target).sum().item()
    return total_loss / len(x), correct / len(x)


@contextmanager
def eval_mode(*modules):
    """Dropout and BatchNorm in evaluation mode inside, as they were afterwards."""
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)
