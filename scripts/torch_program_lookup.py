#!/usr/bin/env python3
"""PyTorch cross-check of the program task's plateau (paper_notes 2.14): does a plain PyTorch
encoder learn to bind variable names to values where attnlab's does not?

The program distribution of `src/lego/program.rs` (3 variables with random names a..z, literal
initialisation, `--statements` random assignments, 3 prints, mod 10), 30,000 training programs,
500 test programs, and the encoder of `experiments/lego/convolution.toml` (pre-LN
`nn.TransformerEncoderLayer`, d 64, GELU, learned positions, weights ~ N(0, --init-std)), Adam
with a cosine schedule over `--epochs` epochs of batch 64. Prints the mean training loss and the
test accuracy over every print after each epoch. Variants that each remove one suspected
obstacle: `--trace` also supervises the value at every assignment's target name (the local read
LEGO's root clause teaches), `--adjacent` writes `x 3` instead of `x = 3 ;` (associative recall),
`--causal` masks attention to the left.

PyTorch is only the reference here, never a dependency: `scripts/install-bench-peer` installs it
into a venv outside the repository. Usage:
    <venv>/bin/python scripts/torch_program_lookup.py --statements 0 --epochs 6
"""
import argparse
import random

try:
    import torch
    import torch.nn as nn
except ImportError:
    raise SystemExit("torch is not installed: run scripts/install-bench-peer and use its python")

EQ, PLUS, MINUS, SEMI, PRINT, CLS, SEP, PAD = 36, 37, 38, 39, 40, 41, 42, 43
N_VARS, N_PRINTS, MOD, N_TRAIN, N_TEST, BATCH = 3, 3, 10, 30000, 500, 64


def program(r, n_statements, adjacent):
    """Tokens, print positions, printed values, assignment-target positions, assigned values."""
    names = r.sample(range(26), N_VARS)
    vals = [r.randrange(MOD) for _ in range(N_VARS)]
    toks, tpos, tval = [CLS], [], []
    for x in range(N_VARS):
        tpos.append(len(toks))
        tval.append(vals[x])
        toks += [names[x], 26 + vals[x]] if adjacent else [names[x], EQ, 26 + vals[x], SEMI]
    slots = sorted([r.randint(0, n_statements) for _ in range(N_PRINTS - 1)] + [n_statements])
    si, ppos, pval = 0, [], []
    for s in range(n_statements + 1):
        while si < len(slots) and slots[si] == s:
            x = r.randrange(N_VARS)
            toks += [PRINT, names[x]] if adjacent else [PRINT, names[x], SEMI]
            ppos.append(len(toks) - (1 if adjacent else 2))
            pval.append(vals[x])
            si += 1
        if s == n_statements:
            break
        y, z, k = r.randrange(N_VARS), r.randrange(N_VARS), r.randrange(MOD)
        kind, target = r.randrange(6), r.randrange(N_VARS)
        value = [k, vals[y], (vals[y] + k) % MOD, (vals[y] - k) % MOD,
                 (vals[y] + vals[z]) % MOD, (vals[y] - vals[z]) % MOD][kind]
        rhs = [[26 + k], [names[y]], [names[y], PLUS, 26 + k], [names[y], MINUS, 26 + k],
               [names[y], PLUS, names[z]], [names[y], MINUS, names[z]]][kind]
        tpos.append(len(toks))
        tval.append(value)
        toks += [names[target], EQ] + rhs + [SEMI]
        vals[target] = value
    toks.append(SEP)
    return toks, ppos, pval, tpos, tval


def batch(progs):
    t = max(len(p[0]) for p in progs)
    tok = torch.full((len(progs), t), PAD)
    mask = torch.zeros(len(progs), t, dtype=torch.bool)
    for i, p in enumerate(progs):
        tok[i, : len(p[0])] = torch.tensor(p[0])
        mask[i, : len(p[0])] = True
    return (tok, mask) + tuple(torch.tensor([p[j] for p in progs]) for j in range(1, 5))


class Encoder(nn.Module):
    def __init__(self, args):
        super().__init__()
        d = 64
        self.causal = args.causal
        self.emb, self.pos = nn.Embedding(44, d), nn.Embedding(64, d)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(d, args.heads, 128, 0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(args.layers))
        self.ln, self.out = nn.LayerNorm(d), nn.Linear(d, MOD, bias=False)
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, 0.0, args.init_std)

    def forward(self, tok, mask):
        t = tok.shape[1]
        x = self.emb(tok) + self.pos.weight[:t]
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool), 1) if self.causal else None
        for layer in self.layers:
            x = layer(x, src_mask=causal, src_key_padding_mask=~mask)
        return self.out(self.ln(x))


def at(logits, pos):
    return logits.gather(1, pos[:, :, None].expand(-1, -1, MOD))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--statements", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--init-std", type=float, default=0.02)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--trace", action="store_true")
    ap.add_argument("--adjacent", action="store_true")
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    r = random.Random(args.seed)
    train = [program(r, args.statements, args.adjacent) for _ in range(N_TRAIN)]
    test = [program(r, args.statements, args.adjacent) for _ in range(N_TEST)]
    torch.manual_seed(args.seed)
    model = Encoder(args)
    opt = torch.optim.Adam(model.parameters(), args.lr)
    steps = args.epochs * -(-N_TRAIN // BATCH)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    ce = nn.functional.cross_entropy
    for epoch in range(args.epochs):
        order = list(range(N_TRAIN))
        r.shuffle(order)
        total, n = 0.0, 0
        for b0 in range(0, N_TRAIN, BATCH):
            tok, mask, ppos, pval, tpos, tval = batch([train[i] for i in order[b0 : b0 + BATCH]])
            logits = model(tok, mask)
            loss = ce(at(logits, ppos).reshape(-1, MOD), pval.reshape(-1), reduction="sum")
            count = pval.numel()
            if args.trace:
                loss = loss + ce(at(logits, tpos).reshape(-1, MOD), tval.reshape(-1), reduction="sum")
                count += tval.numel()
            loss = loss / count
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total, n = total + loss.item(), n + 1
        model.eval()
        tok, mask, ppos, pval, _, _ = batch(test)
        with torch.no_grad():
            acc = (at(model(tok, mask), ppos).argmax(-1) == pval).float().mean().item()
        model.train()
        print(f"epoch {epoch + 1} loss {total / n:.3f} accuracy {acc:.3f}", flush=True)


if __name__ == "__main__":
    main()
