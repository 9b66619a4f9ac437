"""Batched Cutout / AutoAugment(CIFAR10) / RandAugment / SimCLR views against torchvision's per-image ops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import AutoAugmentPolicy, InterpolationMode
from torchvision.transforms.v2 import functional as TF

from lt_bench.data import policies as P
from lt_bench.data.augment import random_crop, random_hflip

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True)
def _seeded_torch():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


def make_images(batch: int = 8, size: int = 32, seed: int = 0) -> torch.Tensor:
    """uint8 ``[B, 3, size, size]``: random images plus a constant one and a low-contrast one."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g)
    images[0] = 77
    images[1] = torch.randint(100, 120, (3, size, size), dtype=torch.uint8, generator=g)
    return images


def torchvision_op(image: torch.Tensor, op: str, magnitude: float, fill=None) -> torch.Tensor:
    """torchvision's own AutoAugment op dispatch on one image (``[C, H, W]``)."""
    aa = T.AutoAugment(AutoAugmentPolicy.CIFAR10, fill=fill)
    return aa._apply_image_or_video_transform(
        image, op, magnitude, interpolation=InterpolationMode.NEAREST, fill=aa._fill
    )


def per_image(images: torch.Tensor, fn) -> torch.Tensor:
    return torch.stack([fn(i, image) for i, image in enumerate(images)])


def assert_close_levels(ours: torch.Tensor, ref: torch.Tensor, levels: int = 1, exact_fraction: float = 0.99):
    diff = (ours.int() - ref.int()).abs()
    assert diff.max() <= levels, f"max difference {diff.max()} levels"
    assert (diff == 0).float().mean() >= exact_fraction


# --- tables --------------------------------------------------------------------------------------


def test_policy_and_magnitude_tables_are_torchvision_s() -> None:
    aa = T.AutoAugment(AutoAugmentPolicy.CIFAR10)
    assert [tuple(s) for s in aa._policies] == list(P.CIFAR10_POLICY)
    for cls, bins in ((T.AutoAugment, 10), (T.RandAugment, 31)):
        for op, (fn, signed) in cls._AUGMENTATION_SPACE.items():
            ref, ours = fn(bins, 24, 40), P.magnitudes(op, bins, 24, 40)
            assert (ref is None) == (ours is None) and (signed == (op in P._SIGNED))
            if ref is not None:
                assert torch.equal(ref, ours), op
    assert tuple(T.RandAugment._AUGMENTATION_SPACE) == P.RANDAUGMENT_OPS


# --- each op, batched, equals torchvision's per image ------------------------------------------------


def all_actions() -> list[P.Action]:
    aa, _, _, _ = P.autoaugment_cifar10_tables(32, 32)
    ra, _ = P.randaugment_table(10, 31, 32, 32)
    return list(dict.fromkeys(aa + ra + [("Invert", 0.0)]))


@pytest.mark.parametrize("fill", [None, 128, (10, 200, 30)])
def test_every_action_equals_torchvision_per_image(fill) -> None:
    images = make_images()
    for action in all_actions():
        if fill is not None and action[0] not in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"):
            continue
        ours = P.apply_actions(images, torch.zeros(len(images), dtype=torch.long), [action], fill)
        ref = per_image(images, lambda _, im, a=action: torchvision_op(im, *a, fill=fill))
        assert torch.equal(ours, ref), action


@pytest.mark.parametrize("fill", [None, 128, (10, 200, 30)])
def test_graph_safe_ops_equal_torchvision_per_image(fill) -> None:
    """The GPU path's ops (index-map gathers, own sharpness / autocontrast) are torchvision's, exactly."""
    images = make_images(16)
    for action in all_actions():
        ours = P.graph_safe_op(images, *action, fill)
        ref = per_image(images, lambda _, im, a=action: torchvision_op(im, *a, fill=fill))
        assert torch.equal(ours, ref), action


