// AdamW / SGD CPU kernels and the gradient utilities. Parameters on a GPU take the multi-tensor
// CUDA kernels of optimizer_cuda.cu (gradients never leave the device; only norms come back).
#include "optim/optimizer.h"

#include <cmath>
#include <cstdlib>
#include <string>

#include "core/backend.h"
#include "core/check.h"
#include "core/ops/elementwise.h"
#include "core/thread_pool.h"
#if KILN_WITH_CUDA
#include "optim/optimizer_cuda.h"
#endif

namespace kiln::optim {
namespace {

// REQUIRES: a contiguous f32 CPU tensor.
float* f32_data(const Tensor& t, const std::string& what) {
  KILN_CHECK(t.dtype() == DType::kF32 && t.is_contiguous() && t.device().is_cpu())
      << "optimizer: " << what << " must be a contiguous f32 CPU tensor, got " << t.str();
  return t.data<float>();
}

// True when the parameters live on a GPU (then all of them must, on one device).
bool on_gpu(const std::vector<nn::Parameter>& params) {
  if (params.empty() || !params[0].tensor.device().is_cuda()) return false;
  for (const nn::Parameter& p : params)
    KILN_CHECK(p.tensor.device() == params[0].tensor.device())
        << "optimizer: parameter " << p.name << " is on " << p.tensor.device() << " but "
        << params[0].name << " is on " << params[0].tensor.device();
#if KILN_WITH_CUDA
  KILN_CHECK(cuda_available()) << "optimizer: parameters are on " << params[0].tensor.device()
                               << " but no CUDA device is available";
  return true;
#else
  KILN_CHECK(false) << "optimizer: parameters are on " << params[0].tensor.device()
                    << " but kiln was built without CUDA";
  return false;
#endif
}

#if KILN_WITH_CUDA
// The defined gradients of params, in order.
std::vector<Tensor> defined_grads(const std::vector<nn::Parameter>& params) {
  std::vector<Tensor> gs;
  for (const nn::Parameter& p : params) {
    Tensor g = p.tensor.grad();
    if (g.defined()) gs.push_back(g);
  }
  return gs;
}
#endif

// KILN_FOLD_GRAD_SCALE (default on; 0 off): AdamW on the GPU folds the gradient factor into its
// kernel.
bool fold_grad_scale() {
  static const bool fold = [] {
    const char* e = std::getenv("KILN_FOLD_GRAD_SCALE");
    return e == nullptr || std::string(e) != "0";
  }();
  return fold;
}

}  // namespace

void adamw_update(float* p, const float* g, float* m, float* v, int64_t n, double lr,
                  const AdamWOptions& o, double decay, int64_t t) {
  const float b1 = static_cast<float>(o.beta1), b2 = static_cast<float>(o.beta2);
  const float c1 = static_cast<float>(1.0 / (1.0 - std::pow(o.beta1, static_cast<double>(t))));
  const float c2 = static_cast<float>(1.0 / (1.0 - std::pow(o.beta2, static_cast<double>(t))));
  const float flr = static_cast<float>(lr), eps = static_cast<float>(o.eps);
  const float keep = static_cast<float>(1.0 - lr * decay);
  parallel_for(n, 1 << 14, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float gi = g[i];
      m[i] = b1 * m[i] + (1.0f - b1) * gi;
      v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
      const float mh = m[i] * c1, vh = v[i] * c2;
      p[i] = p[i] * keep - flr * mh / (std::sqrt(vh) + eps);
    }
  });
}

void sgd_update(float* p, const float* g, float* buf, int64_t n, double lr, double momentum,
                double weight_decay, bool nesterov) {
  const float mu = static_cast<float>(momentum), wd = static_cast<float>(weight_decay);
  const float flr = static_cast<float>(lr);
  parallel_for(n, 1 << 14, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float d = g[i] + wd * p[i];
      buf[i] = mu * buf[i] + d;
      const float step = mu == 0.0f ? d : nesterov ? d + mu * buf[i] : buf[i];
      p[i] -= flr * step;
    }
  });
}

void Optimizer::zero_grad() {
  for (nn::Parameter& p : params_) p.tensor.zero_grad();
}

