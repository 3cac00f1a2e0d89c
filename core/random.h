// Seeded, counter-based randomness. Value i of stream (seed, offset) is a pure function of
// (seed, offset + i), so CPU and CUDA kernels draw the same numbers, any thread split gives the
// same result, and activation recompute replays dropout exactly by restoring a Generator's state.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace kiln {

// 64 random bits for counter c under key `seed` (SplitMix64 finaliser over a Weyl sequence).
inline uint64_t rng_bits(uint64_t seed, uint64_t c) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + c * 0xD1B54A32D192ED03ull + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
// Uniform in [0, 1) with 53 bits (double) or 24 bits (float).
inline double rng_uniform(uint64_t seed, uint64_t c) {
  return static_cast<double>(rng_bits(seed, c) >> 11) * 0x1.0p-53;
}
inline float rng_uniform_f(uint64_t seed, uint64_t c) {
  return static_cast<float>(rng_bits(seed, c) >> 40) * 0x1.0p-24f;
}

struct GeneratorState {
  uint64_t seed = 0;
  uint64_t offset = 0;
};

// A stream of random numbers: each draw reserves `n` counters and returns the first.
class Generator {
 public:
  explicit Generator(uint64_t seed = 0) : state_{seed, 0} {}
  uint64_t seed() const { return state_.seed; }
  uint64_t reserve(uint64_t n) {
    uint64_t o = state_.offset;
    state_.offset += n;
    return o;
  }
  GeneratorState state() const { return state_; }
  void set_state(GeneratorState s) { state_ = s; }

 private:
  GeneratorState state_;
};

// Counters randn draws for n values (Box-Muller: two per value). Code that must stay in step with
// a generator without drawing (a model stage skipping the layers it does not build) reserves this.
inline uint64_t randn_counters(int64_t n) { return 2 * static_cast<uint64_t>(n); }

// The generator that dropout draws from by default (one per thread). Trainers reseed it per rank.
Generator& default_generator();

// Factories (CPU fill, then copied to `device`).
Tensor randn(const Shape& shape, Generator& gen, DType dtype = DType::kF32,
             Device device = Device::cpu(), double mean = 0.0, double std = 1.0);
Tensor rand_uniform(const Shape& shape, Generator& gen, double lo, double hi,
                    DType dtype = DType::kF32, Device device = Device::cpu());
// Integers uniform in [0, n).
Tensor randint(const Shape& shape, Generator& gen, int64_t n, DType dtype = DType::kI64,
               Device device = Device::cpu());

}  // namespace kiln
