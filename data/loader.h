// DataLoader: (inputs, targets) batches from token shards for one data-parallel rank, shuffled by
// seed, resumable exactly.
//
// Sample space. The shards (globs expanded, sorted) are one token stream: documents joined by
// end-of-text, as prepare-data writes them. With window L = max_seq_len, sample i is the L + 1
// tokens starting at i * L (windows overlap by one token, the last target), i in [0, S), S = (N -
// 1) / L for N tokens; the tail that fits no window is unused. The space does not depend on the
// batch size or the sequence length asked for, so both can change between calls:
//   next(B, T) with T <= L serves, for each of its B samples, the window's first T + 1 tokens:
//   inputs = tokens [0, T), targets = tokens [1, T + 1). A shorter T (sequence-length curriculum)
//   uses a prefix of each sample and drops the rest of the window, as sequence-length warmup does.
//
// Order. The sample stream is epoch 0's permutation of [0, S), then epoch 1's, ... (a seeded
// bijection per epoch: no table, O(1) to evaluate; the identity without shuffle). A call next(B, T)
// on rank r of W takes stream positions [c + r*B, c + (r+1)*B), where c counts samples consumed by
// all ranks, then advances c by W*B. So for the same B the ranks' batches are disjoint and together
// are exactly what one rank would get with W*B; batches cross epoch boundaries seamlessly. Every
// rank must make the same sequence of calls (same B; T may differ but need not).
//
// Position. The state is c plus the identity of the sample space; Position() before a call and
// Restore() in a new loader reproduce every later batch exactly, including across changes of B, T
// and of the number of ranks (c is global). Prefetching never changes what is served.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "core/tensor.h"

namespace kiln::data {

struct LoaderOptions {
  std::vector<std::string> shards;  // paths or globs
  int64_t vocab_size = 0;           // > 0: every token must be below it (checked at open)
  int64_t max_seq_len = 1024;       // L, the window length
  uint64_t seed = 0;
  bool shuffle = true;
  int rank = 0;
  int world_size = 1;
  int prefetch = 2;  // batches prepared ahead on a background thread (0: none)
};

struct Batch {
  Tensor inputs;                 // i32 (B, T)
  Tensor targets;                // i32 (B, T)
  std::vector<int64_t> samples;  // (B) the sample indices served, for tests and logs
};

// Where a loader is, and which sample space it is in. Serialize() gives a short text form
// ("kiln-loader v1 consumed=... seed=... window=... samples=... shuffle=...") for checkpoints.
struct LoaderPosition {
  uint64_t consumed = 0;  // samples consumed by all ranks
  uint64_t seed = 0;
  int64_t window = 0;
  int64_t num_samples = 0;
  bool shuffle = true;

  std::string Serialize() const;
  static absl::StatusOr<LoaderPosition> Parse(std::string_view text);
  bool operator==(const LoaderPosition&) const = default;
};

class DataLoader {
 public:
  // Opens and validates every shard (errors name the file) and checks that at least one window
  // fits.
  static absl::StatusOr<std::unique_ptr<DataLoader>> Open(const LoaderOptions& options);
  ~DataLoader();

  // REQUIRES (KILN_CHECK): B >= 1, 1 <= T <= max_seq_len.
  Batch Next(int64_t B, int64_t T);
  LoaderPosition Position() const;
  // Continues from `pos`. Errors when pos belongs to another sample space (other data, window, seed
  // or shuffle).
  absl::Status Restore(const LoaderPosition& pos);

  int64_t num_samples() const;
  int64_t num_tokens() const;
  int64_t epoch() const;  // epoch of the next sample this loader serves
  const std::vector<std::string>& shard_paths() const;
  // How many batches Next() took ready-made from the prefetch thread (diagnostics, tests).
  int64_t prefetch_hits() const;
  // The sample at stream position p (p-th sample served by all ranks together).
  int64_t SampleAt(uint64_t p) const;
  // Tokens [0, n) of sample s. REQUIRES: n <= max_seq_len + 1.
  void ReadSample(int64_t s, int64_t n, int32_t* out) const;

 private:
  struct Impl;
  explicit DataLoader(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kiln::data
