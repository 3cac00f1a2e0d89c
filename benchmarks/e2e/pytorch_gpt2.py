"""PyTorch reference for kiln's end-to-end benchmark: GPT-2 124M (12 layers, 12 heads, C=768,
vocabulary padded to 50304, tied embedding, tanh GELU, pre-LayerNorm), batch 32 x 1024, bf16
autocast, torch.compile, SDPA causal attention (flash), fused AdamW, synthetic tokens. Prints
tokens/s and MFU with kiln's formula: tokens/s * (6N + 12*L*C*T) / 989e12, N = parameters used in
per-token arithmetic (all but the position table).

Usage: python3 pytorch_gpt2.py [--batch 32] [--seq 1024] [--steps 30] [--warmup 10]
                               [--layers 12 --heads 12 --c 768]   (GPT-2 1.5B: 48, 25, 1600)
"""
import argparse
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, c, h):
        super().__init__()
        self.h = h
        self.ln_1 = nn.LayerNorm(c)
        self.c_attn = nn.Linear(c, 3 * c)
        self.c_proj = nn.Linear(c, c)
        self.ln_2 = nn.LayerNorm(c)
        self.c_fc = nn.Linear(c, 4 * c)
        self.mlp_proj = nn.Linear(4 * c, c)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.h, c // self.h).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT2(nn.Module):
    def __init__(self, vocab=50304, ctx=1024, layers=12, heads=12, c=768):
        super().__init__()
        self.wte = nn.Embedding(vocab, c)
        self.wpe = nn.Embedding(ctx, c)
        self.h = nn.ModuleList(Block(c, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(c)
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx, targets):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
        for blk in self.h:
            x = blk(x)
        logits = self.ln_f(x) @ self.wte.weight.t()
        return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--c", type=int, default=768)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = True
    dev = "cuda"
    model = GPT2(ctx=args.seq, layers=args.layers, heads=args.heads, c=args.c).to(dev)
    n_params = sum(p.numel() for p in model.parameters()) - model.wpe.weight.numel()
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1,
                            fused=True)
    mode = "torch.compile"
    step_fn = torch.compile(model)
    try:  # compile once up front so a failure is reported, then measured eagerly instead
        x = torch.randint(0, 50257, (args.batch, args.seq + 1), device=dev)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            step_fn(x[:, :-1], x[:, 1:]).backward()
        opt.zero_grad(set_to_none=True)
    except Exception as e:  # noqa: BLE001
        import traceback
        print("torch.compile failed:\n" + "".join(traceback.format_exception(e)[-12:]), flush=True)
        mode = "eager (torch.compile failed)"
        step_fn = model
    g = torch.Generator(device=dev).manual_seed(1)
    times = []
    for step in range(args.steps):
        x = torch.randint(0, 50257, (args.batch, args.seq + 1), device=dev, generator=g)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = step_fn(x[:, :-1], x[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss_v = loss.item()
        torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    dt = sorted(times)[len(times) // 2]
    tok_s = args.batch * args.seq / dt
    flops = 6 * n_params + 12 * args.layers * args.c * args.seq
    name = f"GPT-2 {n_params / 1e6:.0f}M" if args.layers == 12 else f"GPT-2 L{args.layers} C{args.c}"
    print(f"pytorch {torch.__version__} ({mode}) {torch.cuda.get_device_name()}: {name} batch "
          f"{args.batch}x{args.seq} bf16: {dt * 1e3:.1f} ms/step, {tok_s:,.0f} tok/s, "
          f"MFU {100 * tok_s * flops / 989e12:.1f}% (last loss {loss_v:.3f}), peak memory "
          f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB allocated, "
          f"{torch.cuda.max_memory_reserved() / 2**20:.0f} MiB reserved")


if __name__ == "__main__":
    main()
