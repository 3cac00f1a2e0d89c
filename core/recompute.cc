// The checkpoint node: forward without a tape, backward by re-running fn and differentiating it
// (in a split backward: re-run once in the input pass, its weight half kept for the weight pass).
#include "core/recompute.h"

#include <memory>

#include "core/autograd.h"
#include "core/check.h"
#include "core/random.h"

namespace kiln {
namespace {

thread_local RecomputeLog* t_log = nullptr;

// Makes `log` this thread's recompute log while alive (nested regions restore the outer one).
class LogScope {
 public:
  explicit LogScope(RecomputeLog* log) : outer_(t_log) { t_log = log; }
  ~LogScope() { t_log = outer_; }
  LogScope(const LogScope&) = delete;
  LogScope& operator=(const LogScope&) = delete;

 private:
  RecomputeLog* outer_;
};

class CheckpointNode final : public Node {
 public:
  const char* name() const override { return "Checkpoint"; }
  RecomputeFn fn;
  size_t num_inputs = 0;       // saved[0, num_inputs) are the detached inputs
  std::vector<Tensor> params;  // leaves fn reads; edges num_inputs.. point at them
  Generator* gen = nullptr;
  GeneratorState rng;
  std::shared_ptr<RecomputeLog> log;  // what fn's ops kept from its first run

  // The recomputed graph's weight half, from the input pass of a split backward to its weight
  // pass (which then recomputes nothing).
  std::unique_ptr<DeferredWeights> weights;

  std::vector<Tensor> backward(const std::vector<Tensor>& grads) override {
    if (weights) return weight_pass();
    std::vector<Tensor> leaves, roots, root_grads;
    recompute(grads, &leaves, &roots, &root_grads);
    std::vector<Tensor> result(next.size());
    bool params_wanted = false;
    for (size_t j = 0; j < params.size(); ++j)
      params_wanted = params_wanted || wants(num_inputs + j);
    if (in_input_pass() && !params.empty() && !params_wanted) {
      // Split backward: the input gradients now, the recomputed graph's weight half kept.
      std::vector<Tensor> to;
      for (size_t i = 0; i < num_inputs; ++i)
        if (wants(i)) to.push_back(leaves[i]);
      weights = std::make_unique<DeferredWeights>(
          roots.empty() ? DeferredWeights() : backward_input_only(roots, root_grads, to));
      for (size_t i = 0; i < num_inputs; ++i)
        if (wants(i)) result[i] = leaves[i].grad();
      return result;
    }
    std::vector<Tensor> wrt;
    for (size_t i = 0; i < num_inputs; ++i)
      if (wants(i)) wrt.push_back(leaves[i]);
    for (size_t j = 0; j < params.size(); ++j)
      if (wants(num_inputs + j)) wrt.push_back(params[j]);
    std::vector<Tensor> got =
        roots.empty() ? std::vector<Tensor>(wrt.size()) : grad(roots, root_grads, wrt);
    size_t k = 0;
    for (size_t i = 0; i < num_inputs; ++i)
      if (wants(i)) result[i] = got[k++];
    for (size_t j = 0; j < params.size(); ++j)
      if (wants(num_inputs + j)) result[num_inputs + j] = got[k++];
    return result;
  }

 private:
  // Re-runs fn with the tape on, from the generator state it first saw: `leaves` the detached
  // inputs (requiring grad where wanted), `roots` its outputs that require grad, with `grads`.
  void recompute(const std::vector<Tensor>& grads, std::vector<Tensor>* leaves,
                 std::vector<Tensor>* roots, std::vector<Tensor>* root_grads) {
    GeneratorState after = gen->state();
    gen->set_state(rng);
    for (size_t i = 0; i < num_inputs; ++i) {
      Tensor x = saved[i].detach();
      if (wants(i)) x.set_requires_grad(true);
      leaves->push_back(x);
    }
    std::vector<Tensor> outs;
    {
      EnableGradGuard eg;
      log->replaying = true;
      log->next = 0;
      LogScope scope(log.get());
      outs = fn(*leaves);
    }
    gen->set_state(after);
    for (size_t i = 0; i < outs.size(); ++i) {
      if (outs[i].requires_grad()) {
        roots->push_back(outs[i]);
        root_grads->push_back(grads[i]);
      }
    }
  }

  // The weight pass after a split input pass: the parameters' gradients from the kept half.
  std::vector<Tensor> weight_pass() {
    for (size_t j = 0; j < params.size(); ++j)
      KILN_CHECK(wants(num_inputs + j)) << "internal: checkpoint weight pass without its weights";
    std::vector<Tensor> got = run_weights(std::move(*weights), params);
    weights.reset();
    std::vector<Tensor> result(next.size());
    for (size_t j = 0; j < params.size(); ++j) result[num_inputs + j] = got[j];
    return result;
  }
};

}  // namespace

RecomputeLog* recompute_log() { return t_log; }

std::vector<Tensor> checkpoint(const RecomputeFn& fn, const std::vector<Tensor>& inputs,
                               Generator* gen) {
  if (gen == nullptr) gen = &default_generator();
  const GeneratorState rng = gen->state();
  // Without a tape there is no recomputation, so nothing to keep for one (an enclosing region's
  // log, if any, stays current).
  auto log = grad_enabled() ? std::make_shared<RecomputeLog>() : nullptr;
  std::vector<Tensor> outs;
  std::vector<Tensor> params;
  {
    NoGradGuard ng;
    LeafCollector collector;
    LogScope scope(log ? log.get() : t_log);
    outs = fn(inputs);
    for (const Tensor& l : collector.leaves()) {
      bool is_input = false;
      for (const Tensor& x : inputs) is_input = is_input || x.same(l);
      if (!is_input) params.push_back(l);
    }
  }
  if (!grad_enabled()) return outs;
  std::vector<Tensor> edges_from = inputs;
  edges_from.insert(edges_from.end(), params.begin(), params.end());
  auto node = record<CheckpointNode>(edges_from);
  if (!node) return outs;
  node->fn = fn;
  node->num_inputs = inputs.size();
  node->params = params;
  node->gen = gen;
  node->rng = rng;
  node->log = log;
  for (const Tensor& x : inputs) node->saved.push_back(x.detach());
  for (size_t i = 0; i < outs.size(); ++i) {
    if (!is_floating(outs[i].dtype())) continue;
    // Outputs must not share an autograd identity with inputs (fn may return an input unchanged).
    Tensor o = outs[i].detach();
    set_history(o, node, static_cast<int>(i));
    outs[i] = o;
  }
  return outs;
}

Tensor checkpoint(const std::function<Tensor(const Tensor&)>& fn, const Tensor& input,
                  Generator* gen) {
  return checkpoint([fn](const std::vector<Tensor>& xs) { return std::vector<Tensor>{fn(xs[0])}; },
                    {input}, gen)[0];
}

}  // namespace kiln
