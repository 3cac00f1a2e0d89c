#!/usr/bin/env python3
"""TensorBoard event files of a real `kiln train` run, read by a second, independent reader.

kiln's own reader (launch/metrics.cc) shares the writer's author; this one is written from the
published formats alone: TFRecord framing (uint64 length, masked CRC-32C of the length, the data,
masked CRC-32C of the data; mask = rotate right 15 + 0xa282ead8) and TensorFlow's event.proto
(Event: wall_time = 1 double, step = 2 int64, file_version = 3 string, summary = 5; Summary:
value = 1; Summary.Value: tag = 1 string, simple_value = 2 float), decoded from the wire format
here. TensorBoard picks files named events.out.tfevents.*; the first record must be
file_version "brain.Event:2". Every scalar must equal the same step's value in metrics.jsonl
(rounded to float32, as simple_value is a float).

Usage: tensorboard_check.py --kiln PATH
"""
import argparse
import glob
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

CONFIG = """
model { preset: "gpt2-tiny" vocab_size: 96 max_seq_len: 32 n_layer: 2 n_head: 2 d_model: 32 }
data { synthetic: true seq_len: 16 }
training { global_batch_size: 8 max_steps: 12 seed: 5 }
parallel { micro_batch_size: 4 }
schedule { lr { warmup_steps: 2 } }
eval { batches: 1 every_n_steps: 4 sample_tokens: 0 }
logging { tensorboard: true log_every: 100 }
checkpoint { resume: "never" save_at_end: false }
device: CPU
"""


def crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


TABLE = crc32c_table()


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked(data):
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def records(blob):
    pos = 0
    while pos < len(blob):
        header = blob[pos:pos + 12]
        assert len(header) == 12, f"truncated record header at byte {pos}"
        (length,) = struct.unpack("<Q", header[:8])
        (length_crc,) = struct.unpack("<I", header[8:12])
        assert masked(header[:8]) == length_crc, f"length CRC mismatch at byte {pos}"
        data = blob[pos + 12:pos + 12 + length]
        (data_crc,) = struct.unpack("<I", blob[pos + 12 + length:pos + 16 + length])
        assert len(data) == length and masked(data) == data_crc, f"data CRC mismatch at byte {pos}"
        yield data
        pos += 16 + length


def varint(buf, pos):
    shift = value = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def fields(buf):
    """(field number, wire type, value) of one message: varint int, fixed bytes or a sub-buffer."""
    pos, out = 0, []
    while pos < len(buf):
        key, pos = varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            v, pos = varint(buf, pos)
        elif wire == 1:
            v, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = varint(buf, pos)
            v, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            v, pos = buf[pos:pos + 4], pos + 4
        else:
            raise AssertionError(f"unexpected wire type {wire}")
        out.append((num, wire, v))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", required=True)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="kiln_tb_")
    cfg = os.path.join(tmp, "cfg.textproto")
    with open(cfg, "w") as f:
        f.write(CONFIG)
    run = os.path.join(tmp, "run")
    env = dict(os.environ, KILN_NUM_THREADS="1")
    p = subprocess.run([args.kiln, "train", "--config", cfg, "--set", "logging.run_dir=" + run],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                       timeout=120)
    assert p.returncode == 0, p.stdout[-2000:]
    files = glob.glob(os.path.join(run, "events.out.tfevents.*"))
    assert len(files) == 1, f"want one events.out.tfevents.* file in {run}, got {files}"
    blob = open(files[0], "rb").read()
    recs = list(records(blob))
    first = dict((n, v) for n, _, v in fields(recs[0]))
    assert first.get(3) == b"brain.Event:2", f"first record {first}"
    scalars = {}  # (tag, step) -> value
    for rec in recs[1:]:
        f = fields(rec)
        step = next((v for n, w, v in f if n == 2 and w == 0), 0)
        wall = [v for n, w, v in f if n == 1 and w == 1]
        assert wall and struct.unpack("<d", wall[0])[0] > 1.6e9, "wall_time missing or not a time"
        for summary in (v for n, w, v in f if n == 5 and w == 2):
            for value in (v for n, w, v in fields(summary) if n == 1 and w == 2):
                vf = dict((n, v) for n, _, v in fields(value))
                tag = vf[1].decode()
                scalars[(tag, step)] = struct.unpack("<f", vf[2])[0]
    # Against metrics.jsonl, rounded to float32.
    checked = 0
    with open(os.path.join(run, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            for key in ("loss", "lr", "grad_norm"):
                if key not in r or r.get("kind") not in ("train", "val"):
                    continue
                want = struct.unpack("<f", struct.pack("<f", r[key]))[0]
                got = scalars.get((f"{r['kind']}/{key}", r["step"]))
                assert got == want, f"{r['kind']}/{key} at step {r['step']}: event {got}, jsonl {want}"
                checked += 1
    assert checked >= 12 * 3 + 3, f"only {checked} scalars checked"
    print(f"tensorboard_check: {len(recs)} records, CRCs valid, {len(scalars)} scalars, "
          f"{checked} equal to metrics.jsonl")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
