"""Synthetic "multi-view" images after Allen-Zhu & Li (arXiv 2012.09816).

Each class owns `views` feature directions, all orthonormal in the patch space R^d
(d = channels * patch * patch); an image is a grid of such patches. A multi-view sample shows
every feature of its class, each in a few random patches with random positive weights; a
single-view sample (`extras["single_view"]`) shows only one of them, so a model that learnt just
another view of that class misses it; this is where ensembles and distillation help. A few
patches carry small multiples of other classes' features (feature noise), and every patch gets
small Gaussian noise. Class features come from the seed alone, so train and test share them;
each split (train, val, test, and transfer where `n_transfer` > 0: images from the training
distribution that teachers never see) draws its samples from its own stream of that seed.
`bench.data.TESTBED` is the preset the tiny grids use.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch

from bench.data import ImageSet
from bench.errors import BenchError, choose

# Real -> pixel map: pixel = clip(round(PIXEL_CENTER + PIXEL_GAIN * sqrt(d) * x), 0, 255).
# A random unit direction in R^d has coordinates of size ~1/sqrt(d), so scaling by sqrt(d) makes
# a full-weight feature's coordinates ~N(0, 1); a gain of 32 keeps +-4 such units (all but a
# ~1e-4 tail) inside 0..255 at about 1/32-unit resolution. It is fixed (not fitted per data set)
# so the same real image always becomes the same pixels.
PIXEL_CENTER = 127.5
PIXEL_GAIN = 32.0


def _generator(seed: int, stream: str) -> torch.Generator:
    # Independent, reproducible streams per (seed, purpose), not Python's salted hash().
    digest = hashlib.sha256(f"multiview:{seed}:{stream}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def class_features(seed: int, num_classes: int = 10, views: int = 2, dim: int = 48) -> torch.Tensor:
    """The (num_classes, views, dim) orthonormal float64 feature directions for a seed."""
    if num_classes * views > dim:
        raise BenchError(f"multiview: num_classes*views = {num_classes}*{views} = "
                         f"{num_classes * views} orthonormal features do not fit in patch "
                         f"dimension d = {dim} (channels*patch*patch); lower them or enlarge patch")
    g = torch.randn(dim, num_classes * views, generator=_generator(seed, "features"),
                    dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    # QR is unique only up to column signs; fixing diag(R) > 0 makes it independent of LAPACK.
    q = q * torch.sign(torch.diagonal(r))
    return q.T.reshape(num_classes, views, dim).contiguous()


def decode(images: torch.Tensor, patch: int = 4) -> torch.Tensor:
    """Invert the pixel map: uint8 (N, C, H, W) -> real patches (N, num_patches, d), row-major grid."""
    n, c, h, w = images.shape
    x = (images.double() - PIXEL_CENTER) / (PIXEL_GAIN * math.sqrt(c * patch * patch))
    x = x.reshape(n, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(n, (h // patch) * (w // patch), c * patch * patch)


def _encode(patches: torch.Tensor, channels: int, grid: int, patch: int) -> torch.Tensor:
    n, _, d = patches.shape
    x = patches.reshape(n, grid, grid, channels, patch, patch).permute(0, 3, 1, 4, 2, 5)
    x = x.reshape(n, channels, grid * patch, grid * patch)
    return (PIXEL_CENTER + PIXEL_GAIN * math.sqrt(d) * x).round().clamp(0, 255).to(torch.uint8)


def check_options(split: str, n_transfer: int, image_size: int, patch: int, num_classes: int, views: int,
                  channels: int, single_view_fraction: float) -> None:
    """One line for a generator option out of range, before anything is drawn."""
    choose("split", split, ("train", "val", "test", "transfer"))
    if split == "transfer" and n_transfer < 1:
        raise BenchError("multiview: no transfer split (n_transfer is 0)")
    if patch < 1 or image_size % patch:
        raise BenchError(f"multiview: image_size {image_size} is not a multiple of patch {patch}")
    if num_classes < 2 or views < 1 or channels < 1:
        raise BenchError(f"multiview: need num_classes >= 2, views >= 1, channels >= 1; got "
                         f"{num_classes}, {views}, {channels}")
    if not 0.0 <= single_view_fraction <= 1.0:
        raise BenchError(f"multiview: single_view_fraction {single_view_fraction} is not in [0, 1]")
    n_patches = (image_size // patch) ** 2
    if n_patches < views:
        raise BenchError(f"multiview: {n_patches} patches cannot show {views} views; "
                         f"raise image_size or lower patch")


def load(root: Path | None, split: str, seed: int = 0, num_classes: int = 10, views: int = 2,
         image_size: int = 16, patch: int = 4, channels: int = 3, n_train: int = 2000,
         n_val: int = 1000, n_test: int = 1000, n_transfer: int = 0, single_view_fraction: float = 0.2, noise: float = 0.1,
         feature_noise: float = 0.1) -> ImageSet:
    """Generate one split; `root` is ignored.

    `noise` is the expected norm of each patch's Gaussian noise (per-coordinate std
    noise/sqrt(d)); `feature_noise` is the largest weight of another class's feature in a patch
    (own features have weights in [0.5, 1]).
    """
    check_options(split, n_transfer, image_size, patch, num_classes, views, channels, single_view_fraction)
    d, grid = channels * patch * patch, image_size // patch
    n_patches = grid * grid
    features = class_features(seed, num_classes, views, d).reshape(num_classes * views, d)
    n = {"train": n_train, "val": n_val, "test": n_test, "transfer": n_transfer}[split]
    gen = _generator(seed, split)

    # Balanced classes in random order; an exact share of single-view samples.
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]
    single = torch.zeros(n, dtype=torch.bool)
    single[torch.randperm(n, generator=gen)[:round(single_view_fraction * n)]] = True
    shown_view = torch.randint(views, (n,), generator=gen)

    # Each view gets its own disjoint set of `per_view` patches (a random permutation's slices),
    # covering about half the grid between them; the rest is background noise.
    per_view = max(1, n_patches // (2 * views))
    order = torch.rand(n, n_patches, generator=gen).argsort(dim=1)[:, :views * per_view]
    where = order.reshape(n, views, per_view)
    weight = 0.5 + 0.5 * torch.rand(n, views, per_view, generator=gen, dtype=torch.float64)
    view = torch.arange(views)[None, :, None]
    shown = ~single[:, None, None] | (view == shown_view[:, None, None])
    weight = weight * shown  # single-view samples: all other views of their class are absent

    coef = torch.zeros(n, n_patches, num_classes * views, dtype=torch.float64)
    rows = torch.arange(n)[:, None, None].expand_as(where)
    coef.index_put_((rows, where, (labels[:, None, None] * views + view).expand_as(where)), weight)

    # Feature noise: a few random patches get a small multiple of another class's feature.
    n_noisy = max(1, n_patches // 8)
    noisy_at = torch.randint(n_patches, (n, n_noisy), generator=gen)
    other = (labels[:, None] + torch.randint(1, num_classes, (n, n_noisy), generator=gen)) % num_classes
    other_feature = other * views + torch.randint(views, (n, n_noisy), generator=gen)
    noise_weight = feature_noise * torch.rand(n, n_noisy, generator=gen, dtype=torch.float64)
    coef.index_put_((torch.arange(n)[:, None].expand_as(noisy_at), noisy_at, other_feature),
                    noise_weight, accumulate=True)

    patches = coef @ features
    patches += noise / math.sqrt(d) * torch.randn(n, n_patches, d, generator=gen, dtype=torch.float64)
    return ImageSet("multiview", split, _encode(patches, channels, grid, patch), labels,
                    [str(c) for c in range(num_classes)], extras={"single_view": single})
