"""COCO box AP of a checkpoint written by train.py, or its detections on a folder of images.

    python eval.py --ckpt out/sup10/last.pt --val-ann coco/annotations/instances_val2017.json \
        --val-images coco/val2017 --json out/sup10/val_metrics.json --dets out/sup10/val_dets.json \
        --visualize out/sup10/val_pictures
    python eval.py --ckpt out/sup10/last.pt --images my_photos --visualize out/sup10/my_photos
    torchrun --standalone --nproc_per_node 8 eval.py --ckpt ... (each rank infers its shard)

The model is rebuilt from the checkpoint's config (classes, backbone, sizes); SED checkpoints
are evaluated with the EMA teacher unless --model student.
--val-ann: prints the 12 COCOeval numbers, writes them (percent) to --json and the detections
(COCO results format) to --dets.
--images FOLDER: no metrics; the detections of every jpg/jpeg/png/bmp/webp file of FOLDER and its
subfolders (sorted by path, hidden files skipped; as train.py --unlabeled-images) go to --dets
(default FOLDER_detections.json, next to the folder), COCO results format plus "file_name" (the path
relative to FOLDER); image_id is the index in the sorted order, category_id the checkpoint's COCO ids.
A file that cannot be read is skipped with one warning line naming it.
--visualize DIR: the first --max-images pictures with detections >= --score-thr (red, "name
score") and, for --val-ann, the ground truth (green), as DIR/<image_id>.png (--val-ann) or
DIR/<relative path>.png (--images).
"""
import json
import os
from pathlib import Path

import torch

import sed
from sed import distributed
from sed.checkpoint import load_checkpoint, load_weights
from sed.config import DEFAULT_WORKERS, check_device, check_writable_dir, check_writable_file, from_dict, model_options
from sed.data import IMAGE_EXTENSIONS, CocoDetection, check_image_files, image_files, load_rgb
from sed.errors import ArgumentParser, UserError, user_errors
from sed.evaluation import METRIC_NAMES, autocast, evaluate, predict, warn_slow_precision
from sed.visualize import resolve_font, visualize_dataset

class ImageFolder(torch.utils.data.Dataset):
    """The images of a folder with the interface of sed.data.CocoDetection that predict() and
    visualize_dataset() use: dataset[i] -> (image [3,H,W] float 0..1 RGB, target with no boxes:
    {"boxes": [0,4], "labels": [0], "image_id": i, "file_name"}), class_names, label_to_cat_id.
    An unreadable file (empty, truncated, not an image) gives image None and target["unreadable"] (the
    reason), which predict() warns of and skips: one bad photo should not stop a folder's detections
    (train.py stops instead, and --verify-images finds them all before training)."""

    def __init__(self, folder, class_names, label_to_cat_id):
        self.folder = Path(folder)
        self.files = image_files(folder)
        self.class_names, self.label_to_cat_id = class_names, label_to_cat_id

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                  "image_id": index, "file_name": self.relative_name(index)}
        try:
            return load_rgb(self.files[index]), target  # [3, H, W] float 0..1; grey, palette, RGBA -> RGB
        except UserError as e:
            return None, {**target, "unreadable": str(e)}

    def relative_name(self, index):
        """The file's path relative to the folder, e.g. "street/photo.jpg"."""
        return str(self.files[index].relative_to(self.folder))


def parse_args(argv=None):
    p = ArgumentParser(description="Evaluate a train.py checkpoint with COCO box AP, "
                                   "or run it on a folder of images.")
    p.add_argument("--ckpt", required=True, help="checkpoint written by train.py (OUT/last.pt)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--val-ann", help="COCO json of the evaluation images")
    source.add_argument("--images", help="folder of images to run the detector on (no metrics)")
    p.add_argument("--val-images", help="directory of the evaluation images (with --val-ann)")
    p.add_argument("--json", default="", help="write the 12 metrics (percent) here (with --val-ann)")
    p.add_argument("--dets", default="", help="write the detections (COCO results format) here; "
                                              "with --images default FOLDER_detections.json")
    p.add_argument("--visualize", default="", metavar="DIR", help="write pictures with the detections here")
    p.add_argument("--score-thr", type=float, help="--visualize draws detections >= this score (default 0.5)")
    p.add_argument("--max-images", type=int, help="--visualize draws the first N images (default 50)")
    p.add_argument("--font", help="--visualize labels in this TrueType/OpenType font (default DejaVuSans when "
                                  "Pillow finds it): one with the class names' script, e.g. NotoSansCJK-Regular.ttc")
    p.add_argument("--model", choices=("teacher", "student"), default=None,
                   help="which weights to evaluate; default: teacher when the checkpoint has one")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda | cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="autocast precision of the inference")
    p.add_argument("--batch-size", type=int, default=8, help="images per batch and process")
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                   help=f"data loader workers per process (4, or the CPU cores when fewer; here {DEFAULT_WORKERS})")
    p.add_argument("--debug", action="store_true", help="show the Python traceback of a user error "
                                                        "(also SED_DEBUG=1)")
    args = p.parse_args(argv)
    if os.path.isdir(args.ckpt):   # as train.py --resume says of a run folder
        p.error(f"--ckpt: {args.ckpt} is a folder; --ckpt {os.path.join(args.ckpt, 'last.pt')} evaluates the run "
                "it holds")
    if not os.path.isfile(args.ckpt):
        p.error(f"--ckpt: file not found: {args.ckpt}")
    if args.val_ann:
        if not os.path.isfile(args.val_ann):
            p.error(f"--val-ann: file not found: {args.val_ann}")
        if not args.val_images:
            p.error("--val-images: required with --val-ann (the directory of its images)")
        if not os.path.isdir(args.val_images):
            p.error(f"--val-images: directory not found: {args.val_images}")
    else:
        if args.val_images or args.json:
            p.error("--val-images and --json need --val-ann (no metrics without annotations)")
        if not os.path.isdir(args.images):
            p.error(f"--images: directory not found: {args.images}")
        if not image_files(args.images):
            p.error(f"--images: no {'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} files in {args.images} "
                    "or its subfolders")
        args.dets = args.dets or str(Path(args.images).resolve()) + "_detections.json"   # beside the folder
    picture_flags = [flag for flag, value in (("--score-thr", args.score_thr), ("--max-images", args.max_images),
                                              ("--font", args.font)) if value is not None]
    if picture_flags and not args.visualize:
        p.error(f"{' and '.join(picture_flags)} need --visualize (they choose what its pictures show)")
    args.score_thr = 0.5 if args.score_thr is None else args.score_thr
    args.max_images = 50 if args.max_images is None else args.max_images
    if not 0 <= args.score_thr <= 1:
        p.error(f"--score-thr must be in [0, 1] (a score), got {args.score_thr}")
    if args.max_images < 0:
        p.error(f"--max-images must be >= 0, got {args.max_images}")
    if args.batch_size < 1 or args.workers < 0:
        p.error(f"--batch-size must be >= 1 and --workers >= 0, got {args.batch_size} and {args.workers}")
    try:   # before the model runs: a path that cannot be written is one line now, not after the evaluation
        check_device(args.device)
        for flag, path in (("--json", args.json), ("--dets", args.dets)):
            if path:
                check_writable_file(path, flag)
        if args.visualize:
            check_writable_dir(args.visualize, "--visualize")
            args.font = resolve_font(args.font or "") or ""   # "" = Pillow's default font
    except UserError as e:
        p.error(str(e))
    return args


