// Internal to core/autograd*.cc: one run of the backward engine, configured for a full backward,
// grad(), or either half of a split backward (core/autograd_split.cc).
#pragma once

#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "core/autograd.h"

namespace kiln::internal {

struct EngineRun {
  std::vector<std::pair<Edge, Tensor>> seeds;    // gradients flowing into these edges' nodes
  std::vector<DeferredWeights::Pending> preset;  // nodes run with fixed gradients and edges
  // Non-null: the run follows only edges into these nodes (grad(), the input pass).
  const std::unordered_set<Node*>* critical = nullptr;
  // Non-null (with critical): a node with edges outside it is kept here for the weight pass.
  DeferredWeights* defer = nullptr;
};

// Runs nodes as their gradients complete, latest-created first, over the edges `run` follows.
void run_engine(EngineRun& run);

// The root gradients as seeds (undefined -> ones for a scalar root), checked against the roots.
std::vector<std::pair<Edge, Tensor>> root_seeds(const std::vector<Tensor>& roots,
                                                const std::vector<Tensor>& root_grads);

// While alive, leaves in `capture` (impl -> slot) receive their gradients in the slot instead of
// .grad (grad()); null: every leaf accumulates into .grad.
class CaptureScope {
 public:
  explicit CaptureScope(std::unordered_map<TensorImpl*, Tensor>* capture);
  ~CaptureScope();
  CaptureScope(const CaptureScope&) = delete;
  CaptureScope& operator=(const CaptureScope&) = delete;

 private:
  std::unordered_map<TensorImpl*, Tensor>* prev_;
};

}  // namespace kiln::internal