def test_graph_safe_application_equals_the_subset_application() -> None:
    images = make_images(64)
    table = all_actions()
    action = torch.randint(0, len(table), (64,))
    assert torch.equal(
        P.apply_all_actions(images, action, table, 128), P.apply_actions(images, action, table, 128)
    )


def test_mixed_actions_go_to_the_right_samples() -> None:
    images = make_images(64)
    table = all_actions()
    action = torch.randint(0, len(table), (64,))
    ours = P.apply_actions(images, action, table)
    ref = per_image(images, lambda i, im: torchvision_op(im, *table[action[i]]))
    assert torch.equal(ours, ref)


POLICIES = {  # name: (draw the actions as the policy does, apply the policy)
    "autoaugment": (lambda device: P.sample_autoaugment_cifar10(64, 32, 32, device), P.autoaugment_cifar10),
    "randaugment": (
        lambda device: P.sample_randaugment(64, 2, 10, 31, 32, 32, device),
        lambda images: P.randaugment(images, num_ops=2, magnitude=10),
    ),
}


@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("device", DEVICES)
def test_policy_end_to_end_equals_torchvision_given_the_draws(policy: str, device: str) -> None:
    sample, transform = POLICIES[policy]
    images = make_images(64).permute(0, 2, 3, 1).contiguous().to(device)
    with torch.random.fork_rng(devices=[0] if device == "cuda" else []):
        table, _, actions = sample(device)  # the GPU path draws there, the CPU path on the CPU
    out = transform(images)  # same draws
    assert out.shape == images.shape and out.dtype == torch.uint8 and out.device == images.device

    def chain(i: int, image: torch.Tensor) -> torch.Tensor:
        for slot in range(2):
            image = torchvision_op(image, *table[actions[slot, i]])
        return image

    ref = per_image(images.permute(0, 3, 1, 2).cpu(), chain)
    assert torch.equal(out.cpu(), ref.permute(0, 2, 3, 1))


# --- selection distributions -------------------------------------------------------------------------


def assert_frequency(hits: torch.Tensor, n: int, p: float, sigmas: float = 5.0) -> None:
    se = math.sqrt(max(p * (1 - p), 1e-12) / n)
    freq = float(hits) / n
    assert abs(freq - p) <= sigmas * se + 1e-12, (freq, p)


def test_autoaugment_selection_matches_the_policy_probabilities() -> None:
    n = 200_000
    table, sub, actions = P.sample_autoaugment_cifar10(n, 32, 32)
    ops = np.array([op for op, _ in table])
    mags = np.array([m for _, m in table])
    counts = torch.bincount(sub, minlength=25)
    for k, sub_policy in enumerate(P.CIFAR10_POLICY):
        assert_frequency(counts[k], n, 1 / 25)
        mine = sub == k
        for slot, (op, prob, bin_) in enumerate(sub_policy):
            chosen = actions[slot][mine].numpy()
            applied = ops[chosen] != "Identity"
            assert_frequency(applied.sum(), int(mine.sum()), prob)
            assert set(ops[chosen][applied]) <= {op}
            table_mags = P.magnitudes(op, 10, 32, 32)
            expected = 0.0 if table_mags is None or bin_ is None else float(table_mags[bin_])
            assert set(np.abs(mags[chosen][applied])) <= {abs(expected)}
            if op in P._SIGNED and applied.sum() and expected:
                assert_frequency((mags[chosen][applied] < 0).sum(), int(applied.sum()), 0.5)


def test_randaugment_selection_is_uniform_with_random_signs() -> None:
    n = 100_000
    table, op, actions = P.sample_randaugment(n, 2, 10, 31, 32, 32)
    names = np.array([name for name, _ in table])
    mags = np.array([m for _, m in table])
    for slot in range(2):
        counts = torch.bincount(op[slot], minlength=14)
        for k, name in enumerate(P.RANDAUGMENT_OPS):
            assert_frequency(counts[k], n, 1 / 14)
            chosen = actions[slot][op[slot] == k].numpy()
            assert set(names[chosen]) == {name}
            if name in P._SIGNED:
                assert_frequency((mags[chosen] < 0).sum(), len(chosen), 0.5)
            else:
                assert (mags[chosen] >= 0).all()