def build_from_checkpoint(ckpt, which, path="checkpoint"):
    """The detector of a checkpoint: its config's architecture with the chosen weights."""
    model = sed.build_model(backbone_weights=None, **model_options(from_dict(ckpt["config"])))
    load_weights(model, ckpt[which], path, which)
    return model


def write_json(obj, path):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1 if isinstance(obj, dict) else None)


def main(argv=None):
    """The command line; a user error is one line `error: ...` and exit status 1 (sed/errors.py)."""
    args = parse_args(argv)
    with user_errors(args.debug, "--batch-size or --dtype bfloat16"):
        run(args)


def run(args):
    dist_info = distributed.setup(args.device)
    if dist_info.is_main:
        warn_slow_precision(dist_info.device, args.dtype)
    ckpt = load_checkpoint(args.ckpt)
    which = args.model or ("teacher" if "teacher" in ckpt else "student")
    if which == "teacher" and "teacher" not in ckpt:
        raise UserError(f"{args.ckpt}: has no teacher weights (supervised run); use --model student")
    if dist_info.is_main and args.model is None and which == "student":
        print(f"{args.ckpt}: no teacher in the checkpoint, evaluating the student (trained) weights")
    model = build_from_checkpoint(ckpt, "model" if which == "student" else "teacher", args.ckpt)
    model = model.to(dist_info.device)
    names = ckpt.get("class_names")

    if args.val_ann:
        with distributed.main_warns_only(dist_info):
            data = CocoDetection(args.val_ann, args.val_images)
        if data.num_boxes() == 0:
            raise UserError(f"{args.val_ann}: no boxes (none annotated, or crowd only): COCO AP is undefined "
                            "without ground truth; --images runs the detector without metrics")
        if names is not None and names != data.class_names:
            raise UserError(f"{args.val_ann}: classes {data.class_names} differ from the checkpoint's {names}")
        check_image_files(data)
        metrics = evaluate(model, data, dist_info.device, args.dtype, args.batch_size, args.workers, dist_info)
        if dist_info.is_main:
            print(f"{args.ckpt} ({which}, iteration {ckpt['iteration']}): "
                  + "  ".join(f"{k} {metrics[k]:.2f}" for k in METRIC_NAMES))
            if args.json:
                write_json({k: metrics[k] for k in METRIC_NAMES}, args.json)
            if args.dets:
                write_json(metrics["detections"], args.dets)
    else:
        num_classes = ckpt["config"]["num_classes"]
        # checkpoints without the mapping (not written by train.py): COCO category id = label
        label_to_cat_id = ckpt.get("label_to_cat_id") or {k: k for k in range(1, num_classes + 1)}
        data = ImageFolder(args.images, names, label_to_cat_id)
        skipped = []  # this rank's unreadable files
        shard = predict(model, data, dist_info.device, args.dtype, args.batch_size, args.workers, dist_info, skipped)
        gathered = distributed.all_gather_objects((shard, len(skipped)))
        results = [r for rank_results, _ in gathered for r in rank_results]
        unreadable = sum(n for _, n in gathered)
        if dist_info.is_main:
            results.sort(key=lambda r: r["image_id"])  # stable: each image keeps its score order
            for r in results:
                r["file_name"] = data.relative_name(r["image_id"])
            write_json(results, args.dets)
            print(f"{len(data) - unreadable} images, {len(results)} detections -> {args.dets}"
                  + (f" ({unreadable} unreadable, skipped)" if unreadable else ""))

    if args.visualize and dist_info.is_main:
        # runs the model again on these few images: simpler than mapping COCO results back
        with autocast(dist_info.device, args.dtype):
            paths = visualize_dataset(model, data, range(min(args.max_images, len(data))), args.visualize,
                                      dist_info.device, args.score_thr, args.batch_size, font=args.font)
        print(f"{len(paths)} pictures (detections >= {args.score_thr}) -> {args.visualize}")
    distributed.cleanup()


if __name__ == "__main__":
    main()
