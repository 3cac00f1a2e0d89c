// Random tensor factories over the counter-based generator.
#include "core/random.h"

#include <cmath>

#include "core/backend.h"
#include "core/thread_pool.h"

namespace kiln {

Generator& default_generator() {
  thread_local Generator g(0);
  return g;
}

Tensor randn(const Shape& shape, Generator& gen, DType dtype, Device device, double mean,
             double std) {
  Tensor host = Tensor::empty(shape, DType::kF64);
  const int64_t n = host.numel();
  const uint64_t seed = gen.seed(), base = gen.reserve(randn_counters(n));
  double* p = host.data<double>();
  parallel_for(n, 4096, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {  // Box-Muller on two counters per value
      double u1 = rng_uniform(seed, base + 2 * i), u2 = rng_uniform(seed, base + 2 * i + 1);
      p[i] = mean + std * std::sqrt(-2.0 * std::log1p(-u1)) * std::cos(2.0 * M_PI * u2);
    }
  });
  if (dtype == DType::kF64 && device.is_cpu()) return host;
  Tensor out = Tensor::empty(shape, dtype, device);
  raw::copy(out, host);
  return out;
}

Tensor rand_uniform(const Shape& shape, Generator& gen, double lo, double hi, DType dtype,
                    Device device) {
  Tensor host = Tensor::empty(shape, DType::kF64);
  const int64_t n = host.numel();
  const uint64_t seed = gen.seed(), base = gen.reserve(n);
  double* p = host.data<double>();
  for (int64_t i = 0; i < n; ++i) p[i] = lo + (hi - lo) * rng_uniform(seed, base + i);
  if (dtype == DType::kF64 && device.is_cpu()) return host;
  Tensor out = Tensor::empty(shape, dtype, device);
  raw::copy(out, host);
  return out;
}

Tensor randint(const Shape& shape, Generator& gen, int64_t n, DType dtype, Device device) {
  Tensor host = Tensor::empty(shape, DType::kI64);
  const int64_t count = host.numel();
  const uint64_t seed = gen.seed(), base = gen.reserve(count);
  int64_t* p = host.data<int64_t>();
  for (int64_t i = 0; i < count; ++i)
    p[i] = static_cast<int64_t>(rng_bits(seed, base + i) % static_cast<uint64_t>(n));
  if (dtype == DType::kI64 && device.is_cpu()) return host;
  Tensor out = Tensor::empty(shape, dtype, device);
  raw::copy(out, host);
  return out;
}

}  // namespace kiln