AdamW::AdamW(std::vector<nn::Parameter> params, AdamWOptions opts)
    : Optimizer(std::move(params)), opts_(opts) {
  for (const nn::Parameter& p : params_) {
    m_.push_back(Tensor::zeros(p.tensor.shape(), DType::kF32, p.tensor.device()));
    v_.push_back(Tensor::zeros(p.tensor.shape(), DType::kF32, p.tensor.device()));
  }
}

void Optimizer::step_scaled(double lr, double grad_scale) {
  if (grad_scale != 1.0) scale_grads(params_, grad_scale);
  step(lr);
}

void AdamW::step_scaled(double lr, double grad_scale) {
  if (!fold_grad_scale() || grad_scale == 1.0 || !on_gpu(params_))
    return Optimizer::step_scaled(lr, grad_scale);
  step_gpu(lr, grad_scale);
}

bool AdamW::step_grouped(double lr, double grad_scale, const std::vector<int>& group, int groups,
                         void* stream, bool zero_grads,
                         const std::function<void(int)>& group_done) {
  if (stream == nullptr || group.size() != params_.size() || groups < 1 || !on_gpu(params_) ||
      (grad_scale != 1.0 && !fold_grad_scale()))
    return false;
  for (size_t i = 0; i < params_.size(); ++i) {
    const Tensor g = params_[i].tensor.grad();
    if (!g.defined() || g.dtype() != DType::kF32 || !g.is_contiguous() || group[i] < 0 ||
        group[i] >= groups)
      return false;
  }
#if KILN_WITH_CUDA
  ++t_;
  std::vector<std::vector<cuda::AdamWSlot>> slots(groups);
  size_t wanted = 0;
  for (size_t i = 0; i < params_.size(); ++i) {
    slots[group[i]].push_back(gpu_slot(i));
    wanted += slots[group[i]].back().h.defined();
  }
  for (int g = 0; g < groups; ++g) {
    cuda::adamw_step(slots[g], lr, opts_, t_, grad_scale, {stream, zero_grads});
    group_done(g);
  }
  wrote_copies_ = wanted > 0;  // every parameter had a gradient, so every copy was written
  return true;
#else
  (void)lr, (void)group_done, (void)zero_grads;
  return false;
#endif
}

bool AdamW::set_param_copies(std::vector<Tensor> copies) {
  copies_.clear();
  wrote_copies_ = false;
  if (copies.empty() || !on_gpu(params_)) return false;
  KILN_CHECK_EQ(copies.size(), params_.size()) << "AdamW: one copy (or none) per parameter";
  for (size_t i = 0; i < copies.size(); ++i) {
    const Tensor& h = copies[i];
    KILN_CHECK(!h.defined() ||
               ((h.dtype() == DType::kBF16 || h.dtype() == DType::kF16) && h.is_contiguous() &&
                h.numel() == params_[i].tensor.numel() && h.device() == params_[i].tensor.device()))
        << "AdamW: copy " << h.str() << " of parameter " << params_[i].name;
  }
  copies_ = std::move(copies);
  return true;
}

#if KILN_WITH_CUDA
cuda::AdamWSlot AdamW::gpu_slot(size_t i) const {
  const nn::Parameter& p = params_[i];
  return {p.tensor,
          p.tensor.grad(),
          m_[i],
          v_[i],
          p.decay ? opts_.weight_decay : 0.0,
          i < copies_.size() ? copies_[i] : Tensor()};
}
#endif

void AdamW::step_gpu(double lr, double grad_scale) {
  ++t_;
#if KILN_WITH_CUDA
  std::vector<cuda::AdamWSlot> slots;
  size_t wanted = 0, written = 0;  // copies set; copies this step writes
  for (size_t i = 0; i < params_.size(); ++i) {
    cuda::AdamWSlot slot = gpu_slot(i);
    wanted += slot.h.defined();
    if (!slot.g.defined()) continue;  // unused this step: no update, as in PyTorch
    written += slot.h.defined();
    slots.push_back(std::move(slot));
  }
  cuda::adamw_step(slots, lr, opts_, t_, grad_scale);
  wrote_copies_ = wanted > 0 && written == wanted;
#else
  (void)lr;
  (void)grad_scale;
#endif
}