# --- Cutout --------------------------------------------------------------------------------------------


def cut_probability(n: int, size: int) -> np.ndarray:
    """P(pixel row r is inside the hole's rows) with the centre uniform over ``n`` rows."""
    half = size // 2
    centres = np.arange(n)[:, None]
    rows = np.arange(n)[None, :]
    return ((rows >= centres - half) & (rows < centres + half)).mean(0)


@pytest.mark.parametrize("size", [16, 7])
def test_cutout_holes_are_clipped_squares_with_uniform_centres(size: int) -> None:
    n, h, w = 20_000, 32, 24
    images = torch.full((n, h, w, 2), 255, dtype=torch.uint8)
    out = P.cutout(images, size)
    assert out.shape == images.shape and out.dtype == torch.uint8
    hole = out[..., 0] == 0
    assert torch.equal(hole, out[..., 1] == 0)
    rows, cols = hole.any(2), hole.any(1)
    # a hole is the product of a row interval and a column interval, of side <= 2 * (size // 2)
    assert torch.equal(hole, rows[:, :, None] & cols[:, None, :])
    for mask in (rows, cols):
        idx = torch.arange(mask.shape[1])
        first = torch.where(mask, idx, 10**6).amin(1)
        last = torch.where(mask, idx, -1).amax(1)
        assert torch.equal(mask.sum(1), last - first + 1)  # contiguous
        assert mask.sum(1).max() == 2 * (size // 2)
    # each pixel is cut with the exact probability of a uniform centre
    expected = np.outer(cut_probability(h, size), cut_probability(w, size))
    freq = hole.float().mean(0).numpy()
    se = np.sqrt(expected * (1 - expected) / n)
    assert np.all(np.abs(freq - expected) <= 5 * se + 1e-9)
    assert abs(hole.sum((1, 2)).float().mean().item() - expected.sum()) < 0.02 * expected.sum()


def test_cutout_fill_and_device() -> None:
    images = torch.full((4, 8, 8, 3), 9, dtype=torch.uint8)
    out = P.cutout(images, 4, fill=(1, 2, 3))
    hole = out[..., 0] != 9
    assert hole.sum((1, 2)).min() > 0
    assert torch.equal(out[hole], torch.tensor([1, 2, 3], dtype=torch.uint8).expand(int(hole.sum()), 3))
    for device in DEVICES:
        assert P.cutout(images.to(device), 4).device.type == device


# --- SimCLR views ------------------------------------------------------------------------------------


def test_random_resized_crop_params_match_torchvision_distribution() -> None:
    n, h, w = 20_000, 32, 40
    ours = P.random_resized_crop_params(n, h, w, (0.2, 1.0)).float()
    top, left, bh, bw = ours.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + bh <= h).all() and (left + bw <= w).all()
    ref = torch.tensor(
        [T.RandomResizedCrop.get_params(torch.empty(3, h, w), [0.2, 1.0], [3 / 4, 4 / 3]) for _ in range(n)]
    ).float()
    for k in range(4):  # equal means and spreads within a few standard errors of the difference
        se = math.sqrt((ours[:, k].var() + ref[:, k].var()) / n)
        assert abs(ours[:, k].mean() - ref[:, k].mean()) < 5 * se, k
        assert abs(ours[:, k].std() / ref[:, k].std() - 1) < 0.05, k
    area = bh * bw / (h * w)
    assert abs((area.mean() - (ref[:, 2] * ref[:, 3] / (h * w)).mean()).item()) < 0.01


def test_random_resized_crop_fallback_is_torchvision_s() -> None:
    # nothing can fit: the fallback is the centred whole image clamped to the ratio range
    for h, w in ((32, 32), (20, 60), (60, 20)):
        ours = P.random_resized_crop_params(5, h, w, (3.0, 4.0))
        ref = T.RandomResizedCrop.get_params(torch.empty(3, h, w), [3.0, 4.0], [3 / 4, 4 / 3])
        assert ours.tolist() == [list(ref)] * 5


