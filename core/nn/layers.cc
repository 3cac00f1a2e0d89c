// Linear, Embedding, LayerNorm and RMSNorm modules.
#include "core/nn/layers.h"

#include "core/nn/precast.h"
#include "core/ops/elementwise.h"
#include "core/ops/embedding.h"
#include "core/ops/fp8.h"
#include "core/ops/layernorm.h"
#include "core/ops/matmul.h"
#include "core/ops/rmsnorm.h"
#include "core/ops/view.h"

namespace kiln::nn {

Tensor to_compute(const Tensor& x, DType dtype) {
  if (x.dtype() == dtype) {
    PrecastScope::await(x);  // KILN_OVERLAP_OPTIM: a parameter read as it is waits for its step
    return x;
  }
  Tensor pre = PrecastScope::lookup(x, dtype);
  return pre.defined() ? cast_precomputed(x, pre) : cast(x, dtype);
}

Linear::Linear(int64_t in, int64_t out, bool has_bias, double init_std, Generator& gen,
               DType dtype) {
  weight = register_parameter("weight", randn({out, in}, gen, dtype, Device::cpu(), 0.0, init_std));
  if (has_bias) bias = register_parameter("bias", Tensor::zeros({out}, dtype));
}

bool Linear::uses_fp8(const Tensor& x, DType compute) const {
  if (!fp8 || compute != DType::kBF16 || !x.defined() || !x.device().is_cuda() || x.dim() < 1)
    return false;
  const int64_t in = weight.size(1), out = weight.size(0);
  if (x.size(-1) != in || in == 0) return false;
  const int64_t rows = x.numel() / in;
  return in % 16 == 0 && out % 16 == 0 && rows > 0 && rows % 16 == 0;
}

std::shared_ptr<Fp8LinearScaling> Linear::fp8_scaling() const {
  if (!fp8_delayed_scaling()) return nullptr;
  if (!fp8_scaling_) fp8_scaling_ = std::make_shared<Fp8LinearScaling>();
  return fp8_scaling_;
}

Tensor Linear::forward(const Tensor& x_in, DType compute) const {
  const Tensor x = input_hook ? input_hook(x_in) : x_in;
  Tensor b = bias.defined() ? to_compute(bias, compute) : Tensor();
  // With an output hook the bias is added after it (once, to the reduced sum).
  Tensor b_in = output_hook ? Tensor() : b;
  Tensor y =
      uses_fp8(x, compute)
          ? fp8_linear(to_compute(x, compute), to_compute(weight, compute), b_in, fp8_scaling())
          : linear(to_compute(x, compute), to_compute(weight, compute), b_in);
  if (!output_hook) return y;
  y = output_hook(y);
  if (b.defined() && bias_hook) b = bias_hook(b);
  return b.defined() ? add(y, b) : y;
}

Embedding::Embedding(int64_t num, int64_t dim, double init_std, Generator& gen, DType dtype) {
  weight =
      register_parameter("weight", randn({num, dim}, gen, dtype, Device::cpu(), 0.0, init_std));
}

Tensor Embedding::forward(const Tensor& ids, DType compute) const {
  if (lookup_hook) return lookup_hook(to_compute(weight, compute), ids);
  return embedding(to_compute(weight, compute), ids);
}

LayerNorm::LayerNorm(int64_t dim, double e, bool has_bias, DType dtype) : eps(e) {
  weight = register_parameter("weight", Tensor::full({dim}, 1.0, dtype));
  if (has_bias) bias = register_parameter("bias", Tensor::zeros({dim}, dtype));
}

Tensor LayerNorm::weight_as(DType dtype) const {
  Tensor w = to_compute(weight, dtype);
  return param_hook ? param_hook(w) : w;
}

Tensor LayerNorm::bias_as(DType dtype) const {
  if (!bias.defined()) return Tensor();
  Tensor b = to_compute(bias, dtype);
  return param_hook ? param_hook(b) : b;
}

Tensor LayerNorm::forward(const Tensor& x) const {
  return layer_norm(x, weight_as(x.dtype()), bias_as(x.dtype()), eps);
}

RMSNorm::RMSNorm(int64_t dim, double e, DType dtype) : eps(e) {
  weight = register_parameter("weight", Tensor::full({dim}, 1.0, dtype));
}

Tensor RMSNorm::weight_as(DType dtype) const {
  Tensor w = to_compute(weight, dtype);
  return param_hook ? param_hook(w) : w;
}

Tensor RMSNorm::forward(const Tensor& x) const { return rms_norm(x, weight_as(x.dtype()), eps); }

}  // namespace kiln::nn
