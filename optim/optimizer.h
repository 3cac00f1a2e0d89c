// Optimizers over named parameters: AdamW (decoupled weight decay) and SGD with momentum,
// global-norm gradient clipping and a dynamic loss scaler for fp16. Parameters are the fp32 master
// copies; the state (moments) is fp32 too. The per-element update kernels take raw spans so ZeRO
// can run them on the shard a rank owns.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/nn/module.h"

namespace kiln::optim {
namespace cuda {
struct AdamWSlot;  // optim/optimizer_cuda.h
}  // namespace cuda

struct AdamWOptions {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
};

// One AdamW step over n elements at step t (1-based). decay = 0 turns weight decay off.
void adamw_update(float* p, const float* g, float* m, float* v, int64_t n, double lr,
                  const AdamWOptions& o, double decay, int64_t t);
// SGD with momentum (PyTorch's form): buf = momentum * buf + (g + wd * p); p -= lr * buf, or with
// Nesterov p -= lr * ((g + wd * p) + momentum * buf).
void sgd_update(float* p, const float* g, float* buf, int64_t n, double lr, double momentum,
                double weight_decay, bool nesterov = false);

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  virtual void step(double lr) = 0;
  // The step with every gradient multiplied by grad_scale first (the fp16 unscale or the clipping
  // factor), with the same result as scale_grads(params(), grad_scale) then step(lr), bit for bit.
  // The default does exactly that; AdamW on the GPU folds the factor into its kernel for f32
  // gradients (one pass over the gradients less; KILN_FOLD_GRAD_SCALE=0 turns the fold off).
  virtual void step_scaled(double lr, double grad_scale);
  // Named state tensors for checkpoints ("exp_avg/h.0.attn.c_attn.weight", "step", ...).
  virtual std::vector<std::pair<std::string, Tensor>> state() = 0;
  int64_t steps() const { return t_; }
  void set_steps(int64_t t) { t_ = t; }
  void zero_grad();
  const std::vector<nn::Parameter>& params() const { return params_; }
  // 16-bit copies of the parameters written by the step itself (nn::PrecastCache,
  // KILN_FUSED_PARAM_CAST): copies[i] (undefined: none) is a contiguous bf16 or f16 tensor of
  // params()[i]'s numel on its device, and every later step that updates params()[i] also writes
  // its value rounded to that dtype there. Returns whether this optimizer does so (AdamW on the
  // GPU); one that does not keeps nothing.
  virtual bool set_param_copies(std::vector<Tensor> copies) {
    (void)copies;
    return false;
  }
  // Whether the last step updated every parameter given a copy and wrote each of those copies
  // (false when no copies are set, or some such parameter had no gradient).
  virtual bool last_step_wrote_copies() const { return false; }
  // KILN_OVERLAP_OPTIM: step_scaled's update (the same arithmetic, bit for bit) launched on
  // `stream` (a cudaStream_t the caller has made wait for the gradients) group by group: group[i]
  // in [0, groups) is params()[i]'s, groups go in increasing order, and after the launches of
  // group g (none, for a group without parameters) it calls group_done(g). With zero_grads every
  // gradient is set to 0 after it is read, so the step replaces zero_grad too (without, the caller
  // marks them stale: DataParallel::zero_grad at stage 0). Returns false, having done nothing,
  // where it cannot do all of that without work on the compute stream or temporaries: the default
  // (every optimizer but AdamW on a GPU), a parameter without a gradient, a gradient that is not
  // a contiguous f32 tensor, grad_scale != 1 with KILN_FOLD_GRAD_SCALE=0.
  virtual bool step_grouped(double lr, double grad_scale, const std::vector<int>& group, int groups,
                            void* stream, bool zero_grads,
                            const std::function<void(int)>& group_done) {
    (void)lr, (void)grad_scale, (void)group, (void)groups, (void)stream, (void)zero_grads;
    (void)group_done;
    return false;
  }

 protected:
  explicit Optimizer(std::vector<nn::Parameter> params) : params_(std::move(params)) {}
  std::vector<nn::Parameter> params_;
  int64_t t_ = 0;
};

class AdamW final : public Optimizer {
 public:
  AdamW(std::vector<nn::Parameter> params, AdamWOptions opts);
  void step(double lr) override;
  void step_scaled(double lr, double grad_scale) override;
  std::vector<std::pair<std::string, Tensor>> state() override;
  bool set_param_copies(std::vector<Tensor> copies) override;  // on the GPU only
  bool last_step_wrote_copies() const override { return wrote_copies_; }
  bool step_grouped(double lr, double grad_scale, const std::vector<int>& group, int groups,
                    void* stream, bool zero_grads,
                    const std::function<void(int)>& group_done) override;

 private:
  void step_gpu(double lr, double grad_scale);
  cuda::AdamWSlot gpu_slot(size_t i) const;  // parameter i's kernel inputs (its copy, if set)
  AdamWOptions opts_;
  std::vector<Tensor> m_, v_;   // fp32, shaped like each parameter
  std::vector<Tensor> copies_;  // set_param_copies: per parameter, or empty
  bool wrote_copies_ = false;
};

class SGD final : public Optimizer {
 public:
  SGD(std::vector<nn::Parameter> params, double momentum, double weight_decay,
      bool nesterov = false);
  void step(double lr) override;
  std::vector<std::pair<std::string, Tensor>> state() override;

 private:
  double momentum_, weight_decay_;
  bool nesterov_;
  std::vector<Tensor> buf_;
};

// Sum of squares of all gradients (missing ones count as zero): f64, in parameter order on the CPU,
// one device reduction and a single host sync on the GPU.
double grad_sum_squares(const std::vector<nn::Parameter>& params);
// Global L2 norm of all gradients (missing grads count as zero), accumulated in f64 in a fixed
// order.
double grad_norm(const std::vector<nn::Parameter>& params);
// Scales gradients so their global norm is at most max_norm; returns the norm before clipping.
double clip_grad_norm(const std::vector<nn::Parameter>& params, double max_norm);
// Multiplies every gradient by s in place.
void scale_grads(const std::vector<nn::Parameter>& params, double s);
// True when any gradient holds an inf or NaN.
bool grads_non_finite(const std::vector<nn::Parameter>& params);

// Dynamic loss scaling for fp16: multiply the loss by scale(); after backward call update() with
// whether any gradient overflowed. An overflow halves the scale and the step must be skipped;
// `growth_interval` clean steps in a row double it.
class LossScaler {
 public:
  // The scale grows by `growth` after `growth_interval` clean steps and shrinks by `backoff` on an
  // overflow (the step is then skipped).
  LossScaler(double init = 65536.0, int growth_interval = 2000, double growth = 2.0,
             double backoff = 0.5)
      : scale_(init), growth_interval_(growth_interval), growth_(growth), backoff_(backoff) {}
  double scale() const { return scale_; }
  // Returns true when the step should be applied (no overflow).
  bool update(bool found_inf);
  int64_t skipped() const { return skipped_; }
  int64_t good_steps() const { return clean_; }  // clean steps since the last change of scale
  // Checkpoint restore: the state scale(), good_steps() and skipped() reported.
  void restore(double scale, int64_t good_steps, int64_t skipped) {
    scale_ = scale;
    clean_ = static_cast<int>(good_steps);
    skipped_ = skipped;
  }

 private:
  double scale_;
  int growth_interval_;
  double growth_, backoff_;
  int clean_ = 0;
  int64_t skipped_ = 0;
};

}  // namespace kiln::optim
