"""PyTorch reference for kiln's Llama 1B benchmark (benchmarks/e2e/llama-1b-bench.textproto): the
llama-1b preset's model (TinyLlama-1.1B shape: 22 layers, 32 heads, 4 KV heads, C 2048, SwiGLU
5632, vocabulary 32000, RMSNorm eps 1e-5, RoPE theta 10000, untied head, no biases; separate q, k,
v, o, gate, up and down projections as kiln has them), bf16 autocast, torch.compile, SDPA causal
attention with grouped KV heads, fused AdamW, synthetic tokens. Prints tokens/s and MFU with
kiln's formula: tokens/s * (6N + 12*L*C*T) / 989e12, N = parameters used in per-token arithmetic
(all but the embedding table).

Usage: python3 pytorch_llama.py [--batch 8] [--seq 2048] [--steps 20] [--warmup 8]
"""
import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

L, H, KV, C, FF, V, THETA = 22, 32, 4, 2048, 5632, 32000, 10000.0


def rope_tables(t, d, dev):
    inv = 1.0 / (THETA ** (torch.arange(0, d, 2, device=dev, dtype=torch.float32) / d))
    ang = torch.outer(torch.arange(t, device=dev, dtype=torch.float32), inv)
    return ang.cos(), ang.sin()  # (T, D/2)


def rotate(x, cos, sin):  # x (B, H, T, D), rotate-half convention
    x1, x2 = x.chunk(2, dim=-1)
    c = torch.cat((cos, cos), -1).to(x.dtype)
    s = torch.cat((sin, sin), -1).to(x.dtype)
    return x * c + torch.cat((-x2, x1), -1) * s


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        d = C // H
        self.input_layernorm = nn.RMSNorm(C, eps=1e-5)
        self.q_proj = nn.Linear(C, H * d, bias=False)
        self.k_proj = nn.Linear(C, KV * d, bias=False)
        self.v_proj = nn.Linear(C, KV * d, bias=False)
        self.o_proj = nn.Linear(H * d, C, bias=False)
        self.post_attention_layernorm = nn.RMSNorm(C, eps=1e-5)
        self.gate_proj = nn.Linear(C, FF, bias=False)
        self.up_proj = nn.Linear(C, FF, bias=False)
        self.down_proj = nn.Linear(FF, C, bias=False)

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        d = C // H
        h = self.input_layernorm(x)
        q = self.q_proj(h).view(b, t, H, d).transpose(1, 2)
        k = self.k_proj(h).view(b, t, KV, d).transpose(1, 2)
        v = self.v_proj(h).view(b, t, KV, d).transpose(1, 2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        x = x + self.o_proj(y.transpose(1, 2).reshape(b, t, C))
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class Llama(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed_tokens = nn.Embedding(V, C)
        self.layers = nn.ModuleList(Block() for _ in range(L))
        self.norm = nn.RMSNorm(C, eps=1e-5)
        self.lm_head = nn.Linear(C, V, bias=False)
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, 0.0, 0.02)

    def forward(self, idx, targets, cos, sin):
        x = self.embed_tokens(idx)
        for blk in self.layers:
            x = blk(x, cos, sin)
        logits = self.lm_head(self.norm(x))
        return F.cross_entropy(logits.float().reshape(-1, V), targets.reshape(-1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=8)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = True
    dev = "cuda"
    model = Llama().to(dev)
    n_params = sum(p.numel() for p in model.parameters()) - model.embed_tokens.weight.numel()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1,
                            fused=True)
    cos, sin = rope_tables(args.seq, C // H, dev)
    mode = "torch.compile"
    step_fn = torch.compile(model)
    try:
        x = torch.randint(0, V, (args.batch, args.seq + 1), device=dev)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            step_fn(x[:, :-1], x[:, 1:], cos, sin).backward()
        opt.zero_grad(set_to_none=True)
    except Exception as e:  # noqa: BLE001
        import traceback
        print("torch.compile failed:\n" + "".join(traceback.format_exception(e)[-12:]), flush=True)
        mode = "eager (torch.compile failed)"
        step_fn = model
    g = torch.Generator(device=dev).manual_seed(1)
    times = []
    for step in range(args.steps):
        x = torch.randint(0, V, (args.batch, args.seq + 1), device=dev, generator=g)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = step_fn(x[:, :-1], x[:, 1:], cos, sin)
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
    flops = 6 * n_params + 12 * L * C * args.seq
    print(f"pytorch {torch.__version__} ({mode}) {torch.cuda.get_device_name()}: Llama 1B "
          f"({n_params / 1e6:.0f}M matmul params) batch {args.batch}x{args.seq} bf16: "
          f"{dt * 1e3:.1f} ms/step, {tok_s:,.0f} tok/s, MFU {100 * tok_s * flops / 989e12:.1f}% "
          f"(last loss {loss_v:.3f}), peak memory "
          f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB allocated, "
          f"{torch.cuda.max_memory_reserved() / 2**20:.0f} MiB reserved")


if __name__ == "__main__":
    main()
