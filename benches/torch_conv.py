#!/usr/bin/env python3
"""PyTorch + cuDNN twin of `advlens bench conv`, for the GPU box.

Times forward, backward-data and backward-filter of every conv layer of an ImageNet-size
torchvision model (vgg16, resnet18, alexnet) with the same method as advlens: fp32 NCHW, random
inputs, `--warmup` unmeasured runs, then the median of `--iters` runs, each timed with CUDA events
around the one call. cuDNN picks its algorithms by running them
(torch.backends.cudnn.benchmark = True, the same choice rule as advlens' cudnnFind baseline).

Two sets of figures: TF32 disabled (plain fp32 FMA, the fair comparison with advlens' kernels)
and, unless --no-tf32, TF32 enabled (what a default PyTorch training run may use).

The layer list comes from the model itself: forward hooks on every nn.Conv2d of the torchvision
model record the input shape of each call (downsample convs included). With
--advlens-json REPORT the list is taken from an `advlens bench conv --json` report instead,
so both tools time exactly the same shapes.

Prints JSON with the same shape as `advlens bench conv --json` (torch figures under "ours",
"baseline" null), plus "tf32": {"layers": [...], "totals": {...}}.

    python3 benches/torch_conv.py --net resnet18 --batch 32 > torch_resnet18.json
"""

import argparse
import json
import math
import statistics
import subprocess
import sys

H100_FP32_PEAK_TFLOPS = 67.0


def commit():
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def out_dim(x, k, stride, pad):
    return (x + 2 * pad - k) // stride + 1


def layers_from_torchvision(net, batch, size):
    import torch
    import torchvision

    model = getattr(torchvision.models, net)(weights=None)
    found = []

    def hook(name):
        def f(mod, inputs, _output):
            n, c, h, w = inputs[0].shape
            k, _, r, _ = mod.weight.shape
            s, p = mod.stride[0], mod.padding[0]
            found.append(
                dict(name=name, n=n, c=c, h=h, w=w, k=k, r=r, stride=s, pad=p,
                     p=out_dim(h, r, s, p), q=out_dim(w, r, s, p))
            )
        return f

    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Conv2d):
            mod.register_forward_hook(hook(name))
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    for layer in found:
        layer["n"] = batch
    return found


def layers_from_advlens(path):
    with open(path) as f:
        report = json.load(f)
    return [entry["layer"] for entry in report["layers"]]


def flops(layer):
    l = layer
    return 2.0 * l["n"] * l["k"] * l["c"] * l["r"] * l["r"] * l["p"] * l["q"]


def shape_label(l):
    return "N{n} C{c} {h}x{w} K{k} {r}x{r} s{stride} p{pad}".format(**l)


def median_ms(fn, warmup, iters):
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def figure(ms, fl):
    rate = fl / (ms * 1e-3) if ms > 0 else 0.0
    return dict(ms=ms, gflops=rate / 1e9, tflops=rate / 1e12)


def op_result(fl, ms, peak):
    floor_s = fl / (peak * 1e12)
    return dict(
        gflop=fl / 1e9,
        ours=figure(ms, fl),
        baseline=None,
        time_ratio=None,
        speed_vs_baseline=None,
        peak_fraction=floor_s / (ms * 1e-3) if ms > 0 else None,
        floor_ms=floor_s * 1e3,
    )


