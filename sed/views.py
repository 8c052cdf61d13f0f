"""The three views of an unlabeled batch (SED_NOTES.md "Framework" and section 2).

    weak   the image as loaded (resize + flip come from the dataset / model.transform): teacher input
    strong the same image with photometric noise only, so geometry and coordinates are the weak view's
    small  the strong batch downsampled by exactly 0.5, for the scale-consistency loss

All randomness comes from an explicit torch.Generator, or torch's global RNG when generator is None
(train.py checkpoints it), so a resumed run draws the same augmentations.
"""
import math

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

SIZE_DIVISIBLE = 64  # SED_NOTES section 2: P6 has stride 64, so 64-padding makes the 0.5x pyramid align


def _uniform(low, high, generator):
    return low + (high - low) * torch.rand((), generator=generator).item()


def _coin(p, generator):
    return torch.rand((), generator=generator).item() < p


def strong_augment(image, cfg, generator=None):
    """Photometric strong augmentation of one image [3, H, W] in 0..1; geometry unchanged.

    In order (design choice: Unbiased Teacher's recipe, fixed order): colour jitter of strength
    s = cfg.strong_color_jitter (brightness, contrast, saturation factors in [1-s, 1+s], hue shift
    in [-s/4, s/4]), grayscale with cfg.strong_grayscale_prob, Gaussian blur with cfg.strong_blur_prob
    (sigma drawn in cfg.strong_blur_sigma), one random erasing with cfg.strong_erase_prob (filled with
    uniform noise; `_random_erase`). The order is fixed: not a flag (README "SED in one step").
    """
    s = cfg.strong_color_jitter
    if s > 0:
        image = TF.adjust_brightness(image, _uniform(1 - s, 1 + s, generator))
        image = TF.adjust_contrast(image, _uniform(1 - s, 1 + s, generator))
        image = TF.adjust_saturation(image, _uniform(1 - s, 1 + s, generator))
        image = TF.adjust_hue(image, _uniform(-s / 4, s / 4, generator))
    if _coin(cfg.strong_grayscale_prob, generator):
        image = TF.rgb_to_grayscale(image, num_output_channels=3)
    if _coin(cfg.strong_blur_prob, generator):
        sigma = _uniform(*cfg.strong_blur_sigma, generator)
        kernel = 2 * math.ceil(3 * sigma) + 1
        image = TF.gaussian_blur(image, [kernel, kernel], [sigma, sigma])
    if _coin(cfg.strong_erase_prob, generator):
        image = _random_erase(image, cfg.strong_erase_scale, cfg.strong_erase_ratio, generator)
    return image.clamp(0, 1)


def _random_erase(image, scale, ratio_range, generator):
    """Replace a random rectangle by uniform noise: its area a fraction of the image drawn in scale
    (low, high), its aspect ratio h / w drawn in ratio_range, uniformly in log space (torchvision's
    RandomErasing)."""
    _, H, W = image.shape
    area = _uniform(*scale, generator) * H * W
    ratio = math.exp(_uniform(math.log(ratio_range[0]), math.log(ratio_range[1]), generator))
    h = min(H, max(1, round(math.sqrt(area * ratio))))
    w = min(W, max(1, round(math.sqrt(area / ratio))))
    y = int(torch.randint(0, H - h + 1, (), generator=generator))
    x = int(torch.randint(0, W - w + 1, (), generator=generator))
    noise = torch.rand((3, h, w), generator=generator).to(image)
    return TF.erase(image, y, x, h, w, noise)


def downsample(batch, antialias=True):
    """The batch at exactly half resolution (SED_NOTES section 2): tensors [B,3,Hp/2,Wp/2], sizes halved.

    Bilinear on the normalised, padded tensor; design choice (--small-view-antialias): with antialias
    (a low-pass filter before subsampling, like resizing the image itself), or without (at exactly
    0.5, each output pixel is the mean of its 2x2 block). Image sizes round up so no content is cut.
    """
    tensors = F.interpolate(batch.tensors, scale_factor=0.5, mode="bilinear", align_corners=False,
                            antialias=antialias)
    sizes = [((h + 1) // 2, (w + 1) // 2) for h, w in batch.image_sizes]
    return type(batch)(tensors, sizes)


def make_views(model, images, cfg, min_size=None, generator=None):
    """Unlabeled images (list of [3, H, W] in 0..1, already flipped) -> (weak, strong, small) batches.

    weak and strong go through model.transform with the same min_size and 64-padding, so they
    share the geometry; small = downsample(strong). min_size: the shorter side for this step;
    None draws one of the model's multi-scale sizes (torch's global RNG), once for both views.
    model: the bare detector (not DDP-wrapped).
    """
    min_size = min_size or model.transform.choose_min_size()
    strong = [strong_augment(im, cfg, generator) for im in images]
    weak_batch, _ = model.transform(images, min_size=min_size, size_divisible=SIZE_DIVISIBLE)
    strong_batch, _ = model.transform(strong, min_size=min_size, size_divisible=SIZE_DIVISIBLE)
    return weak_batch, strong_batch, downsample(strong_batch, cfg.small_view_antialias)
