"""Pseudo-label diagnostics: how good are the teacher's outputs as training targets?

SED's motivation (SED_NOTES.md, "The problem the paper names"): hard pseudo-labels (teacher
boxes with score >= 0.7) miss true objects -- these False Negatives are then trained as
background -- and carry imprecise coordinates; object sizes vary widely. These functions measure
exactly that on unlabeled images whose ground truth we keep for measurement only:

    pl_recall@t           share of ground-truth objects covered (IoU >= 0.5, same class) by a
                          teacher detection with score >= t; 1 - pl_recall@0.7 = the False
                          Negatives a hard 0.7 threshold creates
    pl_precision@s        share of teacher detections with score >= s that cover an object
    pl_mean_iou           mean IoU of each object's best teacher box (score >= s, same class),
                          over the objects with any overlap (IoU > 0): localisation precision
    pl_recall_small/medium/large   pl_recall@s by COCO object size (box area < 32^2,
                          32^2 <= area < 96^2, >= 96^2; COCO eval uses the mask area instead)
    pl_weight_on_objects  share of the RoI re-weighting mass (SED_NOTES section 3: the loss's
                          classification weights, w_r = max((1 - p_background)^gamma, floor); 1
                          under --no-reweight) on
                          teacher proposals with IoU >= 0.5 with an object, over the RoIs the loss
                          uses (each image's first --teacher-proposals; since stop 32: before, all
                          proposals, w_r = 1 - p_background)
    pl_num_images, pl_num_objects, pl_dets_per_image   counts behind the ratios

s = `score_thr`, 0.7 by default: the hard threshold of the paper's analysis.
Matching is class-aware when labels are given and class-agnostic otherwise; an object counts as
covered by any detection that overlaps it enough (no one-to-one assignment: this measures what a
pseudo-label set contains, not AP). Ratios are summed over images before dividing; a ratio whose
denominator is zero (no objects, no detections, no RoIs) is left out of the summary dict rather
than reported as NaN or 0.
"""
import torch
from torchvision.ops import box_iou
from tqdm import tqdm

from sed.config import TrainConfig
from sed.losses import foreground_weights
from sed.transform import resize_boxes

SMALL_AREA, LARGE_AREA = 32 ** 2, 96 ** 2  # COCO's size bins
SIZE_NAMES = ("small", "medium", "large")


def pairwise_iou(pred_boxes, gt_boxes, pred_labels=None, gt_labels=None):
    """[K, G] IoU between detections and objects; 0 between different classes when labels given."""
    iou = box_iou(pred_boxes.float(), gt_boxes.float())  # [K, G]
    if pred_labels is not None and gt_labels is not None:
        iou = iou * (pred_labels[:, None] == gt_labels[None, :])
    return iou


def covered(pred_boxes, pred_scores, gt_boxes, thresholds=(0.5, 0.7, 0.9), iou=0.5,
            pred_labels=None, gt_labels=None):
    """[T, G] bool: object g is covered by a detection with score >= thresholds[t], IoU >= iou."""
    hit = pairwise_iou(pred_boxes, gt_boxes, pred_labels, gt_labels) >= iou  # [K, G]
    keep = pred_scores[None, :] >= torch.tensor(thresholds, dtype=pred_scores.dtype)[:, None]  # [T, K]
    return (keep.float() @ hit.float()) > 0  # [T, G]


def teacher_recall(pred_boxes, pred_scores, gt_boxes, thresholds=(0.5, 0.7, 0.9), iou=0.5,
                   pred_labels=None, gt_labels=None):
    """[T] share of objects covered at each score threshold; NaN for an image without objects
    (PseudoLabelStats sums counts instead, so images without objects simply add nothing)."""
    return covered(pred_boxes, pred_scores, gt_boxes, thresholds, iou,
                   pred_labels, gt_labels).float().mean(dim=1)


def best_iou(pred_boxes, gt_boxes, pred_labels=None, gt_labels=None):
    """[G] IoU of each object's best-matching detection (0 where none overlaps)."""
    iou = pairwise_iou(pred_boxes, gt_boxes, pred_labels, gt_labels)  # [K, G]
    if iou.shape[0] == 0:
        return iou.new_zeros(iou.shape[1])
    return iou.max(dim=0).values