void AdamW::step(double lr) {
  if (on_gpu(params_)) return step_gpu(lr, 1.0);
  ++t_;
  wrote_copies_ = false;
  for (size_t i = 0; i < params_.size(); ++i) {
    const nn::Parameter& p = params_[i];
    Tensor g = p.tensor.grad();
    if (!g.defined()) continue;  // unused this step: no update, as in PyTorch
    g = raw::convert(g, DType::kF32);
    adamw_update(f32_data(p.tensor, p.name), f32_data(g, p.name), f32_data(m_[i], p.name),
                 f32_data(v_[i], p.name), p.tensor.numel(), lr, opts_,
                 p.decay ? opts_.weight_decay : 0.0, t_);
  }
}

std::vector<std::pair<std::string, Tensor>> AdamW::state() {
  std::vector<std::pair<std::string, Tensor>> out;
  for (size_t i = 0; i < params_.size(); ++i) {
    out.emplace_back("exp_avg/" + params_[i].name, m_[i]);
    out.emplace_back("exp_avg_sq/" + params_[i].name, v_[i]);
  }
  return out;
}

SGD::SGD(std::vector<nn::Parameter> params, double momentum, double weight_decay, bool nesterov)
    : Optimizer(std::move(params)),
      momentum_(momentum),
      weight_decay_(weight_decay),
      nesterov_(nesterov) {
  for (const nn::Parameter& p : params_)
    buf_.push_back(Tensor::zeros(p.tensor.shape(), DType::kF32, p.tensor.device()));
}

void SGD::step(double lr) {
  ++t_;
  const bool gpu = on_gpu(params_);
  for (size_t i = 0; i < params_.size(); ++i) {
    const nn::Parameter& p = params_[i];
    Tensor g = p.tensor.grad();
    if (!g.defined()) continue;
    if (gpu) {
#if KILN_WITH_CUDA
      cuda::sgd_step(p.tensor, g, buf_[i], lr, momentum_, p.decay ? weight_decay_ : 0.0, nesterov_);
#endif
      continue;
    }
    g = raw::convert(g, DType::kF32);
    sgd_update(f32_data(p.tensor, p.name), f32_data(g, p.name), f32_data(buf_[i], p.name),
               p.tensor.numel(), lr, momentum_, p.decay ? weight_decay_ : 0.0, nesterov_);
  }
}

std::vector<std::pair<std::string, Tensor>> SGD::state() {
  std::vector<std::pair<std::string, Tensor>> out;
  for (size_t i = 0; i < params_.size(); ++i)
    out.emplace_back("momentum/" + params_[i].name, buf_[i]);
  return out;
}

double grad_sum_squares(const std::vector<nn::Parameter>& params) {
#if KILN_WITH_CUDA
  if (on_gpu(params)) return cuda::sum_squares(defined_grads(params));  // one sync for all
#endif
  double sq = 0;
  for (const nn::Parameter& p : params) {
    Tensor g = p.tensor.grad();
    if (g.defined()) sq += sum_squares(g);
  }
  return sq;
}

double grad_norm(const std::vector<nn::Parameter>& params) {
  return std::sqrt(grad_sum_squares(params));
}

void scale_grads(const std::vector<nn::Parameter>& params, double s) {
#if KILN_WITH_CUDA
  if (on_gpu(params)) return cuda::scale(defined_grads(params), s);
#endif
  for (const nn::Parameter& p : params) {
    Tensor g = p.tensor.grad();
    if (!g.defined()) continue;
    mul_(g, s);
  }
}

double clip_grad_norm(const std::vector<nn::Parameter>& params, double max_norm) {
  const double norm = grad_norm(params);
  if (max_norm > 0 && norm > max_norm) scale_grads(params, max_norm / (norm + 1e-6));
  return norm;
}

bool grads_non_finite(const std::vector<nn::Parameter>& params) {
#if KILN_WITH_CUDA
  // One fused pass; an inf or NaN anywhere makes the f64 sum of squares non-finite (f32 squares
  // cannot overflow f64), exactly the CPU criterion below.
  if (on_gpu(params)) return !std::isfinite(cuda::sum_squares(defined_grads(params)));
#endif
  for (const nn::Parameter& p : params) {
    Tensor g = p.tensor.grad();
    if (!g.defined()) continue;
    if (!std::isfinite(sum_squares(g))) return true;
  }
  return false;
}

bool LossScaler::update(bool found_inf) {
  if (found_inf) {
    scale_ *= backoff_;
    clean_ = 0;
    ++skipped_;
    return false;
  }
  if (++clean_ >= growth_interval_) {
    scale_ *= growth_;
    clean_ = 0;
  }
  return true;
}

}  // namespace kiln::optim