def test_resized_crop_equals_torchvision() -> None:
    """Upscaling: exact against torchvision's float path (rounded); within 1 of its fixed-point uint8 path."""
    images = make_images(64)
    boxes = P.random_resized_crop_params(64, 32, 32)
    for size, antialias in (((32, 32), True), ((12, 12), False)):  # downscaling: as without antialias
        ours = P.resized_crop(images, boxes, size)

        def theirs(i: int, image: torch.Tensor, dtype: torch.dtype, size=size, antialias=antialias):
            out = TF.resized_crop(image.to(dtype), *boxes[i].tolist(), list(size), antialias=antialias)
            return out.round().clamp(0, 255).to(torch.uint8) if dtype.is_floating_point else out

        ref = per_image(images, lambda i, im: theirs(i, im, torch.float32))
        if size == (32, 32):
            assert torch.equal(ours, ref)
        else:  # float sums in another order: ties near .5 round either way
            assert_close_levels(ours, ref, 1, 0.99)
        assert_close_levels(ours, per_image(images, lambda i, im: theirs(i, im, torch.uint8)), 1, 0.75)


#: (ours, torchvision's, factor range) of each colour adjustment
COLOR_ADJUSTMENTS = [
    (P.adjust_brightness, TF.adjust_brightness, 0.6, 1.4),
    (P.adjust_contrast, TF.adjust_contrast, 0.6, 1.4),
    (P.adjust_saturation, TF.adjust_saturation, 0.6, 1.4),
    (P.adjust_hue, TF.adjust_hue, -0.1, 0.1),
]


@pytest.mark.parametrize(("ours", "theirs", "lo", "hi"), COLOR_ADJUSTMENTS)
def test_per_sample_color_adjustments_equal_torchvision(ours, theirs, lo, hi) -> None:
    images = make_images(32)
    factor = torch.empty(32).uniform_(lo, hi)
    out = ours(images, factor)
    ref = per_image(images, lambda i, im: theirs(im, float(factor[i])))
    assert_close_levels(out, ref, 1, 0.999)


def test_color_jitter_equals_torchvision_given_the_draws() -> None:
    b = 32
    images = make_images(b)
    with torch.random.fork_rng(devices=[]):  # the draws color_jitter makes, in its order
        order = torch.rand(b, 4).argsort(1)
        factors = [torch.empty(b).uniform_(lo, hi) for lo, hi in ((0.6, 1.4),) * 3 + ((-0.1, 0.1),)]
    out = P.color_jitter(images, 0.4, 0.4, 0.4, 0.1)
    fns = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)

    def chain(i: int, image: torch.Tensor) -> torch.Tensor:
        for k in order[i].tolist():
            image = fns[k](image, float(factors[k][i]))
        return image

    assert_close_levels(out, per_image(images, chain), 2, 0.99)


@pytest.mark.parametrize(("ours", "theirs", "lo", "hi"), COLOR_ADJUSTMENTS)
def test_color_adjustments_of_one_channel_images_equal_torchvision(ours, theirs, lo, hi) -> None:
    """Grayscale images (Fashion-MNIST): contrast blends with the image's own mean, saturation and hue
    leave it unchanged, as torchvision does."""
    images = make_images(16)[:, :1]
    factor = torch.empty(16).uniform_(lo, hi)
    out = ours(images, factor)
    assert out.shape == images.shape
    assert torch.equal(out, per_image(images, lambda i, im: theirs(im, float(factor[i]))))


