"""The Loader: pure function of (seed, epoch, batch), resumable, shardable, and augmenting exactly
like torchvision's RandomCrop(padding=4) + RandomHorizontalFlip + Normalize applied per image; the
per-pixel mean of He et al. 2015 §4.2 against numpy and torchvision on the mean-subtracted image."""

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from reslab.data import (
    ImageData,
    Loader,
    crop_flip,
    epoch_plan,
    mean_image,
    subtract_mean_image,
)

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def toy(n=50, c=3, h=8, w=6, seed=0) -> ImageData:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)
    return ImageData(images, torch.arange(n) % 7, tuple("abcdefg"), MEAN[:c], STD[:c], "toy")


def batches(loader, epoch, start=0):
    return [(x.clone(), y.clone()) for x, y in loader.epoch(epoch, start)]


def same(a, b):
    return len(a) == len(b) and all(
        torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b, strict=True)
    )


def reference(data, plan, positions, pad=4, mean=MEAN, std=STD):
    """torchvision, image by image: pad, crop at the plan's offsets, flip, to float, normalise."""
    out = []
    for p in positions:
        img = data.images[plan.order[p]]
        h, w = img.shape[1:]
        img = TF.crop(TF.pad(img, [pad]), int(plan.dy[p]), int(plan.dx[p]), h, w)
        if plan.flip[p]:
            img = TF.horizontal_flip(img)
        out.append(TF.normalize(TF.to_dtype(img, torch.float32, scale=True), list(mean), list(std)))
    return torch.stack(out)


def test_augmentation_matches_torchvision_per_image():
    data = toy(n=40)
    loader = Loader(data, 16, train=True, augment=True, seed=5)
    plan = loader.plan(2)
    for b, (x, y) in enumerate(loader.epoch(2)):
        pos = range(16 * b, 16 * b + 16)
        torch.testing.assert_close(x, reference(data, plan, pos), rtol=0, atol=2e-6)
        assert torch.equal(y, data.labels[plan.order[16 * b : 16 * b + 16]])
    assert plan.flip.any() and not plan.flip.all() and set(plan.dy.tolist()) <= set(range(9))


def test_crop_flip_offsets_cover_the_padded_image():
    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.uint8).view(2, 1, 3, 3) + 1
    out = crop_flip(
        x, torch.tensor([0, 2]), torch.tensor([0, 1]), torch.tensor([False, True]), pad=1
    )
    assert out[0, 0].tolist() == [[0, 0, 0], [0, 1, 2], [0, 4, 5]]  # top-left: the zero border
    # image 1 = [[10,11,12],[13,14,15],[16,17,18]], padded, crop at row 2 col 1, then mirrored
    assert out[1, 0].tolist() == [[15, 14, 13], [18, 17, 16], [0, 0, 0]]


def test_no_augment_is_plain_normalisation_in_order():
    data = toy(n=23)
    loader = Loader(data, 10, train=False, augment=False)
    assert len(loader) == 3 and not loader.drop_last
    xs, ys = zip(*loader.epoch(0), strict=True)
    want = TF.normalize(data.images.float() / 255, list(MEAN), list(STD))
    torch.testing.assert_close(torch.cat(xs), want, rtol=0, atol=2e-6)
    assert torch.equal(torch.cat(ys), data.labels) and [len(y) for y in ys] == [10, 10, 3]


def test_pure_function_of_seed_epoch_batch():
    data = toy()
    a = Loader(data, 8, train=True, augment=True, seed=1)
    b = Loader(data, 8, train=True, augment=True, seed=1)
    assert same(batches(a, 3), batches(b, 3))
    list(a.epoch(0))  # consuming other epochs changes nothing: no hidden state
    assert same(batches(a, 3), batches(b, 3))
    assert not same(batches(a, 3), batches(a, 4))
    assert not same(batches(a, 3), batches(Loader(data, 8, train=True, augment=True, seed=2), 3))


def test_train_epoch_is_a_permutation_and_drop_last():
    data = toy(n=50)
    loader = Loader(data, 8, train=True, augment=False)
    assert loader.drop_last and len(loader) == 6
    plan = loader.plan(0)
    assert sorted(plan.order.tolist()) == list(range(50)) and plan.order.tolist() != list(range(50))
    ys = torch.cat([y for _, y in loader.epoch(0)])
    assert torch.equal(ys, data.labels[plan.order[:48]])
    assert len(Loader(data, 8, train=True, augment=False, drop_last=False)) == 7


@pytest.mark.parametrize("start", [0, 1, 4, 6])
def test_resume_equals_tail(start):
    loader = Loader(toy(), 8, train=True, augment=True, seed=9)
    assert same(batches(loader, 2, start), batches(loader, 2)[start:])


