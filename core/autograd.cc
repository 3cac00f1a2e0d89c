// The tape and the backward engine: dependency counting over the edges a run follows, a ready
// queue ordered by node creation (latest first), gradient buffers per node output, leaf
// accumulation with grad-ready hooks, and capture mode for grad(). The entry points (backward,
// grad, the split passes) are in core/autograd_split.cc.
#include "core/autograd.h"

#include <atomic>
#include <queue>
#include <unordered_map>
#include <unordered_set>

#include "core/autograd_engine.h"
#include "core/backend.h"
#include "core/check.h"
#include "core/ops/elementwise.h"

namespace kiln {
namespace {

std::atomic<uint64_t> g_seq{0};
thread_local bool t_grad_enabled = true;
thread_local LeafCollector* t_collector = nullptr;
// In grad() mode: leaf impl -> slot that receives its gradient instead of .grad.
thread_local std::unordered_map<TensorImpl*, Tensor>* t_capture = nullptr;
// Inside a run of the input pass of a split backward (a nested run saves and restores it).
thread_local bool t_input_pass = false;

// Sums two gradients out of place (buffers may alias tensors other nodes still hold).
Tensor add_grads(const Tensor& a, const Tensor& b) {
  NoGradGuard ng;
  return add(a, b);
}

// The node that feeds a leaf: accumulates into .grad (or the capture slot) and fires hooks.
class AccumulateGrad final : public Node {
 public:
  explicit AccumulateGrad(std::shared_ptr<TensorImpl> leaf) : leaf_(std::move(leaf)) {
    outputs.push_back({leaf_->shape, leaf_->dtype, leaf_->storage->device()});
  }
  const char* name() const override { return "AccumulateGrad"; }
  bool converts_grad_dtype() const override { return true; }
  std::vector<Tensor> backward(const std::vector<Tensor>& grads) override {
    Tensor g = grads[0];
    if (is_accumulated_marker(g)) {  // a node added its gradient into .grad already
      KILN_CHECK(!leaf_->grad_stale)
          << "internal: a direct write left " << leaf_->name << "'s .grad marked stale";
      Tensor leaf(leaf_);
      for (auto& hook : leaf_->ready_hooks) hook(leaf);
      return {};
    }
    if (t_capture) {
      auto it = t_capture->find(leaf_.get());
      if (it != t_capture->end()) {
        if (g.dtype() != leaf_->dtype) g = raw::convert(g, leaf_->dtype);
        it->second = it->second.defined() ? add_grads(it->second, g) : g;
        return {};
      }
    }
    Tensor& acc = leaf_->grad;
    if (!acc.defined()) {
      // Own a fresh buffer: gradients may alias tensors other nodes hold, and later
      // accumulation (micro-steps) writes into .grad in place. The copy converts a 16-bit
      // gradient (passed on unconverted by a Cast node) to the leaf's dtype.
      acc = Tensor::empty(g.shape(), leaf_->dtype, g.device());
      raw::copy(acc, g);
      leaf_->grad_stale = false;
    } else if (leaf_->grad_stale) {  // the old values count as zeros: written over (converted)
      raw::copy(acc, g);
      leaf_->grad_stale = false;
    } else {
      NoGradGuard ng;
      add_(acc, g);
    }
    Tensor leaf(leaf_);
    for (auto& hook : leaf_->ready_hooks) hook(leaf);
    return {};
  }
  // Whether a node may add into .grad directly (see accumulation_target).
  bool offers_target(const Shape& shape, Device device) const {
    if (t_capture && t_capture->count(leaf_.get())) return false;
    const Tensor& acc = leaf_->grad;
    return acc.defined() && acc.dtype() == DType::kF32 && acc.is_contiguous() &&
           acc.shape() == shape && acc.device() == device;
  }
  // That .grad, or null.
  Tensor* direct_target(const Shape& shape, Device device, bool* overwrite) {
    if (!offers_target(shape, device)) return nullptr;
    Tensor& acc = leaf_->grad;
    if (overwrite != nullptr) {
      *overwrite = leaf_->grad_stale;  // the caller writes every element (claimed)
    } else if (leaf_->grad_stale) {
      acc.zero_();  // the caller adds
    }
    leaf_->grad_stale = false;
    return &acc;
  }