def test_simclr_views_of_one_channel_images(monkeypatch: pytest.MonkeyPatch) -> None:
    """SimCLR views (SADE's test-time views among them) of ``[B, H, W, 1]`` images keep one channel,
    with colour jitter, grayscale and blur all drawn, and both colour-jitter paths give the same views."""
    images = make_images(8).permute(0, 2, 3, 1)[..., :1].contiguous()
    views = []
    for graph_safe in (False, True):
        monkeypatch.setattr(P, "graph_safe_device", lambda device, on=graph_safe: on)
        with torch.random.fork_rng(devices=[]):
            views.append(
                P.simclr_view(images, padding=4, jitter_p=1.0, grayscale_p=1.0, blur_p=1.0, blur_kernel=3)
            )
    assert views[0].shape == images.shape and views[0].dtype == torch.uint8
    assert torch.equal(views[0], views[1])


def test_color_jitter_paths_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    images = make_images(32)
    with torch.random.fork_rng(devices=[]):
        by_index = P.color_jitter(images, 0.4, 0.4, 0.4, 0.1)
    monkeypatch.setattr(P, "graph_safe_device", lambda device: True)
    assert torch.equal(P.color_jitter(images, 0.4, 0.4, 0.4, 0.1), by_index)


def test_gaussian_blur_equals_torchvision_within_one_level() -> None:
    images = make_images(16)
    sigma = torch.empty(16).uniform_(0.1, 2.0)
    ours = P.gaussian_blur(images, 5, sigma)
    ref = per_image(images, lambda i, im: TF.gaussian_blur(im, [5, 5], [float(sigma[i])] * 2))
    assert_close_levels(ours, ref, 1, 0.95)


@pytest.mark.parametrize("device", DEVICES)
def test_simclr_view_shapes_and_probabilities(device: str) -> None:
    images = torch.randint(0, 256, (1000, 32, 32, 3), dtype=torch.uint8, device=device)
    out = P.simclr_view(images, 32)
    assert out.shape == images.shape and out.dtype == torch.uint8 and out.device == images.device
    gray = (out[..., 0] == out[..., 1]).all((1, 2)) & (out[..., 1] == out[..., 2]).all((1, 2))
    assert_frequency(gray.sum().cpu(), 1000, 0.2)
    blurred = P.simclr_view(images[:8], 32, blur_p=1.0)
    assert blurred.shape == (8, 32, 32, 3) and blurred.device == images.device
    assert P.simclr_view(images[:4], 16).shape == (4, 16, 16, 3)
    assert P.simclr_view(images[:4]).shape == (4, 32, 32, 3)


def test_simclr_view_without_colour_is_a_flipped_resized_crop() -> None:
    images = make_images(64).permute(0, 2, 3, 1).contiguous()
    with torch.random.fork_rng(devices=[]):
        boxes = P.random_resized_crop_params(64, 32, 32)
        flip = torch.rand(64) < 0.5
    out = P.simclr_view(images, 32, jitter_p=0.0, grayscale_p=0.0)
    crops = P.resized_crop(images.permute(0, 3, 1, 2), boxes, (32, 32)).permute(0, 2, 3, 1)
    assert torch.equal(out, torch.where(flip.view(-1, 1, 1, 1), crops.flip(2), crops))


def test_simclr_view_with_padding_is_a_flipped_padded_crop() -> None:
    """``padding``: RandomCrop(H, padding) instead of the resized crop (SADE's test-time views)."""
    images = make_images(64).permute(0, 2, 3, 1).contiguous()
    with torch.random.fork_rng(devices=[]):
        expected = random_hflip(random_crop(images, 4))
    out = P.simclr_view(images, jitter_p=0.0, grayscale_p=0.0, padding=4)
    assert torch.equal(out, expected)


def test_graph_safe_hsv_to_rgb_equals_torchvision() -> None:
    from torchvision.transforms.v2.functional._color import _hsv_to_rgb

    from lt_bench.data.graph_ops import hsv_to_rgb

    hsv = torch.rand(4, 3, 9, 9)
    hsv[0, 0] = 1.0  # h = 1 wraps to sector 0
    assert torch.equal(hsv_to_rgb(hsv), _hsv_to_rgb(hsv))
    assert torch.equal(hsv_to_rgb(hsv[1]), _hsv_to_rgb(hsv[1]))
