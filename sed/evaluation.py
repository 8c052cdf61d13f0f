"""COCO box evaluation: inference on this rank's shard, gather to rank 0, pycocotools COCOeval."""
import contextlib
import copy
import io
import warnings

import numpy as np
import torch
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from sed.data import make_eval_loader, worker_batches
from sed.distributed import DistInfo, all_gather_objects

# Names of COCOeval.stats[0..11], in its order (pycocotools cocoeval.py, summarize()).
METRIC_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


def autocast(device, dtype):
    """One code path for all precisions (nanoGPT): autocast is a no-op for float32."""
    return torch.autocast(torch.device(device).type, dtype=getattr(torch, dtype),
                          enabled=dtype != "float32")


def warn_slow_precision(device, dtype):
    """One warning line for float16 on the CPU (train.py and eval.py)."""
    if dtype == "float16" and torch.device(device).type == "cpu":
        warnings.warn("--dtype float16 on the CPU is emulated and many times slower than float32; "
                      "bfloat16 is the CPU's half precision")


def to_coco_results(detections, image_id, label_to_cat_id):
    """{"boxes": [K,4] xyxy, "scores": [K], "labels": [K] 1..C} -> COCO result dicts (bbox xywh)."""
    boxes = detections["boxes"].float().cpu()
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()  # [K, 4]
    scores = detections["scores"].float().cpu().tolist()
    labels = detections["labels"].cpu().tolist()
    return [{"image_id": int(image_id), "category_id": int(label_to_cat_id[int(label)]),
             "bbox": [round(v, 2) for v in box], "score": round(score, 5)}
            for box, score, label in zip(xywh, scores, labels)]


@torch.no_grad()
def predict(model, dataset, device, dtype="float32", batch_size=8, workers=2, dist_info=None, skipped=None):
    """COCO results of this rank's shard of `dataset` (model in eval mode, input-image pixels); the
    images that could not be read (eval.py --images) are warned of and, given a list, appended to `skipped`."""
    dist_info = dist_info or DistInfo(device=str(device))
    loader = make_eval_loader(dataset, batch_size=batch_size, workers=workers,
                              rank=dist_info.rank, world_size=dist_info.world_size)
    was_training = model.training
    model.eval()
    results = []
    with worker_batches(loader) as batches:
        for images, targets in tqdm(batches, total=len(loader), desc="eval", disable=not dist_info.is_main,
                                    leave=False):
            for target in targets:
                if "unreadable" in target:   # eval.py --images: a file that cannot be read is skipped
                    warnings.warn(f"{target['unreadable']}: skipped")
                    if skipped is not None:
                        skipped.append(target["unreadable"])
            present = [(im, t) for im, t in zip(images, targets) if im is not None]
            with autocast(device, dtype):
                outputs = model([im.to(device, non_blocking=True) for im, _ in present]) if present else []
            for out, (_, target) in zip(outputs, present):
                results += to_coco_results(out, target["image_id"], dataset.label_to_cat_id)
    model.train(was_training)
    return results


def coco_metrics(coco_gt, results, image_ids=None, verbose=True):
    """The 12 COCOeval box numbers in percent; all zeros when there are no detections
    (COCO.loadRes fails on an empty list)."""
    if not results:
        if verbose:
            print("no detections: all COCO metrics are 0")
        return {name: 0.0 for name in METRIC_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):  # keep only the 12-line summary
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))  # loadRes adds keys to the dicts it gets
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        if image_ids is not None:
            evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
    with contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO()):
        evaluator.summarize()
    # COCOeval uses -1 for "no ground truth in this size range"; report it as 0
    return {name: float(max(v, 0.0)) * 100 for name, v in zip(METRIC_NAMES, np.asarray(evaluator.stats))}


def evaluate(model, dataset, device, dtype="float32", batch_size=8, workers=2, dist_info=None):
    """On rank 0: the 12 COCO numbers in percent plus "detections" (COCO results of all ranks).
    On other ranks: None (they only contribute their shard). Call on every rank."""
    dist_info = dist_info or DistInfo(device=str(device))
    shard = predict(model, dataset, device, dtype, batch_size, workers, dist_info)
    gathered = all_gather_objects(shard)
    if not dist_info.is_main:
        return None
    results = [r for rank_results in gathered for r in rank_results]
    metrics = coco_metrics(dataset.coco, results, image_ids=dataset.image_ids)
    return {**metrics, "detections": results}