 private:
  std::shared_ptr<TensorImpl> leaf_;
};

}  // namespace

Node::Node() : seq(g_seq.fetch_add(1)) {}

const Tensor& accumulated_marker() {
  static const Tensor* marker = new Tensor(Tensor::empty({0}, DType::kF32, Device::cpu()));
  return *marker;
}

bool is_accumulated_marker(const Tensor& g) { return g.defined() && g.same(accumulated_marker()); }

namespace {
AccumulateGrad* leaf_accumulator(const Edge& e) {
  Node* n = e.fn.get();
  if (n && n->forwards_to_leaf()) n = n->next[0].fn.get();
  return dynamic_cast<AccumulateGrad*>(n);
}
}  // namespace

Tensor accumulation_target(const Edge& e, const Shape& shape, Device device, bool* overwrite) {
  if (overwrite != nullptr) *overwrite = false;
  AccumulateGrad* acc = leaf_accumulator(e);
  Tensor* t = acc ? acc->direct_target(shape, device, overwrite) : nullptr;
  return t ? *t : Tensor();
}

bool offers_accumulation_target(const Edge& e, const Shape& shape, Device device) {
  const AccumulateGrad* acc = leaf_accumulator(e);
  return acc != nullptr && acc->offers_target(shape, device);
}

bool grad_enabled() { return t_grad_enabled; }
bool in_input_pass() { return t_input_pass; }
NoGradGuard::NoGradGuard() : prev_(t_grad_enabled) { t_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { t_grad_enabled = prev_; }
EnableGradGuard::EnableGradGuard() : prev_(t_grad_enabled) { t_grad_enabled = true; }
EnableGradGuard::~EnableGradGuard() { t_grad_enabled = prev_; }

LeafCollector::LeafCollector() : prev_(t_collector) { t_collector = this; }
LeafCollector::~LeafCollector() { t_collector = prev_; }
void LeafCollector::add(const Tensor& t) {
  for (const Tensor& l : leaves_)
    if (l.same(t)) return;
  leaves_.push_back(t);
}

namespace internal {

bool any_requires_grad(std::initializer_list<const Tensor*> inputs) {
  for (const Tensor* t : inputs)
    if (t->requires_grad()) return true;
  return false;
}

void collect_leaves(std::initializer_list<const Tensor*> inputs) {
  if (!t_collector) return;
  for (const Tensor* t : inputs)
    if (t->requires_grad() && t->is_leaf()) t_collector->add(*t);
}

Edge edge_for(const Tensor& t) {
  if (!t.requires_grad()) return {};
  TensorImpl* impl = t.impl();
  if (impl->grad_fn) return {impl->grad_fn, impl->output_nr};
  std::shared_ptr<Node> acc = impl->grad_accumulator.lock();
  if (!acc) {
    acc = std::make_shared<AccumulateGrad>(t.impl_ptr());
    impl->grad_accumulator = acc;
  }
  return {acc, 0};
}

}  // namespace internal

void set_history(Tensor& out, const std::shared_ptr<Node>& node, int output_nr) {
  if (!node) return;
  TensorImpl* impl = out.impl();
  impl->requires_grad = true;
  impl->grad_fn = node;
  impl->output_nr = output_nr;
  if (static_cast<int>(node->outputs.size()) <= output_nr) node->outputs.resize(output_nr + 1);
  node->outputs[output_nr] = {out.shape(), out.dtype(), out.device()};
}

namespace internal {
namespace {

struct SeqLess {
  bool operator()(Node* a, Node* b) const { return a->seq < b->seq; }
};

// Per input edge of n: whether the run follows it (an edge with a node, into `critical` if given).
std::vector<char> edges_followed(const Node* n, const std::unordered_set<Node*>* critical) {
  std::vector<char> m(n->next.size());
  for (size_t i = 0; i < m.size(); ++i) {
    Node* c = n->next[i].fn.get();
    m[i] = c != nullptr && (critical == nullptr || critical->count(c) > 0);
  }
  return m;
}

// The edges of n with a node that `followed` leaves out (the weight side in an input pass).
std::vector<char> edges_left(const Node* n, const std::vector<char>& followed, bool* any) {
  std::vector<char> m(n->next.size());
  *any = false;
  for (size_t i = 0; i < m.size(); ++i) {
    m[i] = n->next[i].fn != nullptr && !followed[i];
    *any = *any || m[i];
  }
  return m;
}

}  // namespace

std::vector<std::pair<Edge, Tensor>> root_seeds(const std::vector<Tensor>& roots,
                                                const std::vector<Tensor>& root_grads) {
  KILN_CHECK_EQ(roots.size(), root_grads.size());
  std::vector<std::pair<Edge, Tensor>> seeds;
  for (size_t i = 0; i < roots.size(); ++i) {
    const Tensor& r = roots[i];
    KILN_CHECK(r.requires_grad()) << "backward on a tensor that does not require grad: " << r.str();
    Tensor g = root_grads[i];
    if (!g.defined()) {
      KILN_CHECK(r.numel() == 1) << "backward without a gradient needs a scalar, got " << r.str();
      g = Tensor::full(r.shape(), 1.0, r.dtype(), r.device());
    }
    KILN_CHECK(g.shape() == r.shape()) << "backward: gradient " << g.str() << " for " << r.str();
    seeds.push_back({edge_for(r), g});
  }
  return seeds;
}

CaptureScope::CaptureScope(std::unordered_map<TensorImpl*, Tensor>* capture) : prev_(t_capture) {
  t_capture = capture;
}
CaptureScope::~CaptureScope() { t_capture = prev_; }

void run_engine(EngineRun& run) {
  NoGradGuard no_grad;
  struct InputPass {
    bool prev = t_input_pass;
    ~InputPass() { t_input_pass = prev; }
  } restore;
  t_input_pass = run.defer != nullptr;
  // 1. The edges each reached node follows, and dependency counts over them.
  std::unordered_map<Node*, std::vector<char>> follow;
  std::unordered_map<Node*, int> deps;
  std::vector<Node*> stack;
  for (const auto& p : run.preset) {
    follow[p.node.get()] = p.weight;
    stack.push_back(p.node.get());
  }
  for (const auto& [e, g] : run.seeds) {
    if (follow.count(e.fn.get()) == 0) {
      follow[e.fn.get()] = edges_followed(e.fn.get(), run.critical);
      stack.push_back(e.fn.get());
    }
  }
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    const std::vector<char>& m = follow[n];  // element references survive rehashing
    for (size_t i = 0; i < m.size(); ++i) {
      if (!m[i]) continue;
      Node* c = n->next[i].fn.get();
      deps[c]++;
      if (follow.count(c) == 0) {
        follow[c] = edges_followed(c, run.critical);
        stack.push_back(c);
      }
    }
  }
  // 2. Seed the buffers and run nodes as their gradients complete, latest-created first.
  std::unordered_map<Node*, std::vector<Tensor>> buffers;
  auto accumulate = [&](const Edge& e, const Tensor& g) {
    auto& buf = buffers[e.fn.get()];
    if (buf.size() < e.fn->outputs.size()) buf.resize(e.fn->outputs.size());
    Tensor& slot = buf[e.output_nr];
    const DType want = e.fn->outputs[e.output_nr].dtype;
    if (!slot.defined() || is_accumulated_marker(slot)) {
      slot = g;  // (a marker's gradient is in the leaf's .grad already)
    } else if (is_accumulated_marker(g)) {
      // keep the slot: the marker's share is in the leaf's .grad already
    } else if (slot.dtype() == want && g.dtype() == want) {
      slot = add_grads(slot, g);
    } else {  // 16-bit gradients passed on by Cast nodes (a tied weight): summed in its dtype
      slot = add_grads(raw::convert(slot, want), raw::convert(g, want));
    }
  };
  std::priority_queue<Node*, std::vector<Node*>, SeqLess> ready;
  for (auto& [e, g] : run.seeds) accumulate(e, g);
  for (auto& p : run.preset) buffers[p.node.get()] = std::move(p.grads);
  for (const auto& [n, m] : follow)
    if (deps[n] == 0) ready.push(n);
  while (!ready.empty()) {
    Node* n = ready.top();
    ready.pop();
    const std::vector<char>& m = follow[n];
    auto it = buffers.find(n);
    std::vector<Tensor> in_grads;
    if (it != buffers.end()) {  // no buffer: nothing flowed here; only release the inputs
      std::vector<Tensor> grads = std::move(it->second);
      buffers.erase(it);
      grads.resize(n->outputs.size());
      for (size_t i = 0; i < grads.size(); ++i) {
        if (!grads[i].defined()) {
          const OutputMeta& om = n->outputs[i];
          grads[i] = Tensor::zeros(om.shape, om.dtype, om.device);
        }
      }
      n->wanted = m;
      in_grads = n->backward(grads);
      n->wanted.clear();
      bool weight_side = false;
      std::vector<char> left = run.defer ? edges_left(n, m, &weight_side) : std::vector<char>();
      if (weight_side) {  // keeps its saved tensors for the weight pass
        run.defer->nodes.push_back({n->shared_from_this(), std::move(grads), std::move(left)});
      } else {
        n->saved.clear();  // frees activations as backward proceeds
      }
    }
    for (size_t i = 0; i < m.size(); ++i) {
      if (!m[i]) continue;  // gradients of edges not asked for are dropped
      const Edge& e = n->next[i];
      if (i < in_grads.size() && in_grads[i].defined()) {
        const OutputMeta& om = e.fn->outputs[e.output_nr];
        KILN_CHECK(in_grads[i].shape() == om.shape || is_accumulated_marker(in_grads[i]))
            << "internal: " << n->name() << " returned gradient " << in_grads[i].str()
            << " for an input of shape " << shape_str(om.shape);
        accumulate(e, in_grads[i]);
      }
      if (--deps[e.fn.get()] == 0) ready.push(e.fn.get());
    }
  }
}

}  // namespace internal
}  // namespace kiln
