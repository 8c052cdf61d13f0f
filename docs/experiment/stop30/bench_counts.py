"""How many proposals `make bench`'s random-weight R50-FPN keeps per image (stop 30): the RPN's output after NMS
in training mode (the student's, sampled for the box-head loss) and in evaluation mode (the teacher's), on the
bench's 448x640 inputs. A trained detector keeps up to rpn_proposals = (2000, 1000). From the repository root:
    PYTHONPATH=. python docs/experiment/stop30/bench_counts.py
Stop 30 printed: training mode [411, 423, 405, 417, 419], evaluation mode [326, 324, 317, 325, 325].
"""
import argparse

import torch
import torchvision

from sed import bench


@torch.no_grad()
def main():
    torch.manual_seed(0)   # as sed.bench: the same random weights and inputs
    args = argparse.Namespace(num_classes=80, min_size=448, max_size=640)
    state = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=81).state_dict()
    model = bench.our_model(args, state)
    images, targets = bench.make_inputs(5, 448, 640, torch.device("cpu"))
    batch, _ = model.transform(images, targets)
    features = model.features(batch.tensors)
    objectness, deltas = model.rpn.head(features)
    anchors = model.rpn.anchors(batch, features)
    for mode, training in (("training", True), ("evaluation", False)):
        model.train(training)
        proposals = model.rpn.propose(anchors, objectness, deltas, batch.image_sizes)
        print(f"{mode} mode: proposals per image after NMS {[len(p) for p in proposals]}")


if __name__ == "__main__":
    main()
