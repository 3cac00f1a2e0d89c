// The dynamic autograd tape. A differentiable op calls record<MyNode>({inputs}) which returns a
// node (or null when no input needs a gradient), stores in it exactly what its backward needs, and
// attaches it to its outputs with set_history(). Node::backward is pure virtual, so a node type
// without a backward does not compile. backward() walks nodes in reverse creation order as their
// gradients complete; a leaf's GradReadyHooks fire the moment its gradient for the pass is final.
// backward_input_only() + run_weights() split one backward into the input-gradient pass and the
// weight-gradient pass (zero-bubble pipeline schedules; core/autograd_split.cc).
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <vector>

#include "core/tensor.h"

namespace kiln {

struct Edge {
  std::shared_ptr<Node> fn;  // the node that produced the input (null: input needs no grad)
  int output_nr = 0;         // which output of fn
};

struct OutputMeta {
  Shape shape;
  DType dtype;
  Device device;
};

class Node : public std::enable_shared_from_this<Node> {
 public:
  Node();
  virtual ~Node() = default;
  // grads[i] is d(loss)/d(output i), always defined (zeros where an output got no gradient).
  // Returns one gradient per input edge, in record() order; undefined where the input needs none.
  // Only the edges wants() marks are asked for: a node may skip the others (the engine drops what
  // it returns for them), which is how a split backward keeps weight GEMMs out of the input pass.
  virtual std::vector<Tensor> backward(const std::vector<Tensor>& grads) = 0;
  virtual const char* name() const = 0;
  // Whether a gradient may reach this node in another float dtype than its output's (the node
  // converts it itself): AccumulateGrad, which adds 16-bit gradients into fp32 .grad in one pass.
  virtual bool converts_grad_dtype() const { return false; }
  // Whether this node hands its gradient unchanged to the leaf accumulator of next[0] (a Cast of
  // an f32 leaf): accumulation_target() looks through it.
  virtual bool forwards_to_leaf() const { return false; }

  // Whether this backward call asks for the gradient of input edge i.
  bool wants(size_t i) const { return wanted.empty() ? next[i].fn != nullptr : wanted[i] != 0; }

  std::vector<Edge> next;
  std::vector<char> wanted;  // set by the engine for one backward call; empty: every edge's node
  std::vector<OutputMeta> outputs;
  std::vector<Tensor> saved;  // what backward needs; the engine frees it once backward has run
  uint64_t seq;               // creation order; later nodes run first
};

// ---- grad mode ----
bool grad_enabled();
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();

 private:
  bool prev_;
};
class EnableGradGuard {
 public:
  EnableGradGuard();
  ~EnableGradGuard();

 private:
  bool prev_;
};

// Collects the leaves requiring grad that ops see while grad mode is off (activation recompute uses
// it to find the parameters a block reads).
class LeafCollector {
 public:
  LeafCollector();
  ~LeafCollector();
  const std::vector<Tensor>& leaves() const { return leaves_; }
  void add(const Tensor& t);

 private:
  LeafCollector* prev_;
  std::vector<Tensor> leaves_;
};

namespace internal {
bool any_requires_grad(std::initializer_list<const Tensor*> inputs);
void collect_leaves(std::initializer_list<const Tensor*> inputs);
Edge edge_for(const Tensor& t);
}  // namespace internal

// Returns a new node with edges to `inputs` when grad mode is on and any input requires grad, else
// null.
template <typename N>
std::shared_ptr<N> record(std::initializer_list<const Tensor*> inputs) {
  if (!grad_enabled()) {
    internal::collect_leaves(inputs);
    return nullptr;
  }
  if (!internal::any_requires_grad(inputs)) return nullptr;
  auto node = std::make_shared<N>();
  node->next.reserve(inputs.size());
  for (const Tensor* t : inputs) node->next.push_back(internal::edge_for(*t));
  return node;
}
template <typename N>
std::shared_ptr<N> record(const std::vector<Tensor>& inputs) {
  if (!grad_enabled()) {
    for (const Tensor& t : inputs) internal::collect_leaves({&t});
    return nullptr;
  }
  bool any = false;
  for (const Tensor& t : inputs) any = any || t.requires_grad();
  if (!any) return nullptr;
  auto node = std::make_shared<N>();
  for (const Tensor& t : inputs) node->next.push_back(internal::edge_for(t));
  return node;
}

