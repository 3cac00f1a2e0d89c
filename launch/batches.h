// Where training batches come from: the token-shard loader (data/loader.h) or a deterministic
// synthetic stream (tests, benchmarks). Batches are (B, T) i32 inputs and next-token targets on the
// host; the trainer moves them to the device. Sources are resumable from an opaque position string.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "core/tensor.h"
#include "proto/config.pb.h"

namespace kiln::launch {

struct Batch {
  Tensor inputs;   // (B, T) i32
  Tensor targets;  // (B, T) i32
};

class BatchSource {
 public:
  virtual ~BatchSource() = default;
  // The next B sequences of length T for this rank.
  virtual absl::StatusOr<Batch> next(int64_t batch, int64_t seq_len) = 0;
  virtual std::string position() const = 0;
  virtual absl::Status restore(const std::string& position) = 0;
};

// A first-order Markov "language" over `vocab` tokens (each token has 4 likely successors), fixed
// by `seed`: learnable (its entropy is about ln 4 nats per token) and identical on every machine.
// Rank r of n takes global samples first + r, first + r + n, ... (validation uses a far-away
// `first`).
std::unique_ptr<BatchSource> make_synthetic_source(int64_t vocab, uint64_t seed, int rank,
                                                   int ranks, uint64_t first = 0);

// The shard-backed sources for data-parallel rank dp_rank of dp: the training stream (shuffled by
// seed) and a factory for fresh validation streams (unshuffled, from the start). Errors name the
// file.
absl::Status make_shard_sources(const TrainConfig& cfg, int dp_rank, int dp,
                                std::unique_ptr<BatchSource>* train,
                                std::function<std::unique_ptr<BatchSource>()>* make_val);

}  // namespace kiln::launch
