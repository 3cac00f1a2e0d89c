// The checkpoint node: forward without a tape, backward by re-running fn and differentiating it.
#include "core/recompute.h"

#include "core/autograd.h"
#include "core/check.h"
#include "core/random.h"

namespace kiln {
namespace {

class CheckpointNode final : public Node {
 public:
  const char* name() const override { return "Checkpoint"; }
  RecomputeFn fn;
  size_t num_inputs = 0;       // saved[0, num_inputs) are the detached inputs
  std::vector<Tensor> params;  // leaves fn reads; edges num_inputs.. point at them
  Generator* gen = nullptr;
  GeneratorState rng;

  std::vector<Tensor> backward(const std::vector<Tensor>& grads) override {
    // Re-run fn with the tape on, from the generator state it first saw.
    GeneratorState after = gen->state();
    gen->set_state(rng);
    std::vector<Tensor> leaves;
    for (size_t i = 0; i < num_inputs; ++i) {
      Tensor x = saved[i].detach();
      if (next[i].fn) x.set_requires_grad(true);
      leaves.push_back(x);
    }
    std::vector<Tensor> outs;
    {
      EnableGradGuard eg;
      outs = fn(leaves);
    }
    gen->set_state(after);
    std::vector<Tensor> roots, root_grads;
    for (size_t i = 0; i < outs.size(); ++i) {
      if (outs[i].requires_grad()) {
        roots.push_back(outs[i]);
        root_grads.push_back(grads[i]);
      }
    }
    std::vector<Tensor> wrt;
    for (size_t i = 0; i < num_inputs; ++i)
      if (next[i].fn) wrt.push_back(leaves[i]);
    for (const Tensor& p : params) wrt.push_back(p);
    std::vector<Tensor> got =
        roots.empty() ? std::vector<Tensor>(wrt.size()) : grad(roots, root_grads, wrt);
    std::vector<Tensor> result(next.size());
    size_t k = 0;
    for (size_t i = 0; i < num_inputs; ++i)
      if (next[i].fn) result[i] = got[k++];
    for (size_t j = 0; j < params.size(); ++j) result[num_inputs + j] = got[k++];
    return result;
  }
};

}  // namespace

std::vector<Tensor> checkpoint(const RecomputeFn& fn, const std::vector<Tensor>& inputs,
                               Generator* gen) {
  if (gen == nullptr) gen = &default_generator();
  const GeneratorState rng = gen->state();
  std::vector<Tensor> outs;
  std::vector<Tensor> params;
  {
    NoGradGuard ng;
    LeafCollector collector;
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
