"""Write the golden fixtures of `advlens op` from an independent float64 reference (JAX).

Run from the repository root (needs jax, numpy and the safetensors Python package; CPU only):

    python3 scripts/make_golden.py            # rewrites tests/fixtures/golden/

Each case is a pair of files in tests/fixtures/golden/:
    <case>.in.safetensors   the op's named input tensors, f32 (integer labels as i64 or u8);
                            __metadata__ holds "op" (DESIGN section 5 name) and "attrs" (JSON:
                            stride/pad/kernel/eps/lo/hi as `advlens op` flags)
    <case>.out.safetensors  the expected outputs under the op's output names, float64, computed in
                            float64 from the very f32 values stored in the input file
tests/golden_ops.rs runs every case through the engine (library and binary) and compares at
relative error 1e-4. The generator is seeded, so rerunning it reproduces the same files.
"""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from safetensors.numpy import save_file

jax.config.update("jax_enable_x64", True)

OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "golden")
RNG = np.random.default_rng(20240607)


def f32(a):
    return np.ascontiguousarray(np.asarray(a, dtype=np.float32))


def randn(*shape):
    return f32(RNG.standard_normal(shape))


def distinct(*shape):
    """f32 values with no ties (a shuffled grid plus jitter smaller than the grid step), so the
    max-pool argmax, and hence its gradient, is unique."""
    n = int(np.prod(shape))
    grid = RNG.permutation(n).astype(np.float64) * 0.01 - n * 0.005
    return f32((grid + RNG.uniform(0, 0.004, n)).reshape(shape))


def f64(a):
    return jnp.asarray(np.asarray(a, dtype=np.float64))


def write(case, op, inputs, outputs, attrs=None):
    meta = {"op": op, "attrs": json.dumps(attrs or {}), "reference": "jax float64"}
    save_file(inputs, os.path.join(OUT_DIR, f"{case}.in.safetensors"), metadata=meta)
    outs = {k: np.ascontiguousarray(np.asarray(v, dtype=np.float64)) for k, v in outputs.items()}
    save_file(outs, os.path.join(OUT_DIR, f"{case}.out.safetensors"), metadata=meta)


def conv(x, w, b, stride, pad):
    y = lax.conv_general_dilated(
        x, w, window_strides=(stride, stride), padding=[(pad, pad), (pad, pad)],
        dimension_numbers=("NCHW", "OIHW", "NCHW"), precision=lax.Precision.HIGHEST)
    return y + b[None, :, None, None]


def maxpool(x, k, stride, pad):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 1, k, k), (1, 1, stride, stride),
                             [(0, 0), (0, 0), (pad, pad), (pad, pad)])


def conv_cases():
    # (name, N, C, H, W, K, R, stride, pad)
    cases = [
        ("b1_s2p1_odd", 1, 3, 7, 5, 4, 3, 2, 1),
        ("s1p1_prime", 3, 2, 11, 13, 5, 3, 1, 1),
        ("1x1", 2, 5, 6, 7, 3, 1, 1, 0),
        ("1x1_s2", 2, 4, 7, 7, 3, 1, 2, 0),
        ("r5_s3p2", 2, 3, 9, 8, 2, 5, 3, 2),
        ("stem7_s2p3", 1, 3, 13, 13, 4, 7, 2, 3),
        ("stem11_s4p2", 1, 3, 23, 23, 2, 11, 4, 2),
        ("c1_k1", 1, 1, 5, 3, 1, 3, 1, 1),
    ]
    for name, n, c, h, w, k, r, s, p in cases:
        x, wt, b = randn(n, c, h, w), randn(k, c, r, r), randn(k)
        attrs = {"stride": s, "pad": p}
        y, vjp = jax.vjp(lambda x_, w_, b_: conv(x_, w_, b_, s, p), f64(x), f64(wt), f64(b))
        write(f"conv2d_{name}", "conv2d", {"x": x, "w": wt, "b": b}, {"y": y}, attrs)
        dy = randn(*y.shape)
        dx, dw, db = vjp(f64(dy))
        write(f"conv2d_backward_{name}", "conv2d_backward", {"x": x, "w": wt, "dy": dy},
              {"dx": dx, "dw": dw, "db": db}, attrs)


def pool_cases():
    # (name, N, C, H, W, kernel, stride, pad)
    cases = [
        ("k3s2p1", 2, 3, 9, 7, 3, 2, 1),
        ("k3s2p1_b1_even", 1, 2, 8, 8, 3, 2, 1),
        ("k2s2_odd", 1, 2, 7, 5, 2, 2, 0),
        ("k3s2_alexnet", 1, 2, 13, 13, 3, 2, 0),
        ("k3s1p1", 2, 1, 5, 6, 3, 1, 1),
    ]
    for name, n, c, h, w, k, s, p in cases:
        x = distinct(n, c, h, w)
        attrs = {"kernel": k, "stride": s, "pad": p}
        y, vjp = jax.vjp(lambda x_: maxpool(x_, k, s, p), f64(x))
        write(f"maxpool2d_{name}", "maxpool2d", {"x": x}, {"y": y}, attrs)
        dy = randn(*y.shape)
        (dx,) = vjp(f64(dy))
        write(f"maxpool2d_backward_{name}", "maxpool2d_backward", {"x": x, "dy": dy},
              {"dx": dx}, attrs)


