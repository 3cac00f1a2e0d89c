// Basic layers over the ops: Linear, Embedding, LayerNorm, RMSNorm. Parameters are stored in fp32
// (the master copy; f64 for gradient-checking tests); with a 16-bit compute dtype each forward
// casts weights and inputs to it, and the gradient flows back to the fp32 parameter through the
// cast (autocast-style mixed precision).
#pragma once

#include "core/nn/module.h"
#include "core/random.h"

namespace kiln::nn {

// Casts x to dtype when it differs (differentiable).
Tensor to_compute(const Tensor& x, DType dtype);

class Linear : public Module {
 public:
  // weight (OUT, IN) ~ N(0, init_std); bias (OUT) zeros when `bias`.
  Linear(int64_t in, int64_t out, bool bias, double init_std, Generator& gen,
         DType dtype = DType::kF32);
  // (..., IN) -> (..., OUT). With `fp8` set and uses_fp8(x, compute), runs fp8_linear
  // (core/ops/fp8.h: e4m3 forward, e5m2 gradients); otherwise linear in the compute dtype.
  Tensor forward(const Tensor& x, DType compute) const;
  // Whether forward(x, compute) takes the fp8 path: `fp8` set, x on CUDA, compute bf16, and IN,
  // OUT and the row count of x (the product of its leading dims) multiples of 16.
  bool uses_fp8(const Tensor& x, DType compute) const;
  Tensor weight;     // (OUT, IN)
  Tensor bias;       // (OUT) or undefined
  bool fp8 = false;  // fp8 GEMMs where uses_fp8 allows (models set it with set_fp8)
};

class Embedding : public Module {
 public:
  Embedding(int64_t num, int64_t dim, double init_std, Generator& gen, DType dtype = DType::kF32);
  Tensor forward(const Tensor& ids, DType compute) const;  // (...) ints -> (..., DIM)
  Tensor weight;                                           // (NUM, DIM)
};

class LayerNorm : public Module {
 public:
  LayerNorm(int64_t dim, double eps, bool bias = true, DType dtype = DType::kF32);
  Tensor forward(const Tensor& x) const;  // normalises in x's dtype (f32 statistics)
  Tensor weight, bias;                    // (DIM); bias may be undefined
  double eps;
};

class RMSNorm : public Module {
 public:
  RMSNorm(int64_t dim, double eps, DType dtype = DType::kF32);
  Tensor forward(const Tensor& x) const;
  Tensor weight;  // (DIM)
  double eps;
};

}  // namespace kiln::nn
