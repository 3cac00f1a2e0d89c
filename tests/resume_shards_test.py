#!/usr/bin/env python3
"""Resume on real shards: `kiln tokenizer train` + `kiln prepare-data` output, not synthetic data.

Writes a small text corpus (seeded pseudo-English documents), learns a 320-token byte-level BPE
from it, prepares train/val shards, then for one process and for `mpirun -np 2` (dp = 2, ZeRO-1):
  A: trains 12 steps (shuffled shards, dropout 0.1), saving every 4 steps;
  B: a fresh run that resumes from A's step-4 checkpoint and trains to step 12.
Every loss of B (steps 5-12) must equal A's bit for bit: the loader's position (how many samples
were consumed, the shuffle seed) travels in the checkpoint. A ShardSource::restore that did nothing
would restart the data stream and change every later loss.

Usage: resume_shards_test.py --kiln PATH [--mpirun PATH] [--np 1,2]
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

WORDS = ("the a of and to in is was he for it with as his on be at by had not are but from or "
         "have an they which one you were her all she there would their we him been has when who "
         "will more no if out so said what up its about into than them can only other new some "
         "could time these two may then do first any my now such like our over man me even most "
         "made after also did many before must through back years where much your way well down "
         "should because each just those people how too little state good very make world still "
         "own see men work long get here between both life being under never day same another know "
         "while last might us great old year off come since against go came right used take three").split()

CONFIG = """
model {{ preset: "gpt2-tiny" vocab_size: {vocab} max_seq_len: 16 n_layer: 2 n_head: 2 d_model: 32
        dropout: 0.1 }}
data {{ train_shards: "{data}/corpus_train_*.bin" val_shards: "{data}/corpus_val_*.bin"
       tokenizer_dir: "{tok}" seq_len: 16 seed: 21 }}
training {{ global_batch_size: 8 max_steps: 12 seed: 5 }}
parallel {{ micro_batch_size: 2 }}
optimizer {{ lr: 1e-2 }}
schedule {{ lr {{ warmup_steps: 2 }} }}
checkpoint {{ every_n_steps: 4 keep_last: 0 save_at_end: false }}
eval {{ every_n_steps: 0 batches: 1 sample_tokens: 0 }}
logging {{ log_every: 1 tensorboard: false }}
device: CPU
"""


def corpus(path, docs=300, seed=3):
    rng = random.Random(seed)
    parts = []
    for _ in range(docs):
        sents = []
        for _ in range(rng.randint(2, 6)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(4, 12))]
            sents.append(" ".join(words).capitalize() + ".")
        parts.append(" ".join(sents))
    with open(path, "w") as f:
        f.write("\n<|endoftext|>\n".join(parts))


def losses(run_dir):
    out = {}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if "loss" in r and "step" in r and r.get("kind", "train") == "train":
                out[int(r["step"])] = r["loss"]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", required=True)
    ap.add_argument("--mpirun", default="mpirun")
    ap.add_argument("--np", default="1,2")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="kiln_resume_shards_")
    env = dict(os.environ)
    env.setdefault("KILN_NUM_THREADS", "1")
    for k, v in [("OMPI_ALLOW_RUN_AS_ROOT", "1"), ("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"),
                 ("OMPI_MCA_btl", "self,vader"), ("OMPI_MCA_btl_vader_single_copy_mechanism", "none")]:
        env.setdefault(k, v)
    failures = []

    def run(cmd, what):
        p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=300)
        if p.returncode != 0:
            print(p.stdout[-3000:])
            raise RuntimeError(f"{what} exited {p.returncode}")
        return p.stdout

    try:
        text = os.path.join(tmp, "corpus.txt")
        corpus(text)
        tok, data = os.path.join(tmp, "tok"), os.path.join(tmp, "data")
        run([args.kiln, "tokenizer", "train", "--vocab-size", "320", "--out", tok, "--threads", "1",
             text], "tokenizer train")
        run([args.kiln, "prepare-data", "--out", data, "--name", "corpus", "--tokenizer", tok,
             "--val-docs", "5", "--threads", "1", text], "prepare-data")
        cfg = os.path.join(tmp, "cfg.textproto")
        with open(cfg, "w") as f:
            f.write(CONFIG.format(vocab=320, data=data, tok=tok))
        for np_ in (int(x) for x in args.np.split(",")):
            pre = [args.mpirun, "-np", str(np_), "--oversubscribe", "--bind-to", "none"] if np_ > 1 else []
            zero = ["--set", "parallel.zero_stage=1"] if np_ > 1 else []
            a_dir, b_dir = os.path.join(tmp, f"a_np{np_}"), os.path.join(tmp, f"b_np{np_}")
            run(pre + [args.kiln, "train", "--config", cfg, "--set", "logging.run_dir=" + a_dir] + zero,
                f"run A (np {np_})")
            ckpt = os.path.join(a_dir, "checkpoints", "step_00000004")
            out = run(pre + [args.kiln, "train", "--config", cfg, "--set", "logging.run_dir=" + b_dir,
                             "--set", "checkpoint.resume=" + ckpt] + zero, f"run B (np {np_})")
            la, lb = losses(a_dir), losses(b_dir)
            a_steps, b_steps = sorted(la), sorted(lb)
            print(f"np {np_}: A, 12 steps: {[la[s] for s in a_steps]}")
            print(f"np {np_}: B, resumed after 4: {[lb[s] for s in b_steps]}")
            if len(a_steps) != 12 or b_steps != a_steps[4:]:
                failures.append(f"np {np_}: A logged steps {a_steps}, B {b_steps}")
            else:
                diff = [s for s in b_steps if la[s] != lb[s]]
                if diff:
                    failures.append(f"np {np_}: resumed losses differ from uninterrupted at steps "
                                    f"{diff}")
                else:
                    print(f"np {np_}: the 8 losses after the resume are bit-identical to the "
                          f"uninterrupted run")
            if len(set(la.values())) < 6:
                failures.append(f"np {np_}: losses do not change: the test would not see a restart")
    finally:
        if args.keep or failures:
            print("files kept in", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    for f in failures:
        print("FAIL:", f)
    print(f"resume on shards: {len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
