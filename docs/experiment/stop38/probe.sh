#!/bin/bash
# stop 38 probe: the loss terms of sed_box (weight) and sed_box_count over the first 100 SED iterations, glyphs seed 0
# D: the glyphs folder of the experiment run below (its data and seed0/burn_in.pt)
D=runs/stop38/glyphs-1800/glyphs
cd "$(git rev-parse --show-toplevel)"
for norm in weight count; do
OMP_NUM_THREADS=1 .venv/bin/python train.py --train-ann $D/data/annotations/train.json --train-images $D/data/train --val-ann $D/data/annotations/val.json --val-images $D/data/val --labeled-percent 10 --split-seed 1 --seed 0 --backbone resnet18 --backbone-weights none --trainable-layers 5 --min-size 128 --max-size 256 --anchor-sizes 16 32 64 128 256 --rpn-proposals 256 128 --roi-batch-size 64 --box-head-dim 256 --fpn-channels 64 --batch-size 4 --lr 0.01 --warmup-iters 50 --lr-steps 1500 --grad-clip 10 --eval-every 0 --checkpoint-every 600 --log-every 10 --workers 0 --device cpu --max-iter 700 --out runs/probe38/$norm --resume $D/seed0/burn_in.pt --method sed --unlabeled-batch-size 4 --teacher-proposals 32 --burn-in-iters 600 --rampup-iters 50 --unsup-weight 1 --ema-momentum 0.99 --diagnostics-images 32 --distill-reg-weight 1 --distill-reg-norm $norm --distill --no-hard-pseudo-labels > runs/probe38_$norm.log 2>&1 &
done
wait
