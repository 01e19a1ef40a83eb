#!/usr/bin/env python3
"""PyTorch baselines for the workloads of a sparsecube bench suite, on the same shapes.

    sparsecube bench --suite paper --list > suite.json
    python3 benches/torch_baselines.py --suite suite.json --device cuda --out torch.json

Each implementation runs one training step (forward + backward, every trainable tensor's gradient)
per repeat. GPU: timed with CUDA events, the median after warm-up; peak memory is
torch.cuda.max_memory_allocated over one step (inputs and parameters included), the counterpart of
`sparsecube bench`'s peak_bytes. CPU (`--device cpu`, for checking the script with `--scale tiny`
shapes): wall time, no memory figure.

What each workload is compared with (METHODS.md gives the sparse side's semantics):
  attention    torch-eager (softmax(QKᵀ/√D)V, saves the B·H·L·L probabilities) and torch-sdpa
               (F.scaled_dot_product_attention: flash or memory-efficient kernels)
  ffn          torch-dense-ffn: Linear(d_model→d_ff), exact-erf GELU, Linear(d_ff→d_model)
  monarch      torch-monarch-bmm (fly-style: block-diagonal bmm, permutation, block-diagonal bmm)
               and torch-dense-linear (the GEMM Monarch replaces)
  sara-linear  torch-sara-dense-grad: the dense weight gradient, masked to the 10% smallest |W|
               (what SaRA's public code does)
  pst-linear   torch-pst-dense-mask: W' = W + UV, scores |W'| + AB + R1ᵀ + 1Cᵀ, kth-value mask at
               sparsity 0.9 each step, y = x(M⊙W')ᵀ + b, straight-through backward
  spt-layer    torch-full-ft-eager / torch-full-ft-sdpa: one pre-LN transformer layer (attention +
               GELU FFN), every parameter trained: the SPT paper's "full fine-tuning" baseline
"""

import argparse
import json
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


class Step:
    """A training step: `run()` does forward + backward on tensors built once by the factory."""

    def __init__(self, run, tensors):
        self.run = run
        self.tensors = tensors


def randn(shape, dtype, device, grad=False, std=1.0):
    t = torch.randn(*shape, device=device, dtype=torch.float32) * std
    return t.to(dtype).requires_grad_(grad)


def zero_grads(ts):
    for t in ts:
        if isinstance(t, torch.Tensor) and t.grad is not None:
            t.grad = None


# ----- attention ------------------------------------------------------------------------------


def attention_steps(d, dtype, dev):
    b, h, l, hd = d["B"], d["H"], d["L"], d["D"]
    q, k, v = (randn((b, h, l, hd), dtype, dev, grad=True) for _ in range(3))
    dout = randn((b, h, l, hd), dtype, dev)
    scale = 1.0 / math.sqrt(hd)

    def eager():
        s = torch.matmul(q, k.transpose(-1, -2)) * scale
        p = torch.softmax(s.float(), dim=-1).to(dtype)
        o = torch.matmul(p, v)
        o.backward(dout)
        zero_grads((q, k, v))

    def sdpa():
        o = F.scaled_dot_product_attention(q, k, v)
        o.backward(dout)
        zero_grads((q, k, v))

    return {"torch-eager": Step(eager, (q, k, v, dout)), "torch-sdpa": Step(sdpa, (q, k, v, dout))}


# ----- FFN ------------------------------------------------------------------------------------


def ffn_steps(d, dtype, dev):
    t, dm, dff = d["T"], d["d_model"], d["d_ff"]
    x = randn((t, dm), dtype, dev, grad=True)
    w1 = randn((dff, dm), dtype, dev, grad=True, std=dm**-0.5)
    b1 = randn((dff,), dtype, dev, grad=True, std=0.02)
    w2 = randn((dm, dff), dtype, dev, grad=True, std=dff**-0.5)
    b2 = randn((dm,), dtype, dev, grad=True, std=0.02)
    dy = randn((t, dm), dtype, dev)
    params = (x, w1, b1, w2, b2)

    def run():
        y = F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)
        y.backward(dy)
        zero_grads(params)

    return {"torch-dense-ffn": Step(run, params + (dy,))}


