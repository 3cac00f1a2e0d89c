#!/usr/bin/env python3
"""Checks that `kiln export --format safetensors` produces models Hugging Face transformers loads
and runs to the same logits as kiln.

For each family (a tiny GPT-2 and a tiny Llama with grouped-query attention, both with a padded
vocabulary), it trains a few steps with `kiln train` (on the GPU when there is one: the checkpoint
holds the fp32 masters), exports the checkpoint, asks `kiln logits` for the fp32 CPU logits of
fixed token rows, loads the export with transformers (GPT2LMHeadModel / LlamaForCausalLM
.from_pretrained(dir), float32, CPU, eval mode) and compares. It prints the max absolute and
relative differences and exits non-zero when any family is outside fp32 tolerance (max |diff| <=
1e-4 * max(1, max |logit|)) or any argmax differs.

  python3 tests/hf_check.py --kiln build-gpu/bin/kiln [--reference transformers|numpy|both]

--reference numpy needs only numpy: an independent float64 reimplementation of the two
transformers architectures from the exported file (Conv1D layout, gelu_new, rotate_half rotary,
GQA), for machines without transformers. The default (auto) uses transformers when it imports.
"""
import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np

FAMILIES = {
    "gpt2": """model { preset: "gpt2-tiny" vocab_size: 500 vocab_pad_multiple: 64 max_seq_len: 64
                       n_layer: 2 n_head: 4 d_model: 64 }""",
    "llama": """model { preset: "llama-tiny" vocab_size: 500 vocab_pad_multiple: 64 max_seq_len: 64
                        n_layer: 2 n_head: 4 n_kv_head: 2 d_model: 64 d_ff: 160
                        rope_theta: 10000 norm_eps: 1e-5 }""",
}
COMMON = """
data { synthetic: true seq_len: 32 }
training { global_batch_size: 8 max_steps: 30 seed: 3 }
optimizer { lr: 3e-3 }
eval { batches: 1 sample_tokens: 0 }
logging { tensorboard: false log_every: 10 }
"""
TOKENS = [[3, 141, 59, 26, 499, 358, 97, 93, 238, 462, 64, 33, 83, 279, 50, 288],
          [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
          [256] * 16]

_DT = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32, "F16": np.float16,
       "U8": np.uint8}


