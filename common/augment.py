"""Training-batch augmentation on device tensors: the crop-and-flip of the local-loss
paper's Fashion-MNIST runs (torchvision's RandomCrop(28, padding=2) then
RandomHorizontalFlip), applied to a whole minibatch at once.

    batches = crop_flip_batches(batches, seed, fill=data.train_x.min().item())
"""
import torch
import torch.nn.functional as F


def crop_flip(x, top, left, flip, pad=2, fill=0.0):
    """Image i of x (n, c, h, w), padded by `pad` pixels of value `fill` on every side,
    cropped back to h x w from row top[i] and column left[i] (each in 0..2 pad), then
    mirrored left-right where flip[i]: out[i, :, r, s] = padded[i, :, top_i + r, col]
    with col = left_i + s, or left_i + w - 1 - s when flipped."""
    n, c, h, w = x.shape
    arange = lambda size: torch.arange(size, device=x.device)
    rows = top.to(x.device)[:, None] + arange(h)                              # (n, h)
    cols = left.to(x.device)[:, None] + arange(w)                             # (n, w)
    cols = torch.where(flip.to(x.device)[:, None], cols.flip(1), cols)
    padded = F.pad(x, (pad, pad, pad, pad), value=fill)
    return padded[arange(n)[:, None, None, None], arange(c)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


def random_crop_flip(x, generator, pad=2, fill=0.0):
    """crop_flip with offsets uniform in 0..2 pad and flips with probability 1/2, drawn from
    the CPU `generator` (the same draws on every device)."""
    top, left = torch.randint(0, 2 * pad + 1, (2, len(x)), generator=generator)
    flip = torch.rand(len(x), generator=generator) < 0.5
    return crop_flip(x, top, left, flip, pad, fill)


def crop_flip_batches(batches, seed, fill, pad=2):
    """The (x, y) of `batches`, each x through random_crop_flip; its random numbers come
    from a generator of its own, seeded with `seed`, so the batches' order is unchanged.
    `fill`: the value of a black pixel in the normalised images."""
    generator = torch.Generator().manual_seed(seed)
    for x, y in batches:
        yield random_crop_flip(x, generator, pad, fill), y