def size_bins(boxes):
    """[G] 0 = small, 1 = medium, 2 = large by box area (COCO bins)."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return (area >= SMALL_AREA).long() + (area >= LARGE_AREA).long()


def weight_on_objects(roi_boxes, roi_weights, gt_boxes, iou=0.5):
    """(weight on RoIs with IoU >= iou with some object, total weight) as floats; class-agnostic,
    as w_r = 1 - p_background is."""
    if gt_boxes.shape[0] == 0 or roi_boxes.shape[0] == 0:
        return 0.0, float(roi_weights.sum())
    on_object = box_iou(roi_boxes.float(), gt_boxes.float()).max(dim=1).values >= iou  # [P]
    return float(roi_weights[on_object].sum()), float(roi_weights.sum())


class PseudoLabelStats:
    """Sums the counts of the measures above over images; `summary()` gives the flat dict."""

    def __init__(self, thresholds=(0.5, 0.7, 0.9), score_thr=0.7, iou=0.5):
        self.thresholds, self.score_thr, self.iou = tuple(thresholds), score_thr, iou
        self.num_images = 0
        self.num_objects = 0
        self.covered = [0] * len(self.thresholds)      # objects covered per threshold
        self.size_objects = [0, 0, 0]                  # objects per size bin
        self.size_covered = [0, 0, 0]                  # covered at score_thr, per size bin
        self.num_dets = 0                              # detections with score >= score_thr
        self.true_dets = 0                             # ... that cover an object
        self.iou_sum, self.iou_count = 0.0, 0          # best IoUs > 0 at score_thr
        self.weight_on, self.weight_total = 0.0, 0.0   # RoI re-weighting mass

    def update(self, pred, gt, roi_boxes=None, roi_weights=None):
        """Add one image. pred: {"boxes" [K,4], "scores" [K], "labels" [K] (optional)};
        gt: {"boxes" [G,4], "labels" [G] (optional)}; roi_boxes [P,4], roi_weights [P] (optional),
        all in the same (input-image) pixels."""
        boxes, scores, labels = pred["boxes"].cpu(), pred["scores"].cpu(), pred.get("labels")
        gt_boxes, gt_labels = gt["boxes"].cpu(), gt.get("labels")
        labels = labels.cpu() if labels is not None else None
        gt_labels = gt_labels.cpu() if gt_labels is not None else None
        self.num_images += 1
        self.num_objects += len(gt_boxes)

        hits = covered(boxes, scores, gt_boxes, self.thresholds, self.iou, labels, gt_labels)  # [T, G]
        self.covered = [c + int(n) for c, n in zip(self.covered, hits.sum(dim=1))]

        keep = scores >= self.score_thr  # the hard pseudo-labels
        kept_labels = labels[keep] if labels is not None else None
        iou = pairwise_iou(boxes[keep], gt_boxes, kept_labels, gt_labels)  # [K', G]
        self.num_dets += int(keep.sum())
        self.true_dets += int((iou >= self.iou).any(dim=1).sum())
        best = best_iou(boxes[keep], gt_boxes, kept_labels, gt_labels)  # [G]
        self.iou_sum += float(best[best > 0].sum())
        self.iou_count += int((best > 0).sum())
        bins, hit = size_bins(gt_boxes), best >= self.iou
        for b in range(3):
            self.size_objects[b] += int((bins == b).sum())
            self.size_covered[b] += int(hit[bins == b].sum())

        if roi_boxes is not None:
            on, total = weight_on_objects(roi_boxes.cpu(), roi_weights.cpu(), gt_boxes, self.iou)
            self.weight_on += on
            self.weight_total += total
        return self

    def summary(self):
        """Flat dict of floats; ratios with a zero denominator are left out (see module doc)."""
        out = {"pl_num_images": float(self.num_images), "pl_num_objects": float(self.num_objects)}
        if self.num_images:
            out["pl_dets_per_image"] = self.num_dets / self.num_images
        ratios = {f"pl_recall@{t:g}": (c, self.num_objects) for t, c in zip(self.thresholds, self.covered)}
        ratios[f"pl_precision@{self.score_thr:g}"] = (self.true_dets, self.num_dets)
        ratios["pl_mean_iou"] = (self.iou_sum, self.iou_count)
        for name, c, n in zip(SIZE_NAMES, self.size_covered, self.size_objects):
            ratios[f"pl_recall_{name}"] = (c, n)
        ratios["pl_weight_on_objects"] = (self.weight_on, self.weight_total)
        out.update({k: num / den for k, (num, den) in ratios.items() if den > 0})
        return out


def format_summary(stats):
    """One console line, e.g. `pseudo-labels (64 images, 180 objects): recall@0.5 0.812 recall@0.7 0.604 ...`."""
    parts = [f"{k[3:]} {v:.3f}" for k, v in stats.items() if not k.startswith("pl_num")]
    return (f"pseudo-labels ({int(stats.get('pl_num_images', 0))} images, "
            f"{int(stats.get('pl_num_objects', 0))} objects): " + " ".join(parts))


COLLAPSE_RATIO = 0.5  # design choice: warn when a sign of collapse fell below half its first value


def collapse_warning(stats, first):
    """A warning line when the teacher's detections per image or recall@0.5 fell below
    COLLAPSE_RATIO x their value at the first measurement (SED_NOTES "Known failure mode": collapse
    into background shows first as fewer confident detections and lower recall), else None."""
    fallen = [f"{k[3:]} {first[k]:.3f} -> {stats[k]:.3f}" for k in ("pl_dets_per_image", "pl_recall@0.5")
              if k in stats and k in first and stats[k] < COLLAPSE_RATIO * first[k]]
    if not fallen:
        return None
    return ("warning: the teacher is collapsing into background? " + ", ".join(fallen)
            + " since the first measurement; see README, experiment")


@torch.no_grad()
def teacher_outputs(model, images, cfg=None):
    """One pass of the eval-mode teacher over images (list of [3,H,W]) -> (detections as
    model(images) gives them, per image (RoIs [P,4], weights [P])): the RoIs of the loss, each image's
    first cfg.teacher_proposals proposals (sed/teacher.py predict_soft), and their classification
    weights (SED_NOTES section 3, sed/losses.py foreground_weights), all in input-image pixels.
    cfg None: train.py's defaults."""
    cfg = cfg or TrainConfig()
    original_sizes = [tuple(image.shape[-2:]) for image in images]
    batch, _ = model.transform(images)
    feats = model.features(batch.tensors)
    obj, deltas = model.rpn.head(feats)
    anchors = model.rpn.anchors(batch, feats)
    proposals = model.rpn.propose(anchors, obj, deltas, batch.image_sizes)  # list of [P_i, 4]
    logits, deltas = model.roi_heads.predict(feats, proposals)  # [sum P_i, C+1], [sum P_i, (C+1)*4]
    weights = foreground_weights(1 - logits.softmax(dim=1)[:, 0], cfg)[0]  # [sum P_i], w_cls
    dets = model.roi_heads.detections(logits, deltas, proposals, batch.image_sizes)
    dets = model.transform.postprocess(dets, batch.image_sizes, original_sizes)
    # proposals live in the resized batch: back to the image by original size / resized size
    rois = [resize_boxes(p[:cfg.teacher_proposals], resized, original)
            for p, resized, original in zip(proposals, batch.image_sizes, original_sizes)]
    weights = [w[:cfg.teacher_proposals] for w in weights.split([len(p) for p in proposals])]
    return dets, list(zip(rois, weights))


@torch.no_grad()
def diagnose(teacher, dataset, indices, device="cpu", batch_size=4, thresholds=(0.5, 0.7, 0.9),
             score_thr=0.7, cfg=None):
    """Run `teacher` (eval mode, restored afterwards) on dataset[i] for i in `indices` (a fixed
    sample of unlabeled images; their targets serve as ground truth for measurement only) and
    return PseudoLabelStats.summary(). cfg: the run's TrainConfig (teacher_outputs)."""
    was_training = teacher.training
    teacher.eval()
    stats = PseudoLabelStats(thresholds, score_thr)
    indices = list(indices)
    # a progress bar as the evaluation's: on a CPU at COCO's image size the sample takes minutes
    for start in tqdm(range(0, len(indices), batch_size), desc="pseudo-labels", leave=False):
        images, targets = zip(*(dataset[i] for i in indices[start:start + batch_size]))
        dets, rois = teacher_outputs(teacher, [image.to(device) for image in images], cfg)
        for det, target, (boxes, weights) in zip(dets, targets, rois):
            stats.update(det, target, boxes, weights)
    teacher.train(was_training)
    return stats.summary()