# ----- Monarch --------------------------------------------------------------------------------


def monarch_steps(d, dtype, dev):
    t, n, nb = d["T"], d["n"], d["blocks"]
    p = n // nb  # square Monarch: k = l = blocks, q = p = r = s = n / blocks
    x = randn((t, n), dtype, dev, grad=True)
    w1 = randn((nb, p, p), dtype, dev, grad=True, std=p**-0.5)
    w2 = randn((nb, p, p), dtype, dev, grad=True, std=p**-0.5)
    w = randn((n, n), dtype, dev, grad=True, std=n**-0.5)
    dy = randn((t, n), dtype, dev)

    def monarch():
        # fly's blockdiag_butterfly_multiply: bmm over blocks, transpose (k q) -> (r l), bmm again.
        u = torch.bmm(x.reshape(t, nb, p).transpose(0, 1), w1.transpose(-1, -2))  # [k, T, q]
        u = u.transpose(0, 1).reshape(t, p, nb).permute(2, 0, 1)  # (k q) read as (r l): [l, T, r]
        y = torch.bmm(u, w2.transpose(-1, -2))  # [l, T, s]
        y = y.permute(1, 2, 0).reshape(t, n)  # written (s l)-interleaved
        y.backward(dy)
        zero_grads((x, w1, w2))

    def dense():
        y = F.linear(x, w)
        y.backward(dy)
        zero_grads((x, w))

    return {
        "torch-monarch-bmm": Step(monarch, (x, w1, w2, dy)),
        "torch-dense-linear": Step(dense, (x, w, dy)),
    }


# ----- SaRA -----------------------------------------------------------------------------------


def sara_steps(d, dtype, dev):
    t, n_in, n_out = d["T"], d["in"], d["out"]
    x = randn((t, n_in), dtype, dev, grad=True)
    w = randn((n_out, n_in), dtype, dev, grad=True, std=n_in**-0.5)
    bias = randn((n_out,), dtype, dev, grad=True, std=0.02)
    dy = randn((t, n_out), dtype, dev)
    flat = w.detach().abs().float().flatten()
    kth = torch.kthvalue(flat, max(1, int(0.1 * flat.numel()))).values
    mask = (w.detach().abs().float() <= kth).to(dtype)

    def run():
        y = F.linear(x, w, bias)
        y.backward(dy)
        w.grad.mul_(mask)  # the dense gradient exists, then is masked
        zero_grads((x, w, bias))

    return {"torch-sara-dense-grad": Step(run, (x, w, bias, dy, mask))}


# ----- PST ------------------------------------------------------------------------------------


class _Ste(torch.autograd.Function):
    """M ⊙ W' forward; straight-through backward: dW' = dWeff ⊙ M + sign(W') ⊙ dS, dS = dWeff ⊙ W'."""

    @staticmethod
    def forward(ctx, wp, s, sparsity):
        k = int(s.numel() * sparsity)
        if k > 0:
            kth = torch.kthvalue(s.detach().float().flatten(), k).values
            m = (s.detach().float() > kth).to(wp.dtype)
        else:
            m = torch.ones_like(wp)
        ctx.save_for_backward(wp, m)
        return wp * m

    @staticmethod
    def backward(ctx, g):
        wp, m = ctx.saved_tensors
        ds = g * wp
        return g * m + torch.sign(wp) * ds, ds, None


