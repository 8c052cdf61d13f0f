"""Speed and memory of our detector against torchvision's, same weights and inputs, one process.

    python -m sed.bench [--device cuda] [--min-size 512] [--batch-size 2] [--repeats 5]

Prints, for a training step (forward + backward) and an inference call, the median time of each
model and the ratio ours / torchvision (target <= 1.0), measured alternately in the same run so
that both see the same machine load, plus the peak memory of each (CUDA: the allocator's peak;
CPU: the growth of the resident size during one step, in a fresh process that holds one model).
"""
import argparse
import multiprocessing
import os
import statistics
import tempfile
import time

import torch
import torchvision

import sed


def build_pair(num_classes, min_size, max_size, device):
    """Our model and torchvision's with the same (random) weights."""
    torch.manual_seed(0)
    theirs = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=num_classes + 1,
        min_size=min_size, max_size=max_size)
    ours = sed.build_model(num_classes, "resnet50", min_size=min_size, max_size=max_size)
    sed.load_torchvision_weights(ours, theirs.state_dict())
    return ours.to(device), theirs.to(device)


def make_inputs(batch_size, height, width, device, seed=0):
    """Random images with a few random boxes each (labels 1..5)."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(batch_size):
        images.append(torch.rand(3, height, width, generator=g).to(device))
        xy = torch.rand(4, 2, generator=g) * torch.tensor([width, height]) * 0.6
        wh = 16 + torch.rand(4, 2, generator=g) * torch.tensor([width, height]) * 0.3
        boxes = torch.cat([xy, xy + wh], dim=1)
        targets.append({"boxes": boxes.to(device), "labels": torch.randint(1, 6, (4,), generator=g).to(device)})
    return images, targets


def train_step(model, images, targets):
    model.train()
    loss = sum(model(images, targets).values())
    loss.backward()
    model.zero_grad(set_to_none=True)


@torch.no_grad()
def inference(model, images, _targets=None):
    model.eval()
    model(images)


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def compare_speed(step, ours, theirs, images, targets, repeats, device):
    """Median seconds of `step` for each model, alternating ours/theirs after one warm-up each."""
    times = {"ours": [], "torchvision": []}
    for i in range(repeats + 1):
        for name, model in (("ours", ours), ("torchvision", theirs)):
            torch.manual_seed(i)  # same anchor/RoI sampling draws for both
            seconds = timed(lambda: step(model, images, targets), device)
            if i > 0:
                times[name].append(seconds)
    return {name: statistics.median(t) for name, t in times.items()}


def peak_memory_cuda(step, model, images, targets):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step(model, images, targets)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def read_status_kib(field):
    """A field of /proc/self/status in KiB (VmRSS: resident now, VmHWM: resident peak)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _cpu_peak_child(state_file, which, step_name, args, queue):
    torch.set_num_threads(args.threads)
    state = torch.load(state_file, weights_only=True)
    if which == "ours":
        model = sed.load_torchvision_weights(
            sed.build_model(args.num_classes, "resnet50", min_size=args.min_size, max_size=args.max_size), state)
    else:
        model = torchvision.models.detection.fasterrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, num_classes=args.num_classes + 1,
            min_size=args.min_size, max_size=args.max_size)
        model.load_state_dict(state)
    del state
    images, targets = make_inputs(args.batch_size, args.height, args.width, "cpu")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # Linux: reset the resident high-water mark (VmHWM) to the current size
    before = read_status_kib("VmRSS")
    STEPS[step_name](model, images, targets)
    queue.put((read_status_kib("VmHWM") - before) * 1024)


def peak_memory_cpu(state_file, which, step_name, args):
    """Peak resident growth (bytes) during one step, in a fresh process holding one model."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=_cpu_peak_child, args=(state_file, which, step_name, args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


STEPS = {"train step": train_step, "inference": inference}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--min-size", type=int, default=480)
    parser.add_argument("--max-size", type=int, default=640)
    parser.add_argument("--num-classes", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    ours, theirs = build_pair(args.num_classes, args.min_size, args.max_size, device)
    images, targets = make_inputs(args.batch_size, args.height, args.width, device)
    print(f"R50-FPN, {args.num_classes} classes, batch {args.batch_size} of {args.height}x{args.width}, "
          f"{device}, torch {torch.__version__}, torchvision {torchvision.__version__}")
    state_file = os.path.join(tempfile.mkdtemp(), "weights.pt")
    torch.save(theirs.state_dict(), state_file)
    for name, step in STEPS.items():
        t = compare_speed(step, ours, theirs, images, targets, args.repeats, device)
        print(f"{name:10s}  time    ours {t['ours'] * 1000:8.1f} ms   torchvision {t['torchvision'] * 1000:8.1f} ms"
              f"   ratio {t['ours'] / t['torchvision']:.3f}", flush=True)
        if device.type == "cuda":
            mem = {"ours": peak_memory_cuda(step, ours, images, targets),
                   "torchvision": peak_memory_cuda(step, theirs, images, targets)}
        else:
            mem = {which: peak_memory_cpu(state_file, which, name, args) for which in ("ours", "torchvision")}
        print(f"{name:10s}  memory  ours {mem['ours'] / 2**20:8.1f} MiB  torchvision {mem['torchvision'] / 2**20:8.1f} MiB"
              f"  ratio {mem['ours'] / max(mem['torchvision'], 1):.3f}", flush=True)
    os.remove(state_file)

if __name__ == "__main__":
    main()
