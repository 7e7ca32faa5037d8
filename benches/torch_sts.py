#!/usr/bin/env python3
"""PyTorch reference for `attnlab sts bench`: one gradient-descent step of the exact STS model.

Usage: torch_sts.py --data FILE --t T --d D --de DE --batch B --dtype float32|float64
                    --lr LR --seconds S --threads N
FILE holds the batch attnlab sampled, little-endian f64, one array after the other: x (B, T, d),
p (B, T, d_e), s (B, d_e), target (B, d). Prints one JSON line {"steps_per_sec", "steps",
"loss0"} where loss0 is the loss at the start (W = 0.5 I on the positional block, as attnlab
starts), for checking that both sides take the same step. Exits 3 when torch is missing.

Written as a PyTorch user would: the forward of src/sts/model.rs in tensor ops, the gradient by
autograd, the update by torch.optim.SGD.
"""
import argparse
import json
import sys
import time

try:
    import torch
except ImportError:
    print("torch is not installed for this python: run scripts/install-bench-peer and pass "
          "--python \"$(scripts/install-bench-peer --print-python)\"", file=sys.stderr)
    sys.exit(3)


def main():
    ap = argparse.ArgumentParser()
    for k in ["t", "d", "de", "batch", "threads"]:
        ap.add_argument("--" + k, type=int, required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--dtype", choices=["float32", "float64"], required=True)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--warmup", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dtype = getattr(torch, a.dtype)
    n, t, d, de = a.batch, a.t, a.d, a.de
    with open(a.data, "rb") as f:
        raw = torch.frombuffer(bytearray(f.read()), dtype=torch.float64)
    sizes = [(n, t, d), (n, t, de), (n, de), (n, d)]
    parts, o = [], 0
    for shape in sizes:
        k = 1
        for s in shape:
            k *= s
        parts.append(raw[o:o + k].reshape(shape).to(dtype))
        o += k
    if o != raw.numel():
        sys.exit(f"{a.data}: {raw.numel()} values, expected {o} for these shapes")
    x, p, s, target = parts
    z = torch.cat([x, p], dim=2)  # (B, T, D)

    w = torch.zeros(d + de, d + de, dtype=dtype)
    w[d:, d:] = 0.5 * torch.eye(de, dtype=dtype)
    w.requires_grad_(True)
    opt = torch.optim.SGD([w], lr=a.lr)

    def loss_fn():
        u = s @ w[d:, :]  # (B, D): the query z_0 = [0; s] times W
        alpha = torch.softmax(torch.bmm(z, u.unsqueeze(2)).squeeze(2), dim=1)  # (B, T)
        f = torch.bmm(alpha.unsqueeze(1), x).squeeze(1)  # (B, d)
        return ((f - target) ** 2).sum(1).mean()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        opt.step()
        return loss

    loss0 = step().item()
    for _ in range(a.warmup - 1):
        step()
    k, t0 = 0, time.perf_counter()
    while True:
        step()
        k += 1
        el = time.perf_counter() - t0
        if el >= a.seconds and k >= 3:
            break
    print(json.dumps({"steps_per_sec": k / el, "steps": k, "loss0": loss0,
                      "torch": torch.__version__, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
