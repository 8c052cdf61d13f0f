# One venv for everything; `make test` installs first when .venv is missing or older than the
# requirements, so a fresh clone needs nothing but `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test bench demo experiment clean gpu-check

install: $(STAMP)

$(STAMP): requirements.txt requirements-optional.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-optional.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) build *.egg-info

# Quick start: synthetic shapes, 10 % labeled -> SED with a ResNet-18 Faster R-CNN trained from
# scratch (supervised burn-in, then SED) -> COCO AP of the teacher, pictures and curves.
# The "easy" family (three large shapes, no clutter) at 64 px, so that a detector trained from
# scratch on 2 CPU cores finds most objects within the 10 minutes; SED settings and lr step rule as the
# experiment's (x0.1 after 3/4 of the iterations that follow the burn-in).
# Sizes are make variables: `make demo DEMO_ITERS=2000 DEMO_BURN_IN=1000 DEMO_DEVICE=cuda`.
DEMO_DATA ?= data/demo
DEMO_OUT ?= runs/demo
DEMO_FAMILY ?= easy
DEMO_TRAIN ?= 800
DEMO_VAL ?= 100
DEMO_SIZE ?= 64
DEMO_BURN_IN ?= 500
DEMO_ITERS ?= 700
DEMO_WORKERS ?= 0
DEMO_DEVICE ?= cpu

demo: $(STAMP)
	$(PY) -m sed.synthetic $(DEMO_DATA) --num-train $(DEMO_TRAIN) --num-val $(DEMO_VAL) --seed 0 \
		--image-size $(DEMO_SIZE) --height-ratios 1 --family $(DEMO_FAMILY)
	rm -rf $(DEMO_OUT)   # each demo starts anew (train.py refuses an --out that holds a run)
	$(PY) train.py --method sed --labeled-percent 10 --split-seed 1 \
		--train-ann $(DEMO_DATA)/annotations/train.json --train-images $(DEMO_DATA)/train \
		--val-ann $(DEMO_DATA)/annotations/val.json --val-images $(DEMO_DATA)/val \
		--backbone resnet18 --backbone-weights none --trainable-layers 5 \
		--min-size $(DEMO_SIZE) --max-size $$(( $(DEMO_SIZE) * 2 )) --anchor-sizes 16 32 64 128 256 \
		--rpn-proposals 256 128 --roi-batch-size 64 --box-head-dim 256 --fpn-channels 64 \
		--teacher-proposals 32 --max-iter $(DEMO_ITERS) --batch-size 4 --unlabeled-batch-size 4 --lr 0.01 --grad-clip 10 \
		--warmup-iters 50 --lr-steps $$(( $(DEMO_BURN_IN) + ($(DEMO_ITERS) - $(DEMO_BURN_IN)) * 3 / 4 )) --burn-in-iters $(DEMO_BURN_IN) \
		--rampup-iters 50 --unsup-weight 1 --ema-momentum 0.99 --diagnostics-images 32 --eval-every 0 \
		--checkpoint-every 100 --log-every 10 --workers $(DEMO_WORKERS) --device $(DEMO_DEVICE) \
		--out $(DEMO_OUT)
	$(PY) eval.py --ckpt $(DEMO_OUT)/last.pt --val-ann $(DEMO_DATA)/annotations/val.json \
		--val-images $(DEMO_DATA)/val --device $(DEMO_DEVICE) --workers $(DEMO_WORKERS) \
		--json $(DEMO_OUT)/val_metrics.json --dets $(DEMO_OUT)/val_detections.json \
		--visualize $(DEMO_OUT)/pictures --max-images 8 --score-thr 0.5
	$(PY) -m sed.plot $(DEMO_OUT)

# The README's ablation, in order of importance: the main rows on the shapes over 3 seeds (sed: Figure 1;
# sed_hard_no_distill: train.py's default since stop 26; sed_hard: stops 19-25's), a held-out family, then
# the intermediate rows of both chains (soft instead of hard labels; on top of hard labels) and the
# --scale-target variants (the others: --rows).
experiment: $(STAMP)
	$(PY) -m sed.experiment --family shapes --rows supervised teacher_student sed sed_hard sed_hard_no_distill --seeds 0 1 2
	$(PY) -m sed.experiment --family rings --rows supervised teacher_student sed sed_hard sed_hard_no_distill --seeds 0
	$(PY) -m sed.experiment --family shapes --rows +distill +scale ts+distill ts+scale sed_mutual sed_teacher --seeds 0

bench: $(STAMP)
	$(PY) -m sed.bench

# Everything GPU-specific in one command, on a GPU machine (README "GPU check"). It uses that
# machine's own python, not .venv (torch >= 2.11 preinstalled; no internet needed): pycocotools
# (and tqdm) come as wheels, `PYCOCOTOOLS_WHEEL=path.whl` or any *.whl in ./wheels, installed into
# build/gpu-check/site only. `make gpu-check PYTHON=/path/to/python` picks another interpreter.
PYCOCOTOOLS_WHEEL ?=
gpu-check:
	@$(PYTHON) -c "import torch" 2>/dev/null || { echo "error: $(PYTHON) cannot import torch: give the python \
	that has it, e.g. make gpu-check PYTHON=/opt/conda/bin/python"; exit 1; }
	$(PYTHON) -m sed.gpu_check --python $(PYTHON) $(if $(PYCOCOTOOLS_WHEEL),--wheel $(PYCOCOTOOLS_WHEEL))