def pst_steps(d, dtype, dev):
    t, n_in, n_out, r = d["T"], d["in"], d["out"], d["rank"]
    x = randn((t, n_in), dtype, dev, grad=True)
    w = randn((n_out, n_in), dtype, dev, std=n_in**-0.5)  # frozen
    bias = randn((n_out,), dtype, dev, grad=True, std=0.02)
    u = randn((n_out, r), dtype, dev, grad=True, std=0.02)
    v = randn((r, n_in), dtype, dev, grad=True, std=0.02)
    a = randn((n_out, r), dtype, dev, grad=True, std=0.02)
    bb = randn((r, n_in), dtype, dev, grad=True, std=0.02)
    rr = randn((n_out,), dtype, dev, grad=True, std=0.02)
    cc = randn((n_in,), dtype, dev, grad=True, std=0.02)
    dy = randn((t, n_out), dtype, dev)
    trained = (x, bias, u, v, a, bb, rr, cc)

    def run():
        wp = w + u @ v
        s = wp.abs() + a @ bb + (rr[:, None] + cc[None, :])
        y = F.linear(x, _Ste.apply(wp, s, 0.9), bias)
        y.backward(dy)
        zero_grads(trained)

    return {"torch-pst-dense-mask": Step(run, trained + (w, dy))}


# ----- one transformer layer, full fine-tuning ------------------------------------------------


def layer_steps(d, dtype, dev):
    b, l, dm, h, dff = d["B"], d["L"], d["d_model"], d["H"], d["d_ff"]
    hd = dm // h

    def lin(o, i):
        return (
            randn((o, i), dtype, dev, grad=True, std=i**-0.5),
            randn((o,), dtype, dev, grad=True, std=0.02),
        )

    wqkv, bqkv = lin(3 * dm, dm)
    wo, bo = lin(dm, dm)
    w1, b1 = lin(dff, dm)
    w2, b2 = lin(dm, dff)
    g1, be1, g2, be2 = (
        torch.ones(dm, device=dev, dtype=dtype, requires_grad=True),
        torch.zeros(dm, device=dev, dtype=dtype, requires_grad=True),
        torch.ones(dm, device=dev, dtype=dtype, requires_grad=True),
        torch.zeros(dm, device=dev, dtype=dtype, requires_grad=True),
    )
    x = randn((b, l, dm), dtype, dev, grad=True)
    dy = randn((b, l, dm), dtype, dev)
    params = (x, wqkv, bqkv, wo, bo, w1, b1, w2, b2, g1, be1, g2, be2)

    def layer(attn):
        def run():
            hdn = F.layer_norm(x, (dm,), g1, be1)
            qkv = F.linear(hdn, wqkv, bqkv).view(b, l, 3, h, hd).permute(2, 0, 3, 1, 4)
            o = attn(qkv[0], qkv[1], qkv[2]).transpose(1, 2).reshape(b, l, dm)
            y1 = x + F.linear(o, wo, bo)
            y = y1 + F.linear(F.gelu(F.linear(F.layer_norm(y1, (dm,), g2, be2), w1, b1)), w2, b2)
            y.backward(dy)
            zero_grads(params)

        return run

    def eager(q, k, v):
        p = torch.softmax((q @ k.transpose(-1, -2)).float() / math.sqrt(hd), dim=-1).to(dtype)
        return p @ v

    return {
        "torch-full-ft-eager": Step(layer(eager), params + (dy,)),
        "torch-full-ft-sdpa": Step(layer(F.scaled_dot_product_attention), params + (dy,)),
    }


# ----- GEMM: the dense linear, forward + backward ---------------------------------------------


def gemm_steps(d, dtype, dev):
    t, n_in, n_out = d["T"], d["in"], d["out"]
    x = randn((t, n_in), dtype, dev, grad=True)
    w = randn((n_out, n_in), dtype, dev, grad=True, std=n_in**-0.5)
    b = randn((n_out,), dtype, dev, grad=True)
    dy = randn((t, n_out), dtype, dev)

    def linear(tf32):
        def run():
            before = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = tf32
            try:
                y = F.linear(x, w, b)
                y.backward(dy)
            finally:
                torch.backends.cuda.matmul.allow_tf32 = before
            zero_grads((x, w, b))

        return run

    steps = {"torch-linear": Step(linear(False), (x, w, b, dy))}
    if dtype == torch.float32:
        steps["torch-linear-tf32"] = Step(linear(True), (x, w, b, dy))
    return steps


