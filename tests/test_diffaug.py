"""data.diffaug (DiffAugment, Zhao et al. 2020): gradients, identity, the ranges of each transform, seeding."""
import pytest
import torch

import data
from data import DataError, diffaug


def batch(n=8, size=16, dtype=torch.float32, seed=0):
    """Images in [-0.9, 0.9] with no zeros, so zeros in the output can only come from padding or cutout."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g, dtype=dtype) * 0.8 + 0.1
    return x * torch.where(torch.rand(n, 3, size, size, generator=g) < 0.5, -1, 1).to(dtype)


def seeded(fn, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn()


def test_gradients_flow_and_match_finite_differences():
    x = batch(2, 8, torch.float64).requires_grad_(True)
    for p in (1.0, 0.5):  # fixed randomness: each call draws the same parameters
        assert torch.autograd.gradcheck(lambda t: seeded(lambda: diffaug(t, p=p)), (x,))
    y = batch(4, 16).requires_grad_(True)
    (seeded(lambda: diffaug(y)) ** 2).sum().backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


def test_identity_at_p_zero_and_for_no_policy():
    x = batch()
    for kwargs in ({"p": 0.0}, {"policy": "none"}, {"policy": ""}, {"policy": " none "}):
        assert torch.equal(diffaug(x, **kwargs), x)
    state = torch.get_rng_state()
    diffaug(x, p=0)
    assert torch.equal(torch.get_rng_state(), state)  # and p=0 draws nothing


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_and_device_are_kept(dtype):
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        x = batch(5, 32, dtype).to(device)
        for p in (1.0, 0.3):
            y = diffaug(x, p=p)
            assert (y.shape, y.dtype, y.device) == (x.shape, x.dtype, x.device)


def test_each_transform_changes_the_images_within_its_range():
    x = batch(64, 16)
    brightness, saturation, contrast = data.DIFFAUG["color"]
    shift = seeded(lambda: brightness(x)) - x  # one offset per image, in [-0.5, 0.5)
    per_image = shift.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image), atol=1e-6)
    assert per_image.abs().max() <= 0.5 and per_image.std() > 0.2
    for fn, low, high, mean_dims in ((saturation, 0, 2, (1,)), (contrast, 0.5, 1.5, (1, 2, 3))):
        m, y = x.mean(mean_dims, keepdim=True), seeded(lambda: fn(x))
        f = ((y - m) * (x - m)).sum((1, 2, 3)) / ((x - m) ** 2).sum((1, 2, 3))  # least squares, per image
        assert torch.allclose(y, (x - m) * f.view(-1, 1, 1, 1) + m, atol=1e-5)  # one factor per image
        assert f.min() >= low and f.max() <= high and f.max() - f.min() > (high - low) / 2

    moved = seeded(lambda: data.DIFFAUG["translation"][0](x))
    shifts = set()
    for a, b in zip(x, moved):  # every image is its input shifted by at most 16 / 8 = 2 px, zeros shifted in
        padded = torch.nn.functional.pad(a, (2, 2, 2, 2))
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if torch.equal(padded[:, 2 + dy:18 + dy, 2 + dx:18 + dx], b)]
        assert len(found) == 1
        shifts.add(found[0])
    assert len(shifts) > 10

    cut = seeded(lambda: data.DIFFAUG["cutout"][0](x))
    zero = cut == 0
    assert torch.equal(cut[~zero], x[~zero]) and (zero.all(1) == zero.any(1)).all()  # all channels, nothing else
    rows, cols = zero[:, 0].any(2).sum(1), zero[:, 0].any(1).sum(1)
    assert torch.equal(zero[:, 0].flatten(1).sum(1), rows * cols)  # a rectangle ...
    assert rows.max() == cols.max() == 8 and rows.min() >= 4 and cols.min() >= 4  # half the side, maybe clipped


def test_translation_and_cutout_keep_the_values_or_zero():
    x = batch(16, 32)
    y = diffaug(x, "translation,cutout")
    assert not torch.equal(x, y)
    assert torch.isin(y, torch.cat([x.flatten(), torch.zeros(1)])).all()


def test_probability_applies_each_transform_to_about_p_of_the_samples():
    x = batch(400, 8)
    cut = seeded(lambda: diffaug(x, "cutout", p=0.25))
    changed = (cut != x).flatten(1).any(1).float().mean()
    assert 0.15 < changed < 0.35
    assert (cut == x).flatten(1).all(1).any()


def test_seeded_runs_repeat_and_resume_with_the_rng_state():
    x = batch()
    assert torch.equal(seeded(lambda: diffaug(x, p=0.7)), seeded(lambda: diffaug(x, p=0.7)))
    assert not torch.equal(seeded(lambda: diffaug(x), 0), seeded(lambda: diffaug(x), 1))
    torch.manual_seed(3)
    diffaug(x)
    state = torch.get_rng_state()
    want = diffaug(x)
    torch.set_rng_state(state)
    assert torch.equal(diffaug(x), want)


def test_a_bad_policy_or_probability_is_one_data_error():
    with pytest.raises(DataError, match=r"^unknown DiffAugment policy 'zoom' in 'color,zoom': use a comma-separated "
                                        r"list of color, translation, cutout, or none$"):
        diffaug(batch(), "color,zoom")
    for p in (-0.1, 1.5):
        with pytest.raises(DataError, match="between 0 and 1"):
            diffaug(batch(), p=p)
    data.diffaug_policy.cache_clear()
    for _ in range(3):
        diffaug(batch(), "color, cutout")
    assert data.diffaug_policy.cache_info().misses == 1  # parsed once
    assert len(data.diffaug_policy("color, cutout")) == 4