def read_safetensors(path):
    """A minimal safetensors reader (no package needed): name -> numpy array."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        b, e = t["data_offsets"]
        if t["dtype"] == "BF16":
            raw = np.frombuffer(data[b:e], dtype=np.uint16).astype(np.uint32) << 16
            arr = raw.view(np.float32)
        else:
            arr = np.frombuffer(data[b:e], dtype=_DT[t["dtype"]])
        out[name] = arr.reshape(t["shape"])
    return out


def run(cmd):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if p.returncode != 0:
        sys.exit(f"hf_check: {' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-3000:]}")
    return p.stdout


# ---- numpy reference (float64) -------------------------------------------------------------

def _softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def _attention(q, k, v):  # (H, T, D) each
    t, d = q.shape[1], q.shape[2]
    s = q @ k.transpose(0, 2, 1) / np.sqrt(d)
    s = s + np.triu(np.full((t, t), -np.inf), 1)
    return _softmax(s) @ v


def numpy_gpt2(w, cfg, ids):
    c, h = cfg["n_embd"], cfg["n_head"]
    eps = cfg["layer_norm_epsilon"]

    def ln(x, p):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * w[p + ".weight"] + w[p + ".bias"]

    def gelu_new(x):
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))

    out = []
    for row in ids:
        t = len(row)
        x = w["transformer.wte.weight"][row] + w["transformer.wpe.weight"][:t]
        for i in range(cfg["n_layer"]):
            p = f"transformer.h.{i}."
            a = ln(x, p + "ln_1") @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]
            q, k, v = (a[:, j * c:(j + 1) * c].reshape(t, h, -1).transpose(1, 0, 2) for j in range(3))
            y = _attention(q, k, v).transpose(1, 0, 2).reshape(t, c)
            x = x + y @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
            m = gelu_new(ln(x, p + "ln_2") @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"])
            x = x + m @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
        x = ln(x, "transformer.ln_f")
        head = w["transformer.wte.weight"] if cfg["tie_word_embeddings"] else w["lm_head.weight"]
        out.append(x @ head.T)
    return np.stack(out)


def numpy_llama(w, cfg, ids):
    c, h, kv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = c // h
    eps, theta = cfg["rms_norm_eps"], cfg["rope_theta"]

    def rms(x, name):
        return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps) * w[name]

    def rope(x):  # (H, T, D), transformers' rotate_half convention
        t = x.shape[1]
        inv = 1.0 / theta ** (np.arange(0, d, 2) / d)
        f = np.outer(np.arange(t), inv)
        emb = np.concatenate([f, f], -1)
        rot = np.concatenate([-x[..., d // 2:], x[..., :d // 2]], -1)
        return x * np.cos(emb) + rot * np.sin(emb)

    def silu(x):
        return x / (1 + np.exp(-x))

    out = []
    for row in ids:
        t = len(row)
        x = w["model.embed_tokens.weight"][row]
        for i in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{i}."
            n = rms(x, p + "input_layernorm.weight")
            q = (n @ w[p + "self_attn.q_proj.weight"].T).reshape(t, h, d).transpose(1, 0, 2)
            k = (n @ w[p + "self_attn.k_proj.weight"].T).reshape(t, kv, d).transpose(1, 0, 2)
            v = (n @ w[p + "self_attn.v_proj.weight"].T).reshape(t, kv, d).transpose(1, 0, 2)
            q, k = rope(q), rope(k)
            k, v = np.repeat(k, h // kv, 0), np.repeat(v, h // kv, 0)
            y = _attention(q, k, v).transpose(1, 0, 2).reshape(t, c)
            x = x + y @ w[p + "self_attn.o_proj.weight"].T
            n = rms(x, p + "post_attention_layernorm.weight")
            m = silu(n @ w[p + "mlp.gate_proj.weight"].T) * (n @ w[p + "mlp.up_proj.weight"].T)
            x = x + m @ w[p + "mlp.down_proj.weight"].T
        x = rms(x, "model.norm.weight")
        head = w["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else w["lm_head.weight"]
        out.append(x @ head.T)
    return np.stack(out)


def numpy_logits(hf_dir, ids):
    cfg = json.load(open(os.path.join(hf_dir, "config.json")))
    w = {k: v.astype(np.float64) for k, v in
         read_safetensors(os.path.join(hf_dir, "model.safetensors")).items()}
    fn = numpy_gpt2 if cfg["model_type"] == "gpt2" else numpy_llama
    return fn(w, cfg, np.array(ids))


def transformers_logits(hf_dir, ids):
    import torch
    import transformers
    torch.backends.cuda.matmul.allow_tf32 = False
    cfg = json.load(open(os.path.join(hf_dir, "config.json")))
    cls = (transformers.GPT2LMHeadModel if cfg["model_type"] == "gpt2"
           else transformers.LlamaForCausalLM)
    model = cls.from_pretrained(hf_dir, torch_dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        return model(torch.tensor(ids, dtype=torch.long)).logits.double().numpy()


# ---- main ----------------------------------------------------------------------------------

def compare(name, ref, got):
    scale = max(1.0, float(np.abs(ref).max()))
    diff = np.abs(ref - got)
    max_abs = float(diff.max())
    max_rel = float((diff / np.maximum(np.abs(ref), 1e-3)).max())
    argmax_same = bool((ref.argmax(-1) == got.argmax(-1)).all())
    ok = got.shape == ref.shape and max_abs <= 1e-4 * scale and argmax_same
    print(f"{name}: logits {list(got.shape)}, max |logit| {scale:.3g}, max abs diff {max_abs:.3g}, "
          f"max rel diff {max_rel:.3g} (|ref| floored at 1e-3), argmax {'equal' if argmax_same else 'DIFFERS'}"
          f" -> {'OK' if ok else 'FAIL'}", flush=True)
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kiln", required=True, help="the kiln binary (e.g. build-gpu/bin/kiln)")
    ap.add_argument("--reference", default="auto", choices=["auto", "transformers", "numpy", "both"])
    ap.add_argument("--families", default="gpt2,llama")
    ap.add_argument("--workdir", default=None, help="keep the runs here (default: a temporary dir)")
    ap.add_argument("--device", default="AUTO", help="device for the short training run (AUTO/CPU/CUDA)")
    args = ap.parse_args()
    refs = [args.reference]
    if args.reference == "auto":
        try:
            import transformers  # noqa: F401
            import torch  # noqa: F401
            refs = ["transformers"]
        except ImportError:
            print("hf_check: transformers/torch not importable: using the numpy reference", flush=True)
            refs = ["numpy"]
    elif args.reference == "both":
        refs = ["transformers", "numpy"]
    work = args.workdir or tempfile.mkdtemp(prefix="kiln_hf_check_")
    os.makedirs(work, exist_ok=True)
    tokens = ", ".join(" ".join(str(t) for t in row) for row in TOKENS)
    ok = True
    for fam in args.families.split(","):
        cfg = os.path.join(work, f"{fam}.textproto")
        with open(cfg, "w") as f:
            f.write(FAMILIES[fam] + COMMON + f"device: {args.device}\n")
        run_dir, hf_dir = os.path.join(work, f"run_{fam}"), os.path.join(work, f"hf_{fam}")
        out = run([args.kiln, "train", "--config", cfg, "--resume=never",
                   "--set", "logging.run_dir=" + run_dir])
        print(f"{fam}: " + " | ".join(l for l in out.splitlines() if l.startswith("kiln:")), flush=True)
        ckpt = os.path.join(run_dir, "checkpoints")
        run([args.kiln, "export", "--format", "safetensors", "--checkpoint", ckpt, "--out", hf_dir])
        logits_file = os.path.join(work, f"logits_{fam}.safetensors")
        run([args.kiln, "logits", "--checkpoint", ckpt, "--tokens", tokens, "--out", logits_file])
        got = read_safetensors(logits_file)["logits"].astype(np.float64)
        for ref_name in refs:
            ref = (transformers_logits if ref_name == "transformers" else numpy_logits)(hf_dir, TOKENS)
            ok = compare(f"{fam} kiln vs {ref_name}", ref, got) and ok
    print(f"hf_check: {'PASS' if ok else 'FAIL'} (files in {work})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
