// The engine's entry points: backward(), grad(), and the split backward of zero-bubble pipeline
// schedules. The split marks the "critical" nodes (on a path from the roots to the inputs); the
// input pass runs only those, asking each for the gradients of its critical edges, and keeps the
// nodes that also feed the weight side (with their output gradients and saved tensors) for the
// weight pass, which runs their other edges and the rest of the graph down to the leaves.
#include <unordered_map>
#include <unordered_set>

#include "core/autograd.h"
#include "core/autograd_engine.h"
#include "core/check.h"

namespace kiln {
namespace {

using internal::EngineRun;

// The nodes reachable from the seeds from which one of `targets` is reachable.
std::unordered_set<Node*> critical_nodes(const std::vector<std::pair<Edge, Tensor>>& seeds,
                                         const std::vector<Node*>& targets) {
  std::unordered_map<Node*, std::vector<Node*>> parents;  // reached node -> nodes with edges to it
  std::vector<Node*> stack;
  for (const auto& [e, g] : seeds) {
    if (parents.emplace(e.fn.get(), std::vector<Node*>()).second) stack.push_back(e.fn.get());
  }
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    for (const Edge& e : n->next) {
      if (!e.fn) continue;
      auto [it, fresh] = parents.emplace(e.fn.get(), std::vector<Node*>());
      it->second.push_back(n);
      if (fresh) stack.push_back(e.fn.get());
    }
  }
  std::unordered_set<Node*> critical;
  for (Node* t : targets)
    if (parents.count(t) > 0 && critical.insert(t).second) stack.push_back(t);
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    for (Node* p : parents[n])
      if (critical.insert(p).second) stack.push_back(p);
  }
  return critical;
}

// The leaves' gradient accumulators (created if a leaf has none yet: then nothing reaches it).
std::vector<Node*> accumulators(const std::vector<Tensor>& leaves) {
  std::vector<Node*> out;
  for (const Tensor& t : leaves) {
    KILN_CHECK(t.is_leaf() && t.requires_grad())
        << "split backward / grad(): inputs must be leaves requiring grad, got " << t.str();
    out.push_back(internal::edge_for(t).fn.get());
  }
  return out;
}

// An engine run over the critical nodes of backward(roots, root_grads) towards `inputs`; seeds
// into other nodes go to `weight_seeds` (null: dropped).
EngineRun critical_run(const std::vector<Tensor>& roots, const std::vector<Tensor>& root_grads,
                       const std::vector<Tensor>& inputs, std::unordered_set<Node*>* critical,
                       std::vector<std::pair<Edge, Tensor>>* weight_seeds) {
  EngineRun run;
  std::vector<std::pair<Edge, Tensor>> seeds = internal::root_seeds(roots, root_grads);
  *critical = critical_nodes(seeds, accumulators(inputs));
  for (auto& s : seeds) {
    if (critical->count(s.first.fn.get()) > 0) {
      run.seeds.push_back(std::move(s));
    } else if (weight_seeds != nullptr) {
      weight_seeds->push_back(std::move(s));
    }
  }
  run.critical = critical;
  return run;
}

// The weight pass's engine run; leaves `deferred` empty.
EngineRun weight_run(DeferredWeights&& deferred) {
  EngineRun run;
  run.seeds = std::move(deferred.seeds);
  run.preset = std::move(deferred.nodes);
  deferred = DeferredWeights();
  return run;
}

}  // namespace

void backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& root_grads) {
  internal::CaptureScope no_capture(nullptr);
  EngineRun run;
  run.seeds = internal::root_seeds(roots, root_grads);
  internal::run_engine(run);
}

std::vector<Tensor> grad(const std::vector<Tensor>& roots, const std::vector<Tensor>& root_grads,
                         const std::vector<Tensor>& inputs) {
  std::unordered_map<TensorImpl*, Tensor> capture;
  for (const Tensor& t : inputs) capture[t.impl()] = Tensor();
  std::unordered_set<Node*> critical;
  EngineRun run = critical_run(roots, root_grads, inputs, &critical, nullptr);
  {
    internal::CaptureScope scope(&capture);
    internal::run_engine(run);
  }
  std::vector<Tensor> out;
  for (const Tensor& t : inputs) out.push_back(capture[t.impl()]);
  return out;
}

DeferredWeights backward_input_only(const std::vector<Tensor>& roots,
                                    const std::vector<Tensor>& root_grads,
                                    const std::vector<Tensor>& inputs) {
  DeferredWeights deferred;
  std::unordered_set<Node*> critical;
  EngineRun run = critical_run(roots, root_grads, inputs, &critical, &deferred.seeds);
  run.defer = &deferred;
  internal::CaptureScope no_capture(nullptr);
  internal::run_engine(run);
  return deferred;
}

void run_weights(DeferredWeights&& deferred) {
  EngineRun run = weight_run(std::move(deferred));
  internal::CaptureScope no_capture(nullptr);
  internal::run_engine(run);
}

std::vector<Tensor> run_weights(DeferredWeights&& deferred, const std::vector<Tensor>& leaves) {
  std::unordered_map<TensorImpl*, Tensor> capture;
  for (const Tensor& t : leaves) capture[t.impl()] = Tensor();
  EngineRun run = weight_run(std::move(deferred));
  {
    internal::CaptureScope scope(&capture);
    internal::run_engine(run);
  }
  std::vector<Tensor> out;
  for (const Tensor& t : leaves) out.push_back(capture[t.impl()]);
  return out;
}

}  // namespace kiln