def linear_cases():
    for name, n, i, o in [("b1", 1, 7, 3), ("prime", 5, 13, 11), ("i1", 4, 1, 2), ("wide", 3, 64, 10)]:
        x, w, b = randn(n, i), randn(o, i), randn(o)
        y, vjp = jax.vjp(lambda x_, w_, b_: x_ @ w_.T + b_, f64(x), f64(w), f64(b))
        write(f"linear_{name}", "linear", {"x": x, "w": w, "b": b}, {"y": y})
        dy = randn(n, o)
        dx, dw, db = vjp(f64(dy))
        write(f"linear_backward_{name}", "linear_backward", {"x": x, "w": w, "dy": dy},
              {"dx": dx, "dw": dw, "db": db})


def xent_cases():
    for name, n, k, shift, spread in [("prime", 5, 7, 0.0, 1.0), ("b1", 1, 10, 0.0, 3.0),
                                      ("large", 4, 9, 80.0, 20.0)]:
        logits = f32(RNG.standard_normal((n, k)) * spread + shift)
        labels = RNG.integers(0, k, n).astype(np.int64)

        def loss_fn(z):
            return -jnp.take_along_axis(jax.nn.log_softmax(z, axis=1), jnp.asarray(labels)[:, None], 1)[:, 0]

        z = f64(logits)
        loss = loss_fn(z)
        # The per-sample gradient: row r of the Jacobian of loss[r] (= d sum(loss) / dz).
        dlogits = jax.grad(lambda z_: loss_fn(z_).sum())(z)
        write(f"softmax_xent_{name}", "softmax_xent", {"logits": logits, "labels": labels},
              {"loss": loss, "dlogits": dlogits})


def fgs_cases():
    x = f32(RNG.uniform(0, 255, (2, 1, 5, 7)).round())
    g = randn(2, 1, 5, 7)
    g.flat[::5] = 0.0  # sign(0) = 0 must leave those pixels alone
    for name, eps, lo, hi in [("eps5_clip", 5.0, 0.0, 255.0), ("ascent_eps1", -1.0, 0.0, 255.0),
                              ("tight", 0.75, 100.0, 150.0)]:
        ref = np.clip(np.float64(x) - eps * np.sign(np.float64(g)), lo, hi)
        write(f"fgs_step_{name}", "fgs_step", {"x": x, "grad": g}, {"x_next": ref},
              {"eps": eps, "lo": lo, "hi": hi})


def quadform_cases():
    for name, n, k in [("prime", 6, 5), ("b1", 1, 10), ("k13", 4, 13)]:
        a = RNG.standard_normal((k, k))
        c = f32(a @ a.T / k + 0.1 * np.eye(k))
        p = f32(jax.nn.softmax(f64(RNG.standard_normal((n, k)) * 2), axis=1))
        q = f32(jax.nn.softmax(f64(RNG.standard_normal((n, k)) * 2), axis=1))
        if n > 1:
            p[1] = 0.0  # a zero norm: cos must be 0
        pd, cd, qd = np.float64(p), np.float64(c), np.float64(q)
        pcq = np.einsum("ni,ij,nj->n", pd, cd, qd)
        pcp = np.einsum("ni,ij,nj->n", pd, cd, pd)
        qcq = np.einsum("ni,ij,nj->n", qd, cd, qd)
        den = np.sqrt(pcp * qcq)
        cos = np.where(den > 0, pcq / np.where(den > 0, den, 1.0), 0.0)
        write(f"quadform_{name}", "quadform", {"p": p, "c": c, "q": q},
              {"pcq": pcq, "pcp": pcp, "qcq": qcq, "cos": cos})


def roc_cases():
    for name, n, dtype in [("ties_u8", 50, np.uint8), ("i64", 37, np.int64)]:
        labels = RNG.integers(0, 2, n).astype(dtype)
        labels[0], labels[1] = 0, 1
        # Scores rounded to a coarse grid so that ties occur, positives shifted up a little.
        scores = f32(np.round(RNG.standard_normal(n) + 0.8 * labels, 1))
        s, y = np.float64(scores), labels.astype(np.int64)
        pos, neg = s[y == 1], s[y == 0]
        # Mann-Whitney U with ties counted 1/2, by direct pairwise comparison.
        u = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
        auc = np.array([u / (len(pos) * len(neg))])
        write(f"roc_auc_{name}", "roc_auc", {"scores": scores, "labels": labels}, {"auc": auc})


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    for old in os.listdir(OUT_DIR):
        if old.endswith(".safetensors"):
            os.remove(os.path.join(OUT_DIR, old))
    conv_cases()
    pool_cases()
    linear_cases()
    xent_cases()
    fgs_cases()
    quadform_cases()
    roc_cases()
    files = sorted(os.listdir(OUT_DIR))
    size = sum(os.path.getsize(os.path.join(OUT_DIR, f)) for f in files)
    print(f"wrote {len(files)} files ({size / 1024:.0f} KiB) to {os.path.normpath(OUT_DIR)}", file=sys.stderr)


if __name__ == "__main__":
    main()
