// What a model offers parallel wrappers that act on it from outside: its repeated blocks, the
// parameters of each, a hook around every block call (ZeRO-3 gathers a block's parameters
// around it; pipeline stages split at block boundaries), and its tensor-parallel plan. models/
// implements it; parallel/ uses it, so the dependency points down (models -> parallel) and models
// never mention ranks.
#pragma once

#include <functional>
#include <vector>

#include "core/nn/module.h"
#include "parallel/tp_plan.h"

namespace kiln::parallel {

class Shardable {
 public:
  // hook(i, x, run) must return run(x) or an equivalent.
  using BlockHook = std::function<Tensor(int block, const Tensor& x,
                                         const std::function<Tensor(const Tensor&)>& run)>;
  virtual ~Shardable() = default;
  virtual nn::Module& module() = 0;
  // Blocks this model (or model stage) holds; hooks and indices below count them from 0.
  virtual int num_blocks() const = 0;
  // For each block, the indices (into module().parameters()) of its parameters; the others are
  // "root" parameters (embeddings, final norm, head).
  virtual std::vector<std::vector<int>> block_parameter_indices() const = 0;
  virtual void set_block_hook(BlockHook h) = 0;
  // How tensor parallelism splits each parameter of module() (one entry per parameter).
  virtual TpPlan tensor_parallel_plan() const = 0;

  // The classifier, replaceable from outside (the vocab-parallel one of tensor parallelism).
  // logits: (x (B, T, C), weight (V', C) in the compute dtype) -> (B, T, V) logits;
  // loss: (x (B, T, C), weight, targets (B, T)) -> the mean cross-entropy, a 0-dim tensor.
  struct ClassifierHooks {
    std::function<Tensor(const Tensor& x, const Tensor& weight)> logits;
    std::function<Tensor(const Tensor& x, const Tensor& weight, const Tensor& targets)> loss;
  };
  virtual void set_classifier_hooks(ClassifierHooks h) = 0;
  // Maps the embedding's (B, T, C) output before the first block (sequence parallel: this rank's
  // chunk of the sequence). Unset: identity.
  virtual void set_embedding_output_hook(std::function<Tensor(const Tensor&)> h) = 0;
};

}  // namespace kiln::parallel
