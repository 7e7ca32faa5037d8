#!/usr/bin/env python3
"""PyTorch references for `attnlab bench`: the same transformer, data shapes and optimiser on the CPU.

Usage: torch_reference.py --config '<json>' --seconds S --threads N [--model mirror|idiomatic|both]
Prints one JSON line {"mirror": {"steps_per_sec": ..., "steps": ..., "loss": ...},
"idiomatic": {...}, "torch": version, "threads": n}. Exits 3 with a message on stderr when torch
is not installed (`scripts/install-bench-peer` installs it into a venv outside the repository).

Two models, timed one after the other in the same process:

- mirror: attnlab::nn::Transformer written out by hand: token + learned position embedding,
  pre-LN blocks with one fused q/k/v projection, explicit softmax attention (probabilities
  materialised, as attnlab does to capture them), exact GELU FFN, final LayerNorm, untied output
  projection.
- idiomatic: what a PyTorch user writes for the same shapes: the same embeddings, head and final
  LayerNorm around an `nn.TransformerEncoder` stack of `nn.TransformerEncoderLayer(batch_first=True,
  norm_first=True, activation="gelu", dropout=0)`, whose attention goes through
  `F.scaled_dot_product_attention`; the decoder config passes a causal mask with `is_causal=True`.

Both train with AdamW, weight decay on matrices and embeddings only, on one fixed random batch.
"""
import argparse
import json
import math
import sys
import time

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:
    print("torch is not installed for this python: run scripts/install-bench-peer and pass "
          "--python \"$(scripts/install-bench-peer --print-python)\"", file=sys.stderr)
    sys.exit(3)


class Block(nn.Module):
    def __init__(self, d, h, ff, causal):
        super().__init__()
        self.h, self.causal = h, causal
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ff1, self.ff2 = nn.Linear(d, ff), nn.Linear(ff, d)

    def forward(self, x, bias):
        b, t, d = x.shape
        dh = d // self.h
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.reshape(b, t, self.h, dh).transpose(1, 2) for z in (q, k, v))
        s = (q * (1.0 / math.sqrt(dh))) @ k.transpose(-1, -2)
        if bias is not None:
            s = s + bias
        p = torch.softmax(s, dim=-1)
        a = (p @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.out(a)
        return x + self.ff2(F.gelu(self.ff1(self.ln2(x))))


def init_like_attnlab(model):
    for n, p in model.named_parameters():
        if p.dim() >= 2:
            nn.init.normal_(p, std=0.02)
        elif n.endswith("bias"):
            nn.init.zeros_(p)


class Mirror(nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c["d_model"]
        ff = c["d_ff"] or 4 * d
        self.causal = c["causal"]
        self.tok = nn.Embedding(c["vocab_size"], d)
        self.pos = nn.Parameter(torch.zeros(c["max_len"], d))
        self.blocks = nn.ModuleList(Block(d, c["n_heads"], ff, c["causal"]) for _ in range(c["n_layers"]))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, c["n_out"] or c["vocab_size"], bias=False)
        init_like_attnlab(self)

    def forward(self, tokens):
        t = tokens.shape[1]
        x = self.tok(tokens) + self.pos[:t]
        bias = None
        if self.causal:
            bias = torch.full((t, t), -1e9).triu(1)
        for blk in self.blocks:
            x = blk(x, bias)
        return self.head(self.ln_f(x))


class Idiomatic(nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c["d_model"]
        ff = c["d_ff"] or 4 * d
        self.causal = c["causal"]
        self.tok = nn.Embedding(c["vocab_size"], d)
        self.pos = nn.Parameter(torch.zeros(c["max_len"], d))
        layer = nn.TransformerEncoderLayer(d, c["n_heads"], dim_feedforward=ff, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        # enable_nested_tensor only matters for padding masks; off to silence its warning.
        self.encoder = nn.TransformerEncoder(layer, c["n_layers"], enable_nested_tensor=False)
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, c["n_out"] or c["vocab_size"], bias=False)
        init_like_attnlab(self)

    def forward(self, tokens):
        t = tokens.shape[1]
        x = self.tok(tokens) + self.pos[:t]
        if self.causal:
            mask = nn.Transformer.generate_square_subsequent_mask(t)
            x = self.encoder(x, mask=mask, is_causal=True)
        else:
            x = self.encoder(x)
        return self.head(self.ln_f(x))


def time_model(model, c, seconds, warmup):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": c["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=c["lr"])
    g = torch.Generator().manual_seed(1)
    vocab, n_out = c["model"]["vocab_size"], c["model"]["n_out"] or c["model"]["vocab_size"]
    x = torch.randint(0, vocab, (c["batch"], c["seq"]), generator=g)
    y = torch.randint(0, n_out, (c["batch"], c["seq"]), generator=g)

    def step():
        opt.zero_grad(set_to_none=True)
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(warmup):
        step()
    n, t0 = 0, time.perf_counter()
    while True:
        loss = step()
        n += 1
        el = time.perf_counter() - t0
        if el >= seconds and n >= 3:
            break
    return {"steps_per_sec": n / el, "steps": n, "loss": loss}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--model", choices=["mirror", "idiomatic", "both"], default="both")
    a = ap.parse_args()
    c = json.loads(a.config)
    torch.set_num_threads(a.threads)
    out = {}
    for name, cls in [("mirror", Mirror), ("idiomatic", Idiomatic)]:
        if a.model in (name, "both"):
            torch.manual_seed(0)
            out[name] = time_model(cls(c["model"]), c, a.seconds, a.warmup)
    out["torch"] = torch.__version__
    out["threads"] = torch.get_num_threads()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
