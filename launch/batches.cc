// The synthetic batch source.
#include "launch/batches.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/random.h"

namespace kiln::launch {
namespace {

class SyntheticSource final : public BatchSource {
 public:
  SyntheticSource(int64_t vocab, uint64_t seed, int rank, int ranks, uint64_t first)
      : vocab_(vocab), seed_(seed), rank_(rank), ranks_(ranks), first_(first) {}

  absl::StatusOr<Batch> next(int64_t b, int64_t t) override {
    Tensor in = Tensor::empty({b, t}, DType::kI32), tg = Tensor::empty({b, t}, DType::kI32);
    int32_t* pi = in.data<int32_t>();
    int32_t* pt = tg.data<int32_t>();
    for (int64_t i = 0; i < b; ++i) {
      // Like the shard loader: a call takes the rank's block of B consecutive stream positions.
      const uint64_t sample = first_ + static_cast<uint64_t>(served_ * ranks_ + rank_ * b + i);
      int64_t tok = static_cast<int64_t>(rng_bits(seed_ ^ 0xabcdef, sample) % vocab_);
      for (int64_t j = 0; j <= t; ++j) {
        if (j < t) pi[i * t + j] = static_cast<int32_t>(tok);
        if (j > 0) pt[i * t + j - 1] = static_cast<int32_t>(tok);
        // Successor: one of 4 fixed choices per token, picked by the sample's own stream.
        const uint64_t choice = rng_bits(sample + 1, static_cast<uint64_t>(j)) % 4;
        tok =
            static_cast<int64_t>(rng_bits(seed_, static_cast<uint64_t>(tok) * 4 + choice) % vocab_);
      }
    }
    served_ += b;
    return Batch{in, tg};
  }

  // Global, like the shard loader's: samples consumed by all ranks (each makes the same calls), so
  // a position restores under another number of ranks.
  std::string position() const override { return absl::StrCat(served_ * ranks_); }

  absl::Status restore(const std::string& pos) override {
    int64_t v;
    if (!absl::SimpleAtoi(pos, &v) || v < 0 || v % ranks_ != 0)
      return absl::InvalidArgumentError("synthetic source: bad position '" + pos + "' for " +
                                        absl::StrCat(ranks_) + " ranks");
    served_ = v / ranks_;
    return absl::OkStatus();
  }

 private:
  int64_t vocab_;
  uint64_t seed_;
  int rank_, ranks_;
  uint64_t first_;
  int64_t served_ = 0;
};

}  // namespace

std::unique_ptr<BatchSource> make_synthetic_source(int64_t vocab, uint64_t seed, int rank,
                                                   int ranks, uint64_t first) {
  return std::make_unique<SyntheticSource>(vocab, seed, rank, ranks, first);
}

}  // namespace kiln::launch