def time_layers(layers, warmup, iters, peak, seed):
    import torch

    conv_bwd = torch.ops.aten.convolution_backward
    torch.manual_seed(seed)
    out = []
    sums = [0.0, 0.0, 0.0]
    total_flops = 0.0
    for l in layers:
        dev = "cuda"
        x = torch.rand(l["n"], l["c"], l["h"], l["w"], device=dev) * 2 - 1
        w = torch.rand(l["k"], l["c"], l["r"], l["r"], device=dev) * 2 - 1
        dy = torch.rand(l["n"], l["k"], l["p"], l["q"], device=dev) * 2 - 1
        st, pd = [l["stride"]] * 2, [l["pad"]] * 2

        def fwd():
            torch.nn.functional.conv2d(x, w, None, st, pd)

        # aten.convolution_backward is what autograd calls; the output mask selects one pass.
        def bwd_data():
            conv_bwd(dy, x, w, None, st, pd, [1, 1], False, [0, 0], 1, [True, False, False])

        def bwd_filter():
            conv_bwd(dy, x, w, None, st, pd, [1, 1], False, [0, 0], 1, [False, True, False])

        ms = [median_ms(f, warmup, iters) for f in (fwd, bwd_data, bwd_filter)]
        fl = flops(l)
        total_flops += fl
        for i in range(3):
            sums[i] += ms[i]
        out.append(
            dict(
                layer=l,
                shape=shape_label(l),
                forward=op_result(fl, ms[0], peak),
                backward_data=op_result(fl, ms[1], peak),
                backward_filter=op_result(fl, ms[2], peak),
            )
        )
        del x, w, dy
    totals = dict(
        forward=op_result(total_flops, sums[0], peak),
        backward_data=op_result(total_flops, sums[1], peak),
        backward_filter=op_result(total_flops, sums[2], peak),
        all=op_result(3 * total_flops, sum(sums), peak),
    )
    return out, totals


def set_tf32(on):
    import torch

    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--net", required=True, choices=["vgg16", "resnet18", "alexnet"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--input", type=int, default=224)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--layers", default="", help="comma-separated conv layer names")
    ap.add_argument("--peak-tflops", type=float, default=H100_FP32_PEAK_TFLOPS)
    ap.add_argument("--advlens-json", help="take the layer list from an advlens bench report")
    ap.add_argument("--no-tf32", action="store_true", help="skip the TF32-enabled figures")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.iters < 1 or a.batch < 1 or not math.isfinite(a.peak_tflops) or a.peak_tflops <= 0:
        sys.exit("torch_conv.py: --iters and --batch must be >= 1, --peak-tflops > 0")

    import torch

    if not torch.cuda.is_available():
        sys.exit("torch_conv.py: no CUDA device visible to PyTorch")
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.enabled = True

    if a.advlens_json:
        layers = layers_from_advlens(a.advlens_json)
    else:
        layers = layers_from_torchvision(a.net, a.batch, a.input)
    if a.layers:
        want = a.layers.split(",")
        names = [l["name"] for l in layers]
        unknown = [n for n in want if n not in names]
        if unknown:
            sys.exit("torch_conv.py: unknown layer(s) %s; known: %s" % (unknown, names))
        layers = [l for l in layers if l["name"] in want]

    set_tf32(False)
    fp32_layers, fp32_totals = time_layers(layers, a.warmup, a.iters, a.peak_tflops, a.seed)
    report = dict(
        bench="conv",
        tool="pytorch",
        net=a.net,
        input=a.input,
        batch=layers[0]["n"] if layers else a.batch,
        dtype="f32",
        device="cuda:%d" % torch.cuda.current_device(),
        device_name=torch.cuda.get_device_name(),
        commit=commit(),
        warmup=a.warmup,
        iters=a.iters,
        timing="median of `iters` runs after `warmup` runs, CUDA events around each call",
        flop_count="2*N*K*C*R*R*P*Q per pass (multiply-add = 2 FLOPs)",
        baseline="none (these figures are the cuDNN side)",
        baseline_unavailable=None,
        peak_tflops=a.peak_tflops,
        peak_assumption="assumed peak: NVIDIA H100 SXM5 fp32 non-tensor-core, 67 TFLOP/s"
        if a.peak_tflops == H100_FP32_PEAK_TFLOPS
        else "peak given with --peak-tflops",
        torch_version=torch.__version__,
        cudnn_version=torch.backends.cudnn.version(),
        math="fp32 (allow_tf32 = False)",
        layers=fp32_layers,
        totals=fp32_totals,
    )
    if not a.no_tf32:
        set_tf32(True)
        tl, tt = time_layers(layers, a.warmup, a.iters, a.peak_tflops, a.seed)
        report["tf32"] = dict(math="tf32 (allow_tf32 = True)", layers=tl, totals=tt)
        set_tf32(False)
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
