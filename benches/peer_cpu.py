#!/usr/bin/env python3
"""PyTorch CPU peer of `advlens bench model` (issue 12).

Builds our three small models exactly (src/nn/arch.rs: layer for layer, same shapes, torchvision
module names) and times the same workloads, in-process, warm-up then median:

  train     forward (train mode) + softmax cross-entropy + backward + Adam(lr 1e-3), batch B
  ifgs      targeted iterative FGS, T steps of eps 1 on the 0..255 scale, eval mode, batch B
  ensemble  one Adam step (lr 5) of the ensemble attack (Eq. 1): small alexnet + vgg16 + resnet18
            at the same width, S sources x T targets rows, lambda * ||x* - x||_2 + sum_i CE,
            clip to [0, 255]

Inputs are random 0..255 images (1x28x28) and random labels, as in advlens. The model's first
step is (x/255 - 0.2860)/0.3530, as in advlens, so input gradients are on the 0..255 scale.

Output: one JSON object per line with the same keys as `advlens bench model --json`'s
workloads (workload, rows, median_s, rows_per_s, samples_s).

PyTorch is not a dependency of the project: install it by hand for measuring
(`pip install torch`, ~4 GB with its nvidia-* wheels; it runs on CPU-only machines).

Usage: python3 benches/peer_cpu.py --model small-vgg16 --width 8 --batch 128 --threads 2
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

MEAN, STD = 0.2860, 0.3530
CLASSES = 10


class Normalise(nn.Module):
    def forward(self, x):
        return (x / 255.0 - MEAN) / STD


def small_alexnet(w, nc=CLASSES):
    features = nn.Sequential(
        nn.Conv2d(1, w, 5, 1, 2), nn.ReLU(), nn.MaxPool2d(2, 2),
        nn.Conv2d(w, 2 * w, 5, 1, 2), nn.ReLU(), nn.MaxPool2d(2, 2),
        nn.Conv2d(2 * w, 4 * w, 3, 1, 1), nn.ReLU(),
        nn.Conv2d(4 * w, 4 * w, 3, 1, 1), nn.ReLU(),
        nn.Conv2d(4 * w, 4 * w, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2, 2),
    )
    classifier = nn.Sequential(
        nn.Dropout(0.5), nn.Linear(4 * w * 9, 16 * w), nn.ReLU(),
        nn.Dropout(0.5), nn.Linear(16 * w, 16 * w), nn.ReLU(),
        nn.Linear(16 * w, nc),
    )
    return nn.Sequential(Normalise(), features, nn.AdaptiveAvgPool2d((3, 3)), nn.Flatten(),
                         classifier)


def small_vgg16(w, nc=CLASSES):
    layers, cin = [], 1
    for m in [1, 1, 0, 2, 2, 0, 4, 4, 4, 0]:
        if m == 0:
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, m * w, 3, 1, 1), nn.ReLU()]
            cin = m * w
    classifier = nn.Sequential(
        nn.Linear(cin * 9, 16 * w), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(16 * w, 16 * w), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(16 * w, nc),
    )
    return nn.Sequential(Normalise(), nn.Sequential(*layers), nn.AdaptiveAvgPool2d((3, 3)),
                         nn.Flatten(), classifier)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, 0, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + (x if self.downsample is None else self.downsample(x))
        return F.relu(out)


def small_resnet18(w, nc=CLASSES):
    layers = [Normalise(), nn.Conv2d(1, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
              nn.MaxPool2d(3, 2, 1)]
    cin = w
    for mult, stride in [(1, 1), (2, 2), (4, 2), (8, 2)]:
        cout = mult * w
        layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(cin, nc)]
    return nn.Sequential(*layers)


MODELS = {"small-alexnet": small_alexnet, "small-vgg16": small_vgg16,
          "small-resnet18": small_resnet18}


def inputs(rows, gen):
    x = torch.randint(0, 256, (rows, 1, 28, 28), generator=gen).float()
    y = torch.randint(0, CLASSES, (rows,), generator=gen)
    return x, y


def timed(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples), samples


def bench_train(a, gen):
    model = MODELS[a.model](a.width).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = inputs(a.batch, gen)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return "train", a.batch, timed(step, a.warmup, a.iters)


def input_grad(model, x, t):
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x), t, reduction="sum")
    (g,) = torch.autograd.grad(loss, x)
    return g


def bench_ifgs(a, gen):
    model = MODELS[a.model](a.width).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x, y = inputs(a.batch, gen)
    t = (y + 1) % CLASSES

    def run():
        cur = x
        for _ in range(a.ifgs_steps):
            g = input_grad(model, cur, t)
            cur = (cur - 1.0 * g.sign()).clamp(0.0, 255.0)
        return cur
    return "ifgs", a.batch, timed(run, a.warmup, a.iters)


def bench_ensemble(a, gen):
    models = [MODELS[m](a.width).eval() for m in ("small-alexnet", "small-vgg16", "small-resnet18")]
    for m in models:
        for p in m.parameters():
            p.requires_grad_(False)
    src, lab = inputs(a.sources, gen)
    x0 = src.repeat_interleave(a.targets, 0)
    tg = torch.cat([(lab[i] + torch.arange(1, a.targets + 1)) % CLASSES
                    for i in range(a.sources)])
    lam = 0.001

    def step():
        # One Adam step from x* = x0 (the first step of the attack; m, v start at 0).
        adv = x0.clone().requires_grad_(True)
        opt = torch.optim.Adam([adv], lr=5.0, betas=(0.9, 0.999), eps=1e-8)
        loss = sum(F.cross_entropy(m(adv), tg, reduction="sum") for m in models)
        d = (adv - x0).flatten(1).norm(dim=1)
        loss = loss + lam * d.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            adv.clamp_(0.0, 255.0)
    return "ensemble", a.sources * a.targets, timed(step, a.warmup, a.iters)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, choices=sorted(MODELS))
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--workloads", default="train,ifgs,ensemble")
    ap.add_argument("--ifgs-steps", type=int, default=10)
    ap.add_argument("--sources", type=int, default=32)
    ap.add_argument("--targets", type=int, default=9)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    fns = {"train": bench_train, "ifgs": bench_ifgs, "ensemble": bench_ensemble}
    for w in a.workloads.split(","):
        name, rows, (med, samples) = fns[w](a, gen)
        print(json.dumps({"peer": f"pytorch {torch.__version__}", "model": a.model,
                          "width": a.width, "workload": name, "rows": rows, "median_s": med,
                          "rows_per_s": rows / med, "samples_s": samples,
                          "threads": torch.get_num_threads()}), flush=True)


if __name__ == "__main__":
    main()