FACTORIES = {
    "gemm": gemm_steps,
    "attention": attention_steps,
    "ffn": ffn_steps,
    "monarch": monarch_steps,
    "sara-linear": sara_steps,
    "pst-linear": pst_steps,
    "spt-layer": layer_steps,
}


def measure(step, dev, warmup, repeats):
    """(times in ms, peak bytes or None)."""
    for _ in range(warmup):
        step.run()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step.run()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step.run()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return times, peak
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step.run()
        times.append((time.perf_counter() - t0) * 1e3)
    return times, None


def ceilings(dev):
    """The two measured ceilings of the roofline: device-to-device copy bandwidth (bytes read +
    written per second) and dense matrix-product rates (f32 without TF32, bf16), medians of 10."""

    def median_ms(fn, n=10):
        fn()
        torch.cuda.synchronize()
        ts = []
        for _ in range(n):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            ts.append(a.elapsed_time(b))
        return statistics.median(ts)

    out = {}
    n = 1 << 28  # 1 GiB of f32
    src = torch.randn(n, device=dev)
    dst = torch.empty_like(src)
    out["copy_gb_s"] = 2 * 4 * n / (median_ms(lambda: dst.copy_(src)) * 1e-3) / 1e9
    del src, dst
    m = 8192
    for name, dtype in (("f32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(m, m, device=dev).to(dtype)
        b = torch.randn(m, m, device=dev).to(dtype)
        out[f"matmul_{name}_tflop_s"] = 2 * m**3 / (median_ms(lambda: a @ b) * 1e-3) / 1e12
        del a, b
    torch.cuda.empty_cache()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", required=True, help="JSON from `sparsecube bench --list` (or its results)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--budget-s", type=float, default=240.0, help="skip what is left after this")
    ap.add_argument("--out", help="write the JSON here (else stdout)")
    args = ap.parse_args()

    with open(args.suite) as f:
        suite = json.load(f)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit("torch_baselines: --device cuda but torch.cuda.is_available() is False")
    torch.manual_seed(0)
    # Full-precision f32 products, as the f32 kernels compute (no TF32).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    started = time.monotonic()
    results = []
    measured_ceilings = ceilings(dev) if dev.type == "cuda" else None
    print(json.dumps({"ceilings": measured_ceilings}), file=sys.stderr, flush=True)
    for w in suite["workloads"]:
        factory = FACTORIES.get(w["kind"])
        if factory is None:
            results.append({"workload": w["id"], "impl": "torch", "status": f"no baseline for kind {w['kind']}"})
            continue
        if time.monotonic() - started > args.budget_s:
            results.append({"workload": w["id"], "impl": "torch", "status": "skipped: time budget"})
            continue
        dtype = DTYPES[w["dtype"]]
        try:
            steps = factory(w["dims"], dtype, dev)
        except RuntimeError as e:  # e.g. out of memory
            results.append({"workload": w["id"], "impl": "torch", "status": f"error: {e}"})
            continue
        for name, step in steps.items():
            row = {"workload": w["id"], "impl": name}
            try:
                times, peak = measure(step, dev, args.warmup, args.repeats)
                row.update(
                    status="ok",
                    median_ms=statistics.median(times),
                    min_ms=min(times),
                    max_ms=max(times),
                    repeats=len(times),
                    peak_bytes=peak,
                )
            except RuntimeError as e:
                row["status"] = f"error: {str(e).splitlines()[0]}"
            print(json.dumps(row), file=sys.stderr, flush=True)
            results.append(row)
        del steps
        if dev.type == "cuda":
            torch.cuda.empty_cache()

    doc = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
        "ceilings": measured_ceilings,
        "results": results,
    }
    text = json.dumps(doc, indent=2)
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        import os

        os.replace(tmp, args.out)
    else:
        print(text)


if __name__ == "__main__":
    main()
