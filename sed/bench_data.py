"""Data loading at COCO train2017 size: our labeled/unlabeled data sets against pycocotools.

    python -m sed.bench --data [--data-dir DIR] [--repeats 2] [--batches 10000]

1. Construction. A generated train2017-size annotation file (`generate_coco`: 118,287 images,
   about 860k boxes with polygons, 80 non-contiguous category ids, deterministic by seed) is loaded
   in fresh processes that have imported torch, alternately: pycocotools' own `COCO(path)` and our
   `load_split(path, ..., labeled_percent=10)` (the labeled and unlabeled CocoDetection sets that
   train.py builds). Printed: median wall time and peak resident size (VmHWM) of each, and the
   ratios ours / pycocotools (target <= 1.5 for both).
2. Worker memory. The unlabeled set is iterated as train.py does (TrainBatchSampler, make_loader,
   2 workers, batches of 4); every `--batches / 10` batches each worker's private memory (USS:
   Private_Clean + Private_Dirty of /proc/PID/smaps_rollup) is printed. Forked workers share the
   parent's pages until they write to them; Python's reference counting writes to every object a
   worker touches, so metadata touched per image shows up here as growth. This run uses a second
   file with the same counts and image sizes 1/20 of COCO's, whose file names point at 8 tiny
   PNG files (one per size), so that no 118k images need writing and decoding costs little.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

NUM_IMAGES = 118287          # COCO train2017
BOXES_PER_IMAGE = 7.27       # 860,001 annotations / 118,287 images
# COCO's 80 category ids: 1..90 without the 10 ids unused since the 2014 release
CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
# (width, height) of COCO images: most have 640 on the longer side
SIZES = [(640, 480), (480, 640), (640, 427), (427, 640), (640, 360), (500, 375), (375, 500), (640, 640)]
POLYGON_POINTS = 16


def generate_coco(path, num_images=NUM_IMAGES, seed=0, scale=1, shared_files=False):
    """Write a COCO instances file shaped like train2017 and return its path.

    Boxes per image: 1 + negative binomial (mean 7.27), 1 % of the images without boxes, 1 % of the
    boxes crowd; each box has a 16-point polygon and an area. scale divides every size and
    coordinate. shared_files: file_name = "<w>x<h>.png", one file per image size (`write_images`).
    """
    rng = np.random.default_rng(seed)
    size_index = rng.integers(len(SIZES), size=num_images)
    wh = np.array(SIZES, dtype=np.float64)[size_index] / scale                     # [I, 2]
    wh = np.maximum(np.round(wh), 8).astype(np.int64)
    counts = 1 + rng.negative_binomial(1, 1 / BOXES_PER_IMAGE, size=num_images)   # mean 7.27
    counts[rng.random(num_images) < 0.01] = 0
    image_of_box = np.repeat(np.arange(num_images), counts)                        # [B]
    num_boxes = len(image_of_box)
    box_wh = wh[image_of_box] * rng.uniform(0.02, 0.6, size=(num_boxes, 2))
    xy = (wh[image_of_box] - box_wh) * rng.random((num_boxes, 2))
    bbox = np.round(np.concatenate([xy, box_wh], axis=1), 2)                       # [B, 4] xywh
    angles = np.linspace(0, 2 * np.pi, POLYGON_POINTS, endpoint=False)
    centre, radius = xy + box_wh / 2, box_wh / 2
    polygon = np.stack([centre[:, :1] + radius[:, :1] * np.cos(angles),
                        centre[:, 1:] + radius[:, 1:] * np.sin(angles)], axis=2)   # [B, P, 2]
    polygon = np.round(polygon.reshape(num_boxes, -1), 2)
    area = np.round(np.pi * radius[:, 0] * radius[:, 1], 2)
    categories = rng.choice(CATEGORY_IDS, size=num_boxes)
    crowd = (rng.random(num_boxes) < 0.01).astype(int)
    image_ids = rng.choice(600000, size=num_images, replace=False) + 1             # COCO: sparse ids

    images = [{"license": 1, "file_name": f"{w}x{h}.png" if shared_files else f"{i:012d}.jpg",
               "coco_url": f"http://images.cocodataset.org/train2017/{i:012d}.jpg", "height": h, "width": w,
               "date_captured": "2013-11-14 16:28:13", "id": i}
              for i, (w, h) in zip(image_ids.tolist(), wh.tolist())]
    box_image_ids = image_ids[image_of_box].tolist()
    annotations = [{"segmentation": [p], "area": a, "iscrowd": c, "image_id": i, "bbox": b,
                    "category_id": k, "id": n + 1}
                   for n, (p, a, c, i, b, k) in enumerate(zip(polygon.tolist(), area.tolist(), crowd.tolist(),
                                                              box_image_ids, bbox.tolist(), categories.tolist()))]
    data = {"info": {"description": f"generated train2017-size file, seed {seed}"}, "licenses": [],
            "images": images, "annotations": annotations,
            "categories": [{"supercategory": "thing", "id": c, "name": f"class{c}"} for c in CATEGORY_IDS]}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f)
    sizes = sorted(set(map(tuple, wh.tolist())))
    # what the benchmark prints, without parsing the file again
    path.with_suffix(".meta").write_text(json.dumps({"images": num_images, "boxes": num_boxes,
                                                     "categories": len(CATEGORY_IDS), "sizes": sizes}))
    return path


def write_images(ann_file, image_dir):
    """One small PNG per image size of ann_file (file names from generate_coco(shared_files=True))."""
    from PIL import Image
    image_dir = Path(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    for w, h in json.loads(Path(ann_file).with_suffix(".meta").read_text())["sizes"]:
        target = image_dir / f"{w}x{h}.png"
        if not target.exists():
            Image.new("RGB", (w, h), (120, 80, 40)).save(target)


def read_kib(pid, names, file="status"):
    """Sum of the fields `names` (kB values) of /proc/PID/<file>."""
    with open(f"/proc/{pid}/{file}") as f:
        return sum(int(line.split()[1]) for line in f if line.split(":")[0] in names)


def _child_build(which, ann_file, image_dir):
    """Runs in a fresh process: build one side, print {"seconds", "peak_mib", "base_mib"} as JSON."""
    import torch  # noqa: F401  (the measured processes, like train.py, have imported torch)
    base = read_kib("self", ("VmRSS",))
    start = time.perf_counter()
    if which == "pycocotools":
        from pycocotools.coco import COCO
        import contextlib
        import io
        with contextlib.redirect_stdout(io.StringIO()):
            COCO(str(ann_file))
    else:
        from sed.splits import load_split
        load_split(ann_file, image_dir, labeled_percent=10, split_seed=1)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_mib": read_kib("self", ("VmHWM",)) / 1024,
                      "base_mib": base / 1024}))


def _child_workers(ann_file, image_dir, batches, every):
    """Runs in a fresh process: iterate the unlabeled set as train.py does, print the USS curve."""
    from sed.data import TrainBatchSampler, make_loader
    from sed.splits import load_split
    _, unlabeled = load_split(ann_file, image_dir, labeled_percent=10, split_seed=1)
    sampler = TrainBatchSampler(unlabeled.aspect_ratios(), 4, seed=1)
    curve = []
    for n, _ in enumerate(make_loader(unlabeled, sampler, workers=2), start=1):
        if n == 1 or n % every == 0:
            pid = os.getpid()
            with open(f"/proc/{pid}/task/{pid}/children") as f:   # the DataLoader's worker processes
                workers = sorted(int(p) for p in f.read().split())
            curve.append([n] + [read_kib(w, ("Private_Clean", "Private_Dirty"), "smaps_rollup") / 1024
                                for w in workers])
        if n == batches:
            break
    print(json.dumps(curve))


def run_child(*args):
    """python -m sed.bench_data --child ARGS in a fresh process -> its last stdout line as JSON."""
    result = subprocess.run([sys.executable, "-m", "sed.bench_data", "--child", *map(str, args)],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if result.returncode != 0:
        raise RuntimeError(f"benchmark child {args} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(data_dir=None, repeats=2, batches=10000, num_images=NUM_IMAGES):
    data_dir = Path(data_dir or Path(tempfile.gettempdir()) / "sed_bench_data")
    timing_file = data_dir / f"train2017_size_{num_images}.json"
    curve_file = data_dir / f"train2017_size_{num_images}_small.json"
    image_dir = data_dir / "images"
    start = time.perf_counter()
    if not timing_file.with_suffix(".meta").exists():   # generated once, reused (same seed, same bytes)
        generate_coco(timing_file, num_images, seed=0)
    if not curve_file.with_suffix(".meta").exists():
        generate_coco(curve_file, num_images, seed=0, scale=20, shared_files=True)
    write_images(curve_file, image_dir)
    meta = json.loads(timing_file.with_suffix(".meta").read_text())
    print(f"{timing_file}: {meta['images']} images, {meta['boxes']} boxes, {meta['categories']} categories, "
          f"{timing_file.stat().st_size / 2**20:.0f} MiB (ready in {time.perf_counter() - start:.0f} s)", flush=True)

    runs = {"pycocotools": [], "ours": []}
    for _ in range(repeats):   # alternately, so that both sides see the same machine load
        for which in runs:
            runs[which].append(run_child("build", which, timing_file, image_dir))
    median = {w: {k: statistics.median(r[k] for r in rs) for k in ("seconds", "peak_mib", "base_mib")}
              for w, rs in runs.items()}
    ours, coco = median["ours"], median["pycocotools"]
    print(f"construction (median of {repeats}, fresh processes with torch imported):")
    print(f"  pycocotools COCO(path)             {coco['seconds']:6.1f} s   peak {coco['peak_mib']:6.0f} MiB"
          f"   (after import torch: {coco['base_mib']:.0f} MiB)")
    print(f"  ours load_split(10 %): both sets   {ours['seconds']:6.1f} s   peak {ours['peak_mib']:6.0f} MiB")
    print(f"  ratio ours / pycocotools: time {ours['seconds'] / coco['seconds']:.2f}, "
          f"peak memory {ours['peak_mib'] / coco['peak_mib']:.2f}, memory above the torch import "
          f"{(ours['peak_mib'] - ours['base_mib']) / (coco['peak_mib'] - coco['base_mib']):.2f}"
          f"   (targets <= 1.5)", flush=True)

    every = max(1, batches // 10)
    curve = run_child("workers", curve_file, image_dir, batches, every)
    print(f"DataLoader worker private memory (USS, MiB), unlabeled set, 2 workers, batches of 4:")
    print("  batches " + "".join(f"  worker {k}" for k in range(len(curve[0]) - 1)))
    for n, *uss in curve:
        print(f"  {n:7d} " + "".join(f"  {m:8.1f}" for m in uss))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        if sys.argv[2] == "build":
            _child_build(*sys.argv[3:6])
        else:
            _child_workers(sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
    else:
        main()
