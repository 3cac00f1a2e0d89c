// The tiny training run that the trainer, checkpoint, data-parallel and GPU training tests share,
// written once: each test passes only the fields it changes. The golden losses
// (launch/trainer_test.cc) and the data-parallel results (tests/dp_test.cc) depend on every value
// here, so a change to the fixture changes them.
#pragma once

#include <string>

#include "proto/config.pb.h"

namespace kiln::testing {

// The fixture, as textproto: a 2-layer GPT-2 (vocab 96, 32 positions, d_model 32, 2 heads) on
// synthetic data in sequences of 16; global batch 8 in micro-batches of 4; 20 steps, seed 7;
// lr 1e-2 after 2 warmup steps; evaluation on 2 batches without samples; no TensorBoard or
// metrics.jsonl; never resumes and saves no checkpoint at the end; on the CPU.
extern const char kTinyConfig[];

// kTinyConfig with `overrides` merged over it (textproto; a field given there replaces the
// fixture's), logging.run_dir = `run_dir`, then resolve_config, resolve_world(world_size) and
// validate_config. Dies naming the problem when a step fails.
TrainConfig tiny_config(const std::string& run_dir, const std::string& overrides = "",
                        int world_size = 1);

// The config-layer tests' base config, as textproto: "t", the gpt2-tiny preset's defaults on
// synthetic data (seq 32), global batch 8 in micro-batches of 2, 10 steps, CPU.
extern const char kBaseConfig[];

// kBaseConfig parsed and resolved (a failure fails the calling test).
TrainConfig base_config();

}  // namespace kiln::testing
