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
ERASE_SCALE = (0.05, 0.2)  # design choice: Unbiased Teacher's first RandomErasing (area fraction,
ERASE_RATIO = (0.3, 3.3)   # aspect ratio); not TrainConfig fields
BLUR_SIGMA = (0.1, 2.0)    # design choice: Gaussian blur sigma range of SimCLR / Unbiased Teacher, in pixels


def _uniform(low, high, generator):
    return low + (high - low) * torch.rand((), generator=generator).item()


def _coin(p, generator):
    return torch.rand((), generator=generator).item() < p


def strong_augment(image, cfg, generator=None):
    """Photometric strong augmentation of one image [3, H, W] in 0..1; geometry unchanged.

    In order (design choice: Unbiased Teacher's recipe, fixed order): colour jitter of strength
    s = cfg.strong_color_jitter (brightness, contrast, saturation factors in [1-s, 1+s], hue shift
    in [-s/4, s/4]), grayscale with cfg.strong_grayscale_prob, Gaussian blur with cfg.strong_blur_prob,
    one random erasing with cfg.strong_erase_prob (filled with uniform noise).
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
        sigma = _uniform(*BLUR_SIGMA, generator)
        kernel = 2 * math.ceil(3 * sigma) + 1
        image = TF.gaussian_blur(image, [kernel, kernel], [sigma, sigma])
    if _coin(cfg.strong_erase_prob, generator):
        image = _random_erase(image, generator)
    return image.clamp(0, 1)


def _random_erase(image, generator):
    """Replace a random rectangle (area and aspect ratio drawn from ERASE_*) by uniform noise."""
    _, H, W = image.shape
    area = _uniform(*ERASE_SCALE, generator) * H * W
    ratio = math.exp(_uniform(math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1]), generator))
    h = min(H, max(1, round(math.sqrt(area * ratio))))
    w = min(W, max(1, round(math.sqrt(area / ratio))))
    y = int(torch.randint(0, H - h + 1, (), generator=generator))
    x = int(torch.randint(0, W - w + 1, (), generator=generator))
    noise = torch.rand((3, h, w), generator=generator).to(image)
    return TF.erase(image, y, x, h, w, noise)


def downsample(batch):
    """The batch at exactly half resolution (SED_NOTES section 2): tensors [B,3,Hp/2,Wp/2], sizes halved.

    design choice: bilinear with antialias=True (a low-pass filter before subsampling, like resizing
    the image itself), on the normalised, padded tensor. Image sizes round up so no content is cut.
    """
    tensors = F.interpolate(batch.tensors, scale_factor=0.5, mode="bilinear", align_corners=False,
                            antialias=True)
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
    return weak_batch, strong_batch, downsample(strong_batch)