@pytest.mark.parametrize("world_size", [2, 4])
@pytest.mark.parametrize("train", [True, False])
def test_ranks_together_equal_one_rank(world_size, train):
    data = toy(n=50)
    kw = dict(train=train, augment=train, seed=3, drop_last=False, channels_last=True)
    one = batches(Loader(data, 8, **kw), 1)
    ranks = [
        batches(Loader(data, 8, rank=r, world_size=world_size, **kw), 1) for r in range(world_size)
    ]
    assert all(len(r) == len(one) == 7 for r in ranks)
    for b, (x, y) in enumerate(one):
        assert torch.equal(torch.cat([r[b][0] for r in ranks]), x)
        assert torch.equal(torch.cat([r[b][1] for r in ranks]), y)
    assert [len(r[0][1]) for r in ranks] == [8 // world_size] * world_size
    assert sum(len(r[-1][1]) for r in ranks) == 2  # last global batch: 50 = 6 * 8 + 2


def test_channels_last_same_values():
    data = toy()
    a = batches(Loader(data, 8, train=True, augment=True), 0)
    b = batches(Loader(data, 8, train=True, augment=True, channels_last=True), 0)
    assert all(x.is_contiguous(memory_format=torch.channels_last) for x, _ in b)
    assert same(a, b)


def test_mean_std_override_and_single_channel():
    data = toy(c=1)
    x, _ = next(Loader(data, 4, train=False, augment=False, mean=(0.0,), std=(1.0,)).epoch(0))
    torch.testing.assert_close(x, data.images[:4].float() / 255, rtol=0, atol=1e-6)
    assert x.dtype == torch.float32 and x.shape == (4, 1, 8, 6)


def test_plan_distribution():
    plan = epoch_plan(0, 0, 20000, shuffle=True, pad=4, flip=True)
    counts = torch.bincount(plan.dx, minlength=9).float() / 20000
    assert ((counts - 1 / 9).abs() < 0.015).all() and abs(plan.flip.float().mean() - 0.5) < 0.015
    assert not epoch_plan(0, 0, 100, shuffle=True, pad=4, flip=False).flip.any()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(batch_size=10, world_size=4), "divisible by world_size"),
        (dict(batch_size=8, rank=2, world_size=2), "0 <= rank < world_size"),
        (dict(batch_size=0), "batch_size >= 1"),
        (dict(batch_size=8, mean=(0.5,)), "mean/std need 3 values"),
        (dict(batch_size=8, seed=-1), "seed and pad must be >= 0"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Loader(toy(), train=True, augment=True, **kwargs)


def test_bad_start():
    loader = Loader(toy(), 8, train=True, augment=False)
    with pytest.raises(ValueError, match=r"start must be in \[0, 6\]"):
        next(loader.epoch(0, start=7))


# He et al. 2015, §4.2: "The network inputs are 32x32 images, with the per-pixel mean subtracted."


def _numpy_mean_image(data: ImageData):
    """The independent computation: numpy float64 over the uint8 images, pixel by pixel."""
    return torch.from_numpy(data.images.numpy().astype(np.float64).mean(axis=0) / 255.0)


def test_mean_image_is_the_pixelwise_mean_of_the_training_images():
    data = toy(n=23, h=5, w=4)
    want = _numpy_mean_image(data)
    for chunk in (1, 5, 1024):  # summed in chunks: the same mean however they fall
        got = mean_image(data, chunk=chunk)
        assert got.dtype == torch.float32 and got.shape == (3, 5, 4)
        torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-7)
    # a hand-sized case: two 1x1x2 images [[0, 255]] and [[51, 0]] -> [[25.5, 127.5]] / 255
    images = torch.tensor([[[[0, 255]]], [[[51, 0]]]], dtype=torch.uint8)  # (2, 1, 1, 2)
    two = ImageData(images, torch.zeros(2, dtype=torch.long), ("a",), (0.5,), (0.2,), "two")
    assert mean_image(two).flatten().tolist() == pytest.approx([0.1, 0.5], abs=1e-8)


def test_subtract_mean_image_shifts_every_split_by_the_training_mean_and_divides_by_nothing():
    train, test = toy(n=30, seed=1), toy(n=9, seed=2)
    new_train, new_test, none = subtract_mean_image(train, test, None)
    assert none is None and new_train.std == new_test.std == (1.0, 1.0, 1.0)
    assert new_test.mean is new_train.mean  # the test split is shifted by the TRAINING mean
    want = _numpy_mean_image(train)
    for data in (new_train, new_test):
        x = torch.cat([x for x, _ in Loader(data, 4, train=False, augment=False).epoch(0)])
        expected = data.images.numpy().astype(np.float64) / 255.0 - want.numpy()
        torch.testing.assert_close(x.double(), torch.from_numpy(expected), rtol=0, atol=1e-6)
    assert torch.equal(new_train.images, train.images)  # the uint8 images are untouched


def test_mean_image_augmentation_subtracts_then_pads_with_the_mean():
    """torchvision per image on the mean-subtracted float image: zero padding is the mean pixel."""
    (data,) = subtract_mean_image(toy(n=20))
    mean = _numpy_mean_image(data).float()
    loader = Loader(data, 10, train=True, augment=True, seed=4)
    plan = loader.plan(1)
    for b, (x, _) in enumerate(loader.epoch(1)):
        want = []
        for p in range(10 * b, 10 * b + 10):
            img = TF.pad(data.images[plan.order[p]].float() / 255 - mean, [4], fill=0.0)
            img = TF.crop(img, int(plan.dy[p]), int(plan.dx[p]), 8, 6)
            want.append(TF.horizontal_flip(img) if plan.flip[p] else img)
        torch.testing.assert_close(x, torch.stack(want), rtol=0, atol=2e-6)
    assert (plan.dy != 4).any()  # some crops reach into the padding


def test_bad_mean_image_shape_is_one_line():
    data = toy(h=8, w=6)
    with pytest.raises(ValueError, match=r"mean image must be \(C, H, W\) = \(3, 8, 6\)") as err:
        Loader(data, 4, train=False, augment=False, mean=torch.zeros(3, 6, 8))
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"mean image must be \(C, H, W\) = \(3, 8, 6\)"):
        ImageData(data.images, data.labels, data.classes, torch.zeros(3, 4, 4), STD, "x")
