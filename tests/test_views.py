"""Weak / strong / small views (sed/views.py)."""
import pytest
import torch
import torchvision.transforms.v2.functional as TF

import sed
from sed.config import TrainConfig
from sed.transform import ImageBatch
from sed.views import downsample, make_views, strong_augment

NO_AUGMENT = dict(strong_color_jitter=0.0, strong_grayscale_prob=0.0, strong_blur_prob=0.0, strong_erase_prob=0.0)


@pytest.fixture(scope="module")
def model():
    return sed.build_model(num_classes=2, backbone="resnet18", backbone_weights=None, min_size=64, max_size=128)


def test_strong_augment_keeps_shape_and_range_and_follows_the_generator():
    image = torch.rand(3, 40, 50)
    cfg = TrainConfig()
    a = strong_augment(image, cfg, torch.Generator().manual_seed(1))
    b = strong_augment(image, cfg, torch.Generator().manual_seed(1))
    c = strong_augment(image, cfg, torch.Generator().manual_seed(2))
    assert a.shape == image.shape and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_strong_augment_uses_the_global_rng_without_generator():
    image = torch.rand(3, 40, 50)
    torch.manual_seed(3)
    a = strong_augment(image, TrainConfig())
    torch.manual_seed(3)
    assert torch.equal(a, strong_augment(image, TrainConfig()))


def test_strong_augment_switched_off_is_the_identity():
    image = torch.rand(3, 40, 50)
    assert torch.equal(strong_augment(image, TrainConfig(**NO_AUGMENT)), image)


def test_grayscale_and_erasing_are_photometric():
    image = torch.rand(3, 40, 50)
    gray = strong_augment(image, TrainConfig(**{**NO_AUGMENT, "strong_grayscale_prob": 1.0}))
    assert torch.allclose(gray[0], gray[1]) and torch.allclose(gray[1], gray[2])
    erased = strong_augment(image, TrainConfig(**{**NO_AUGMENT, "strong_erase_prob": 1.0}))
    changed = (erased != image).any(0).float().mean().item()
    assert 0.02 < changed <= 0.2  # one rectangle of 5-20 % of the area


def test_erasing_and_blur_ranges_are_flags():
    """--strong-erase-scale, --strong-erase-ratio: an erased box of exactly a quarter of a 40 x 40 image, square,
    is 20 x 20 pixels. --strong-blur-sigma (s, s) blurs with sigma s."""
    image = torch.rand(3, 40, 40)
    cfg = TrainConfig(**{**NO_AUGMENT, "strong_erase_prob": 1.0, "strong_erase_scale": (0.25, 0.25),
                         "strong_erase_ratio": (1.0, 1.0)})
    erased = (strong_augment(image, cfg) != image).any(0)
    rows, cols = erased.any(1).nonzero(), erased.any(0).nonzero()
    assert erased.sum() == 400 and rows.max() - rows.min() == cols.max() - cols.min() == 19
    blurred = strong_augment(image, TrainConfig(**{**NO_AUGMENT, "strong_blur_prob": 1.0,
                                                    "strong_blur_sigma": (1.5, 1.5)}))
    assert torch.allclose(blurred, TF.gaussian_blur(image, [11, 11], [1.5, 1.5]))  # kernel 2 * ceil(4.5) + 1


def test_views_share_geometry_and_the_small_view_is_half(model):
    images = [torch.rand(3, 70, 100), torch.rand(3, 90, 64)]
    weak, strong, small = make_views(model, images, TrainConfig(), min_size=64)
    assert weak.tensors.shape == strong.tensors.shape == (2, 3, 128, 128)  # padded to a multiple of 64
    assert weak.image_sizes == strong.image_sizes == [(64, 91), (90, 64)]
    assert small.tensors.shape == (2, 3, 64, 64)
    assert small.image_sizes == [(32, 46), (45, 32)]  # halved, rounded up
    assert not torch.equal(weak.tensors, strong.tensors)


def test_without_augmentation_strong_equals_weak(model):
    images = [torch.rand(3, 70, 100)]
    weak, strong, _ = make_views(model, images, TrainConfig(**NO_AUGMENT), min_size=64)
    assert torch.equal(weak.tensors, strong.tensors)


def test_downsample_is_an_aligned_half():
    # a horizontal ramp x (pixel centres 0, 1, ...): small pixel j covers original pixels 2j, 2j+1, so
    # an aligned symmetric filter gives 2j + 0.5 (away from the border, where the filter is cut)
    ramp = torch.arange(64.0).expand(1, 3, 32, 64).contiguous()
    small = downsample(ImageBatch(ramp, [(31, 63)]))
    assert small.tensors.shape == (1, 3, 16, 32) and small.image_sizes == [(16, 32)]
    assert torch.allclose(small.tensors[0, :, :, 1:-1], torch.arange(1, 31) * 2 + 0.5)


def test_downsample_without_antialias_is_the_mean_of_each_2x2_block(model):
    """--no-small-view-antialias: bilinear at exactly 0.5 averages each 2x2 block, so stripes 2 pixels wide
    keep their full contrast; the antialiased default low-passes them first (SED_NOTES section 2)."""
    stripes = (torch.arange(64) // 2 % 2).float().expand(1, 3, 64, 64).contiguous()  # 0 0 1 1 0 0 ...
    plain = downsample(ImageBatch(stripes, [(64, 64)]), antialias=False).tensors
    assert torch.allclose(plain, torch.nn.functional.avg_pool2d(stripes, 2))
    assert torch.equal(plain[0, 0, 0, :4], torch.tensor([0.0, 1.0, 0.0, 1.0]))
    smooth = downsample(ImageBatch(stripes, [(64, 64)])).tensors[0, 0, 0, 1:-1]
    assert smooth.max() - smooth.min() < 0.6  # contrast lost to the low-pass
    images = [torch.rand(3, 64, 64)]
    _, strong, small = make_views(model, images, TrainConfig(**NO_AUGMENT, small_view_antialias=False), min_size=64)
    assert torch.allclose(small.tensors, torch.nn.functional.avg_pool2d(strong.tensors, 2), atol=1e-6)


def test_one_random_min_size_for_both_views():
    model = sed.build_model(num_classes=2, backbone="resnet18", backbone_weights=None, min_size=(32, 64, 96),
                            max_size=200).train()
    for seed in range(4):
        torch.manual_seed(seed)
        weak, strong, small = make_views(model, [torch.rand(3, 50, 60)], TrainConfig())
        assert weak.image_sizes == strong.image_sizes and min(weak.image_sizes[0]) in (32, 64, 96)