// Makes `out` the output `output_nr` of `node` (no-op when node is null).
void set_history(Tensor& out, const std::shared_ptr<Node>& node, int output_nr = 0);
template <typename N>
void set_history(Tensor& out, const std::shared_ptr<N>& node, int output_nr = 0) {
  set_history(out, std::static_pointer_cast<Node>(node), output_nr);
}

// Direct accumulation of a weight gradient (as Megatron's gradient-accumulation fusion): when input
// edge `e` leads, directly or through one Cast of an f32 leaf on the same device
// (Node::forwards_to_leaf), to a leaf whose .grad is defined, f32, contiguous, of `shape` and on
// `device`, and grad() is not capturing that leaf,
// returns that .grad: the node adds its gradient into it (e.g. a GEMM with beta = 1, no 16-bit
// rounding of the product) and returns accumulated_marker() for the edge. The marker travels
// through the Cast; AccumulateGrad takes it as "already added" and fires the leaf's hooks as for
// any gradient. Undefined otherwise (the node returns its gradient as usual).
// A stale .grad (Tensor::mark_grad_stale) is zeroed first, unless `overwrite` is given: then
// *overwrite says whether it was stale, and the caller, which claims it by asking, must write
// every element of it (e.g. beta = 0 instead of 1) when it is, and may then only add. Either way
// the .grad is current afterwards.
Tensor accumulation_target(const Edge& e, const Shape& shape, Device device,
                           bool* overwrite = nullptr);
// Whether accumulation_target would return a .grad, asked without claiming or zeroing it.
bool offers_accumulation_target(const Edge& e, const Shape& shape, Device device);
// The gradient that says "already added into the leaf's .grad" (a 0-element tensor, one instance).
const Tensor& accumulated_marker();
bool is_accumulated_marker(const Tensor& g);

// Runs backward from `roots` with `root_grads` (undefined -> ones), accumulating into leaves'
// .grad.
void backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& root_grads);
// Returns d(roots)/d(inputs) without touching any .grad or firing hooks; runs only the nodes on a
// path to the inputs. REQUIRES: inputs are leaves requiring grad.
std::vector<Tensor> grad(const std::vector<Tensor>& roots, const std::vector<Tensor>& root_grads,
                         const std::vector<Tensor>& inputs);

// The weight half of a split backward: the nodes on a path to the inputs that also feed the weight
// side (their output gradients kept, their saved tensors alive), and the root gradients that go
// straight to the weight side. Move-only; run once with run_weights().
struct DeferredWeights {
  DeferredWeights() = default;
  DeferredWeights(DeferredWeights&&) = default;
  DeferredWeights& operator=(DeferredWeights&&) = default;
  DeferredWeights(const DeferredWeights&) = delete;
  DeferredWeights& operator=(const DeferredWeights&) = delete;
  bool empty() const { return nodes.empty() && seeds.empty(); }

  struct Pending {
    std::shared_ptr<Node> node;
    std::vector<Tensor> grads;  // its output gradients, one per output
    std::vector<char> weight;   // per input edge: whether the weight pass runs it
  };
  std::vector<Pending> nodes;
  std::vector<std::pair<Edge, Tensor>> seeds;  // root gradients into weight-side nodes
};

// The input pass of backward(roots, root_grads): runs only the nodes on a path from the roots to
// `inputs` (leaves requiring grad; empty: none), asking them for the gradients along that path
// only, and accumulates into the inputs' .grad (their hooks fire). Everything else is returned.
DeferredWeights backward_input_only(const std::vector<Tensor>& roots,
                                    const std::vector<Tensor>& root_grads,
                                    const std::vector<Tensor>& inputs);
// The weight pass: the deferred nodes' remaining edges, then the rest of the graph down to the
// leaves (.grad accumulated, grad-ready hooks fired as in backward()). After both passes every
// .grad equals backward()'s bit for bit (a buffer summed from three or more nodes may add in
// another order).
void run_weights(DeferredWeights&& deferred);
// run_weights() returning the gradients that reach `leaves` instead of accumulating them into their
// .grad (a recompute node's weight pass over its recomputed graph).
std::vector<Tensor> run_weights(DeferredWeights&& deferred, const std::vector<Tensor>& leaves);
// Inside Node::backward: whether this call belongs to the input pass of a split backward, so that
// the edges not asked for now will be asked for by run_weights() (a node may keep work for then).
bool in_input_pass();

}  // namespace kiln
