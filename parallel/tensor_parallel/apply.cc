// apply_tensor_parallel: slices the parameters in place by the plan and installs the layers'
// communication hooks (see apply.h).
#include "parallel/tensor_parallel/apply.h"

#include <map>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/autograd.h"
#include "core/nn/layers.h"
#include "core/ops/matmul.h"
#include "parallel/tensor_parallel/mappings.h"
#include "parallel/tensor_parallel/vocab_parallel.h"

namespace kiln::parallel {
namespace {

using Hook = std::function<Tensor(const Tensor&)>;
constexpr int64_t kSeqDim = 1;  // (B, T, C)

// The column-parallel input mapping shared by the `users` linears of one module that read the
// same input (Llama's q, k and v; gate and up): the collective runs once per input, not once per
// linear. The mapped input is held from the first user's call until the last user has taken it,
// for that input and grad mode only (the input itself is not kept alive).
class SharedInput {
 public:
  explicit SharedInput(Hook fn) : fn_(std::move(fn)) {}
  void add_user() { ++users_; }
  Tensor operator()(const Tensor& x) {
    std::shared_ptr<TensorImpl> in = in_.lock();
    if (out_.defined() && in && in.get() == x.impl() && grad_ == grad_enabled()) {
      Tensor y = out_;
      if (++taken_ >= users_) out_ = Tensor();
      return y;
    }
    Tensor y = fn_(x);
    in_ = x.impl_ptr();
    grad_ = grad_enabled();
    taken_ = 1;
    out_ = taken_ < users_ ? y : Tensor();
    return y;
  }

 private:
  Hook fn_;
  int users_ = 0, taken_ = 0;
  std::weak_ptr<TensorImpl> in_;
  Tensor out_;
  bool grad_ = false;
};

// Replaces p's values by `slice` under the same TensorImpl (every holder of the handle sees it).
void replace_in_place(const Tensor& p, const Tensor& slice) {
  TensorImpl* impl = p.impl();
  impl->storage = slice.storage();
  impl->shape = slice.shape();
  impl->strides = slice.strides();
  impl->offset = slice.offset();
  impl->grad = Tensor();
  impl->grad_stale = false;
  impl->grad_accumulator.reset();
}

absl::Status shard_parameters(Shardable& model, const TpPlan& plan, int tp, int rank) {
  for (const nn::Parameter& p : model.module().parameters()) {
    const TpEntry* e = plan.find(p.name);
    if (!e) return absl::InternalError(absl::StrCat("tensor parallel: no plan entry for ", p.name));
    if (e->dim < 0) continue;
    const int64_t size = p.tensor.size(e->dim);
    if (size % (int64_t{e->partitions} * tp) != 0)
      return absl::InvalidArgumentError(absl::StrCat(
          "parallel.tp: ", tp, " does not divide ", p.name, " (dim ", e->dim, " of size ", size,
          e->partitions > 1 ? absl::StrCat(" in ", e->partitions, " parts") : "", ")"));
    replace_in_place(p.tensor, tp_slice(p.tensor, *e, tp, rank));
  }
  return absl::OkStatus();
}

std::string parent_of(const std::string& name) {
  const size_t dot = name.rfind('.');
  return dot == std::string::npos ? "" : name.substr(0, dot);
}

struct Hooks {
  Hook column_in, row_out, replicated_grad;
};

void hook_modules(Shardable& model, const TpPlan& plan, const Hooks& h, bool sp) {
  std::map<std::string, std::shared_ptr<SharedInput>> shared;  // parent module -> its input
  for (auto& [name, m] : model.module().named_modules()) {
    const TpEntry* e = plan.find(name + ".weight");
    if (!e) continue;
    if (auto* l = dynamic_cast<nn::Linear*>(m)) {
      if (e->style == TpStyle::kColumn) {
        auto& s = shared[parent_of(name)];
        if (!s) s = std::make_shared<SharedInput>(h.column_in);
        s->add_user();
        l->input_hook = [s](const Tensor& x) { return (*s)(x); };
      } else if (e->style == TpStyle::kRow) {
        l->output_hook = h.row_out;
        if (sp) l->bias_hook = h.replicated_grad;  // added on the sequence chunk
      }
    } else if (auto* ln = dynamic_cast<nn::LayerNorm*>(m); ln && sp) {
      ln->param_hook = h.replicated_grad;
    } else if (auto* rn = dynamic_cast<nn::RMSNorm*>(m); rn && sp) {
      rn->param_hook = h.replicated_grad;
    }
  }
}

}  // namespace

absl::Status apply_tensor_parallel(Shardable& model, Communicator& tp,
                                   const TensorParallelOptions& opts) {
  if (tp.size() == 1) return absl::OkStatus();
  const TpPlan plan = model.tensor_parallel_plan();
  absl::Status s = shard_parameters(model, plan, tp.size(), tp.rank());
  if (!s.ok()) return s;
  Communicator* c = &tp;
  const bool sp = opts.sequence_parallel;
  // Under sequence parallel, whether this forward runs on sequence chunks: set by the embedding
  // output hook, false when T does not split over tp (sampling one more token at a time), so the
  // same model still runs such sequences whole (copy / all-reduce).
  auto chunked = std::make_shared<bool>(false);
  Hooks h;
  h.column_in = [c, chunked](const Tensor& x) {
    return *chunked ? tp::gather_from_sequence(x, kSeqDim, *c) : tp::copy_to_tp(x, *c);
  };
  h.row_out = [c, chunked](const Tensor& y) {
    return *chunked ? tp::reduce_scatter_to_sequence(y, kSeqDim, *c) : tp::reduce_from_tp(y, *c);
  };
  // A replicated parameter used on the sequence chunk gets a partial gradient: summed over tp.
  h.replicated_grad = [c, chunked](const Tensor& p) {
    return *chunked ? tp::copy_to_tp(p, *c) : p;
  };
  hook_modules(model, plan, h, sp);
  for (auto& [name, m] : model.module().named_modules()) {
    const TpEntry* e = plan.find(name + ".weight");
    auto* emb = dynamic_cast<nn::Embedding*>(m);
    if (e && emb && e->style == TpStyle::kVocab)
      emb->lookup_hook = [c](const Tensor& w, const Tensor& ids) {
        return tp::vocab_parallel_embedding(w, ids, *c);
      };
  }
  if (sp)
    model.set_embedding_output_hook([c, chunked](const Tensor& x) {
      *chunked = x.size(kSeqDim) % c->size() == 0;
      return *chunked ? tp::scatter_to_sequence(x, kSeqDim, *c) : x;
    });
  Hook in = h.column_in;
  Shardable::ClassifierHooks ch;
  ch.logits = [c, in](const Tensor& x, const Tensor& w) {
    return tp::gather_from_tp(linear(in(x), w), -1, *c);
  };
  ch.loss = [c, in](const Tensor& x, const Tensor& w, const Tensor& targets) {
    Tensor full = in(x);  // (B, T, C) on every rank
    return tp::vocab_parallel_cross_entropy(full.reshape({-1, full.size(-1)}), w,
                                            targets.reshape({-1}), *c);
  };
  model.set_classifier_hooks(std::move(ch));
  return absl::OkStatus();
}

}  // namespace kiln::parallel
