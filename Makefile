# One venv for everything; `make test` installs first when .venv is missing or older than the
# requirements, so a fresh clone needs nothing but `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test bench demo experiment clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) build *.egg-info

# Quick start on CPU: synthetic shapes -> supervised ResNet-18 Faster R-CNN -> COCO AP.
# Sizes are make variables: `make demo DEMO_ITERS=1000 DEMO_DEVICE=cuda`.
DEMO_DATA ?= data/synthetic
DEMO_OUT ?= runs/demo
DEMO_TRAIN ?= 100
DEMO_VAL ?= 30
DEMO_SIZE ?= 96
DEMO_ITERS ?= 100
DEMO_BATCH ?= 2
DEMO_LR ?= 0.01
DEMO_WORKERS ?= 2
DEMO_DEVICE ?= cpu

demo: $(STAMP)
	$(PY) -m sed.synthetic $(DEMO_DATA) --num-train $(DEMO_TRAIN) --num-val $(DEMO_VAL) --seed 0 \
		--image-size $(DEMO_SIZE)
	$(PY) train.py --train-ann $(DEMO_DATA)/annotations/train.json --train-images $(DEMO_DATA)/train \
		--backbone resnet18 --backbone-weights none --min-size $(DEMO_SIZE) --max-size $$(( $(DEMO_SIZE) * 2 )) \
		--max-iter $(DEMO_ITERS) --batch-size $(DEMO_BATCH) --lr $(DEMO_LR) \
		--warmup-iters $$(( $(DEMO_ITERS) / 10 )) --lr-steps $$(( $(DEMO_ITERS) * 3 / 4 )) \
		--checkpoint-every $(DEMO_ITERS) --log-every 10 --workers $(DEMO_WORKERS) \
		--device $(DEMO_DEVICE) --out $(DEMO_OUT)
	$(PY) eval.py --ckpt $(DEMO_OUT)/last.pt --val-ann $(DEMO_DATA)/annotations/val.json \
		--val-images $(DEMO_DATA)/val --device $(DEMO_DEVICE) --workers $(DEMO_WORKERS) \
		--json $(DEMO_OUT)/val_metrics.json --dets $(DEMO_OUT)/val_detections.json

bench: $(STAMP)
	$(PY) -m sed.bench
