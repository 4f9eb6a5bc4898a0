import pytest
import torch

from bench.data import load_dataset
from bench.data import ImageSet
from bench.data.memory import AUGMENTATIONS, DeviceLoader, channel_stats, epoch_generator, random_crop, random_flip
from bench.errors import BenchError


def test_digits_split_is_fixed_stratified_and_disjoint():
    train, val, test = (load_dataset("digits", split=s) for s in ("train", "val", "test"))
    assert len(train) + len(val) + len(test) == 1797 and len(test) == 450 and len(val) == 269
    assert train.images.shape[1:] == (1, 16, 16) and train.images.dtype == torch.uint8
    share = test.labels.bincount(minlength=10).float() / (train.labels.bincount(minlength=10).float()
                                                           + val.labels.bincount(minlength=10).float())
    assert torch.allclose(share, torch.full((10,), 1 / 3), atol=0.03)  # 25 % / 75 % in every class
    flat = lambda s: {bytes(x.flatten().numpy()) for x in s.images}
    for a, b in ((train, test), (train, val), (val, test)):
        assert len(flat(a) & flat(b)) < 5  # a handful of digits are pixel-identical twins
    again = load_dataset("digits", split="test")
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)


def test_digits_sizes_and_channels():
    d = load_dataset("digits", split="test", image_size=32, channels=3)
    assert d.images.shape[1:] == (3, 32, 32) and torch.equal(d.images[:, 0], d.images[:, 2])
    with pytest.raises(BenchError, match="channels"):
        load_dataset("digits", split="test", channels=2)


def test_unknown_dataset_and_split_are_refused():
    with pytest.raises(BenchError, match="unknown dataset 'mnist'; valid: cifar10, cifar100, digits"):
        load_dataset("mnist")
    with pytest.raises(BenchError, match="unknown split 'dev'; valid: test, train, transfer, val"):
        load_dataset("digits", split="dev")
    with pytest.raises(BenchError, match="needs a data root"):
        load_dataset("cifar10")


def test_random_crop_cuts_the_window_at_its_offsets():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.uint8).view(2, 1, 4, 4)
    out = random_crop(x, 2, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    dy, dx = torch.randint(0, 5, (2,), generator=g), torch.randint(0, 5, (2,), generator=g)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        assert torch.equal(out[i], padded[i, :, dy[i]:dy[i] + 4, dx[i]:dx[i] + 4])


def test_random_flip_flips_about_half():
    x = torch.rand(1000, 1, 2, 3)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = (out == x.flip(3)).flatten(1).all(1)
    assert ((out == x).flatten(1).all(1) | flipped).all() and 400 < flipped.sum() < 600


def make_loader(train, **kw):
    d = load_dataset("digits", split="test")
    mean, std = channel_stats(d.images)
    return DeviceLoader(d, batch_size=64, train=train, mean=mean, std=std, channels=3, **kw), d


def test_eval_loader_yields_every_image_in_order_normalised():
    loader, d = make_loader(False)
    xs, ys, idx, views = zip(*loader)
    x, y = torch.cat(xs), torch.cat(ys)
    assert len(loader) == 8 and x.shape == (450, 3, 16, 16) and torch.equal(y, d.labels)
    assert torch.equal(torch.cat(idx), torch.arange(450))
    assert torch.equal(torch.cat(views), torch.zeros(450, dtype=torch.int64))  # not augmented: the identity
    assert abs(x.mean().item()) < 0.1 and abs(x.std().item() - 1) < 0.1


def test_train_order_is_a_function_of_seed_and_epoch():
    a, _ = make_loader(True, seed=0, augment="translate2")
    b, _ = make_loader(True, seed=0, augment="translate2")
    c, _ = make_loader(True, seed=1, augment="translate2")
    first = lambda ld, e: (ld.set_epoch(e), next(iter(ld)))[1]
    assert torch.equal(first(a, 3)[0], first(b, 3)[0])
    assert not torch.equal(first(a, 3)[0], first(a, 4)[0])
    assert not torch.equal(first(a, 0)[1], first(c, 0)[1])
    assert len(a) == 450 // 64  # the ragged last training batch is dropped
    _, d = make_loader(False)
    for _, y, i, _ in a:  # shuffled, but each sample index still names the image's row
        assert torch.equal(d.labels[i], y)


def _colour_set(n: int = 150, size: int = 6) -> ImageSet:
    """Images whose pixels are all distinct, so that distinct views are distinct images."""
    images = torch.randperm(256, generator=torch.Generator().manual_seed(0))[:3 * size * size]
    images = (images.view(1, 3, size, size) + torch.arange(n).view(n, 1, 1, 1)).remainder(256).to(torch.uint8)
    return ImageSet("c", "train", images, torch.arange(n) % 10, [str(k) for k in range(10)])


@pytest.mark.parametrize("augment", ["none", "translate2", "crop4_flip"])
def test_augmented_batches_are_the_crop_then_flip_draws_and_their_views_remake_them(augment):
    data = _colour_set()
    kw = dict(batch_size=32, train=True, seed=5, mean=[0.5] * 3, std=[0.25] * 3, augment=augment)
    loader = DeviceLoader(data, **kw)
    loader.set_epoch(3)
    # What the loader did before view ids existed: the order, then per batch crop and flip draws.
    gen = epoch_generator(5, 3)
    order = torch.randperm(len(data), generator=gen)
    pad, flip = {"none": (0, False), "translate2": (2, False), "crop4_flip": (4, True)}[augment]
    draws = list(loader.draws())
    assert len(draws) == len(loader) == len(data) // 32
    for b, ((x, y, i, v), (di, dv)) in enumerate(zip(loader, draws)):
        rows = order[b * 32:(b + 1) * 32]
        want = data.images[rows].float()
        if pad:
            want = random_crop(want, pad, gen)
        if flip:
            want = random_flip(want, gen)
        assert torch.equal(x, (want - 127.5) / 63.75) and torch.equal(i, rows) and torch.equal(y, data.labels[rows])
        assert torch.equal(di, i) and torch.equal(dv, v)  # draws() gives the views without the images
        assert torch.equal(loader.view_images(i, v), x)  # a view id remakes its image exactly
        assert v.min() >= 0 and v.max() < loader.n_views


@pytest.mark.parametrize("augment, n", [("none", 1), ("translate2", 25), ("crop4_flip", 162)])
def test_views_are_distinct_transforms_and_view_zero_is_the_identity(augment, n):
    aug = AUGMENTATIONS[augment]
    assert aug.n_views == n
    x = _colour_set(1).images.float()
    made = aug.apply(x.expand(n, -1, -1, -1), torch.arange(n))
    assert torch.equal(made[0], x[0])
    assert len({bytes(m.numpy()) for m in made.to(torch.uint8)}) == n


def test_view_images_refuses_samples_and_views_it_does_not_hold():
    data = _colour_set()
    loader = DeviceLoader(data, batch_size=32, train=True, mean=[0.5] * 3, std=[0.25] * 3, augment="translate2")
    with pytest.raises(BenchError, match="not one of this loader's samples"):
        loader.view_images(torch.tensor([len(data)]), torch.tensor([0]))
    with pytest.raises(BenchError, match=r"view ids must be in \[0, 25\)"):
        loader.view_images(torch.tensor([0]), torch.tensor([-1]))
