// Basic layers over the ops: Linear, Embedding, LayerNorm, RMSNorm. Parameters are stored in fp32
// (the master copy; f64 for gradient-checking tests); with a 16-bit compute dtype each forward
// casts weights and inputs to it, and the gradient flows back to the fp32 parameter through the
// cast (autocast-style mixed precision).
#pragma once

#include <functional>
#include <memory>

#include "core/nn/module.h"
#include "core/ops/fp8.h"
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
  // The delayed-scaling histories of this layer's fp8 GEMMs (core/ops/fp8.h), made on first use,
  // or null when fp8_delayed_scaling() is off.
  std::shared_ptr<Fp8LinearScaling> fp8_scaling() const;
  // The same without making it: null until a use made it (checkpoints read it).
  const std::shared_ptr<Fp8LinearScaling>& fp8_scaling_if_made() const { return fp8_scaling_; }
  // Tensor parallelism sets these from outside (parallel/tensor_parallel/apply.h), so core never
  // depends on a communicator: input_hook maps x before the matmul (column-parallel: copy or
  // all-gather to the tp group), output_hook maps the matmul's output before the bias is added
  // (row-parallel: the all-reduce or reduce-scatter of the partial sums). Unset: identity.
  std::function<Tensor(const Tensor&)> input_hook, output_hook;
  // Maps the bias where forward adds it after output_hook (sequence parallel). Unset: identity.
  std::function<Tensor(const Tensor&)> bias_hook;
  bool has_hooks() const { return input_hook || output_hook; }
  Tensor weight;     // (OUT, IN)
  Tensor bias;       // (OUT) or undefined
  bool fp8 = false;  // fp8 GEMMs where uses_fp8 allows (models set it with set_fp8)

 private:
  mutable std::shared_ptr<Fp8LinearScaling> fp8_scaling_;  // run state, not a parameter
};

class Embedding : public Module {
 public:
  Embedding(int64_t num, int64_t dim, double init_std, Generator& gen, DType dtype = DType::kF32);
  Tensor forward(const Tensor& ids, DType compute) const;  // (...) ints -> (..., DIM)
  // Replaces the lookup (set from outside: the vocab-parallel embedding). (weight in the compute
  // dtype, ids) -> (..., DIM).
  std::function<Tensor(const Tensor& weight, const Tensor& ids)> lookup_hook;
  Tensor weight;  // (NUM, DIM)
};

class LayerNorm : public Module {
 public:
  LayerNorm(int64_t dim, double eps, bool bias = true, DType dtype = DType::kF32);
  Tensor forward(const Tensor& x) const;  // normalises in x's dtype (f32 statistics)
  // weight / bias as forward uses them: in `dtype`, through param_hook. Undefined bias: undefined.
  Tensor weight_as(DType dtype) const;
  Tensor bias_as(DType dtype) const;
  Tensor weight, bias;  // (DIM); bias may be undefined
  double eps;
  // Maps weight and bias where forward uses them (set from outside: sequence parallel sums their
  // gradients over the tp group with copy_to_tp). Unset: identity.
  std::function<Tensor(const Tensor&)> param_hook;
};

class RMSNorm : public Module {
 public:
  RMSNorm(int64_t dim, double eps, DType dtype = DType::kF32);
  Tensor forward(const Tensor& x) const;
  Tensor weight_as(DType dtype) const;  // as forward uses it (see LayerNorm)
  Tensor weight;                        // (DIM)
  double eps;
  std::function<Tensor(const Tensor&)> param_hook;  // see LayerNorm
};

}  // namespace kiln::nn
