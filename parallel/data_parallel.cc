// DataParallel: flat buffers, gradient hooks, bucketed collectives, sharded optimizer, ZeRO-3
// gather/release around blocks.
#include "parallel/data_parallel.h"

#include <cmath>
#include <deque>
#include <map>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/check.h"
#include "core/env_switch.h"
#include "core/ops/elementwise.h"

namespace kiln::parallel {
namespace {

// Makes p's storage a contiguous view of flat at element `offset` (same TensorImpl, so every
// holder of the parameter, saved autograd tensors included, sees the new memory).
void bind(const Tensor& p, const Tensor& flat, int64_t offset) {
  TensorImpl* impl = p.impl();
  impl->storage = flat.storage();
  impl->offset = flat.offset() + offset;
  impl->strides = contiguous_strides(impl->shape);
  impl->dtype = flat.dtype();
}

Tensor view(const Tensor& flat, int64_t offset, const Shape& shape) {
  return flat.narrow(0, offset, shape_numel(shape)).reshape(shape);
}

// Identity whose backward first runs `hook` (ZeRO-3 re-gathers a block before its backward).
class PreBackwardNode final : public Node {
 public:
  const char* name() const override { return "PreBackwardHook"; }
  std::function<void()> hook;
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    hook();
    return {g[0]};
  }
};

}  // namespace

struct DataParallel::Unit {
  std::vector<int> params;
  std::vector<int64_t> offsets;  // of each parameter in the flat buffer
  int64_t numel = 0, padded = 0, shard = 0;
  Tensor flat_param;          // stages 0-2: (padded) fp32, the parameters are views of it
  Tensor master;              // this rank's fp32 shard: a view of flat_param (1, 2) or its own (3)
  Tensor flat_grad;           // stages 0/1: (padded) fp32, the parameters' .grad are views of it
  Tensor grad_shard;          // stages 1-3: (shard) fp32
  Tensor staging, recv;       // stages 2/3 while a reduce-scatter is in flight
  Tensor gathered, send_buf;  // stage 3
  std::unique_ptr<Work> work, gather_work;
  int ready = 0;
  bool launched = false, is_gathered = false;
};

DataParallel::DataParallel(Shardable& model, std::vector<nn::Parameter> params, Communicator& comm,
                           DataParallelOptions opts, const OptimizerFactory& make_optimizer)
    : model_(model), params_(std::move(params)), comm_(comm), opts_(opts) {
  KILN_CHECK(opts_.zero_stage >= 0 && opts_.zero_stage <= 3)
      << "parallel.zero_stage must be 0-3, got " << opts_.zero_stage;
  for (const nn::Parameter& p : params_)
    KILN_CHECK(p.tensor.dtype() == DType::kF32)
        << "data parallel: parameter " << p.name << " must be f32 (the master copy), got "
        << p.tensor.str();
  build_units();
  const int r = comm_.rank();
  const int stage = opts_.zero_stage;
  const Device dev = params_.empty() ? Device::cpu() : params_[0].tensor.device();
  std::vector<nn::Parameter> pieces;
  // Stages 0/1: the units' gradient buffers are views of one allocation, the last unit's first,
  // each 256-byte aligned. Units run in reverse registration order, so the .grads of different
  // units then lie in registration order in memory: the equal pieces of a packed weight in units
  // of their own (Llama 1B's gate / up) are one positive stride apart, and their weight GEMMs run
  // as one batched GEMM (set_packed_wgrad_batched_override, core/ops/matmul.h).
  std::vector<int64_t> grad_at(units_.size(), 0);
  int64_t grad_total = 0;
  for (size_t u = units_.size(); u-- > 0;) {
    grad_at[u] = grad_total;
    grad_total += (units_[u]->padded + 63) / 64 * 64;
  }
  const Tensor grad_arena =
      stage <= 1 && grad_total > 0 ? Tensor::zeros({grad_total}, DType::kF32, dev) : Tensor();
  for (size_t u = 0; u < units_.size(); ++u) {
    Unit& un = *units_[u];
    Tensor flat = Tensor::zeros({un.padded}, DType::kF32, dev);
    for (size_t j = 0; j < un.params.size(); ++j) {
      const Tensor& p = params_[un.params[j]].tensor;
      raw::copy(view(flat, un.offsets[j], p.shape()), p);
    }
    if (stage < 3) {
      un.flat_param = flat;
      for (size_t j = 0; j < un.params.size(); ++j)
        bind(params_[un.params[j]].tensor, flat, un.offsets[j]);
      un.master = flat.narrow(0, r * un.shard, un.shard);
    } else {
      un.master = flat.narrow(0, r * un.shard, un.shard).clone();
      for (int p : un.params) release_storage(p);
    }
    if (stage <= 1) {
      un.flat_grad = grad_arena.narrow(0, grad_at[u], un.padded);
      for (size_t j = 0; j < un.params.size(); ++j) {
        const Tensor& p = params_[un.params[j]].tensor;
        Tensor(p.impl_ptr()).set_grad(view(un.flat_grad, un.offsets[j], p.shape()));
      }
    }
    if (stage >= 1) un.grad_shard = Tensor::zeros({un.shard}, DType::kF32, dev);
    // The optimizer's pieces: whole parameters (stage 0) or their intersections with the shard.
    for (size_t j = 0; j < un.params.size(); ++j) {
      const nn::Parameter& p = params_[un.params[j]];
      if (stage == 0) {
        pieces.push_back(p);
        piece_origin_.emplace_back(un.params[j], 0);
        continue;
      }
      const int64_t lo = std::max(un.offsets[j], r * un.shard);
      const int64_t hi = std::min(un.offsets[j] + p.tensor.numel(), (r + 1) * un.shard);
      if (lo >= hi) continue;
      nn::Parameter piece = p;
      piece.tensor = un.master.narrow(0, lo - r * un.shard, hi - lo);
      piece.tensor.set_grad(un.grad_shard.narrow(0, lo - r * un.shard, hi - lo));
      pieces.push_back(piece);
      piece_origin_.emplace_back(un.params[j], lo - un.offsets[j]);
    }
  }
  opt_ = make_optimizer(pieces);
  for (int i = 0; i < static_cast<int>(params_.size()); ++i)
    params_[i].tensor.register_grad_ready_hook([this, i](Tensor&) { on_grad_ready(i); });
  if (stage == 3) {
    model_.set_block_hook(
        [this](int b, const Tensor& x, const std::function<Tensor(const Tensor&)>& run) {
          return hooked_block(b, x, run);
        });
  }
}

DataParallel::~DataParallel() {
  for (auto& u : units_) {
    if (u->work) u->work->wait();
    if (u->gather_work) u->gather_work->wait();
  }
  if (opts_.zero_stage == 3) model_.set_block_hook(nullptr);
}

void DataParallel::release_storage(int p) {
  TensorImpl* impl = params_[p].tensor.impl();
  static std::map<std::pair<int, int>, std::shared_ptr<Storage>> empties;
  const Device d = impl->storage->device();
  auto& e = empties[{static_cast<int>(d.type), d.index}];
  if (!e) e = std::make_shared<Storage>(0, d);
  impl->storage = e;
  impl->offset = 0;
}

void DataParallel::build_units() {
  const int n = static_cast<int>(params_.size());
  const int dp = comm_.size();
  std::vector<std::vector<int>> groups;
  if (opts_.zero_stage == 3) {
    std::vector<bool> in_block(n, false);
    for (const std::vector<int>& b : model_.block_parameter_indices()) {
      unit_of_block_.push_back(static_cast<int>(groups.size()));
      groups.push_back(b);
      for (int i : b) in_block[i] = true;
    }
    std::vector<int> root;
    for (int i = 0; i < n; ++i)
      if (!in_block[i]) root.push_back(i);
    root_unit_ = static_cast<int>(groups.size());
    groups.push_back(root);
  } else {
    // Reverse registration order: roughly the order in which backward produces gradients.
    const int64_t cap = static_cast<int64_t>(opts_.bucket_mb * 1024 * 1024 / 4);
    std::vector<int> cur;
    int64_t size = 0;
    for (int i = n - 1; i >= 0; --i) {
      const int64_t k = params_[i].tensor.numel();
      if (!cur.empty() && size + k > cap) {
        groups.push_back(cur);
        cur.clear();
        size = 0;
      }
      cur.push_back(i);
      size += k;
    }
    if (!cur.empty()) groups.push_back(cur);
  }
  unit_of_.assign(n, -1);
  for (size_t g = 0; g < groups.size(); ++g) {
    auto u = std::make_unique<Unit>();
    u->params = groups[g];
    for (int p : u->params) {
      unit_of_[p] = static_cast<int>(g);
      u->offsets.push_back(u->numel);
      u->numel += params_[p].tensor.numel();
    }
    u->padded = std::max<int64_t>(dp, (u->numel + dp - 1) / dp * dp);
    u->shard = u->padded / dp;
    units_.push_back(std::move(u));
  }
}

void DataParallel::begin_micro_step(bool last) {
  sync_ = last || opts_.zero_stage >= 2;
  in_backward_ = false;
  for (auto& u : units_) {
    u->ready = 0;
    u->launched = false;
  }
  if (opts_.zero_stage == 3) gather(root_unit_, true);
}

void DataParallel::begin_forward() {
  if (opts_.zero_stage == 3) gather(root_unit_, true);
}

void DataParallel::end_forward() {
  if (opts_.zero_stage == 3) release(root_unit_);
}

void DataParallel::on_grad_ready(int p) {
  in_backward_ = true;
  if (!sync_) return;
  const int u = unit_of_[p];
  Unit& un = *units_[u];
  if (opts_.zero_stage >= 2) {
    if (!un.staging.defined())
      un.staging = Tensor::zeros({un.padded}, DType::kF32, params_[p].tensor.device());
    const size_t j = std::find(un.params.begin(), un.params.end(), p) - un.params.begin();
    Tensor g = params_[p].tensor.grad();
    raw::copy(view(un.staging, un.offsets[j], g.shape()), g);
    Tensor(params_[p].tensor.impl_ptr()).set_grad(Tensor());  // the full gradient is not kept
  }
  if (++un.ready == static_cast<int>(un.params.size())) {
    launch(u);
    // ZeRO-3: every gradient of the block is computed, so no backward node reads its gathered
    // parameters any more; release them now rather than when the reduce-scatter is waited for
    // (that kept up to four blocks gathered at once in backward).
    if (opts_.zero_stage == 3 && u != root_unit_) release(u);
  }
}

void DataParallel::launch(int u) {
  Unit& un = *units_[u];
  if (un.launched) return;
  un.launched = true;
  ++collectives_;
  if (in_backward_) ++during_backward_;
  if (opts_.zero_stage == 0)  // the collective reads the flat buffer, stale values too
    for (int p : un.params) settle(params_[p]);
  switch (opts_.zero_stage) {
    case 0:
      un.work = comm_.all_reduce_async(un.flat_grad, ReduceOp::kAvg);
      break;
    case 1:
      un.work = comm_.reduce_scatter_async(un.flat_grad, un.grad_shard, ReduceOp::kAvg);
      break;
    default: {
      if (!un.staging.defined())
        un.staging = Tensor::zeros({un.padded}, DType::kF32, un.master.device());
      un.recv = Tensor::empty({un.shard}, DType::kF32, un.master.device());
      un.work = comm_.reduce_scatter_async(un.staging, un.recv, ReduceOp::kAvg);
      // Bound the staging memory: keep at most two units in flight.
      int in_flight = 0;
      for (auto& o : units_) in_flight += o->work != nullptr;
      if (in_flight > 2)
        for (size_t o = 0; o < units_.size(); ++o)
          if (static_cast<int>(o) != u && units_[o]->work) {
            finish(static_cast<int>(o));
            break;
          }
    }
  }
}

void DataParallel::finish(int u) {
  Unit& un = *units_[u];
  if (!un.work) return;
  un.work->wait();
  un.work.reset();
  if (opts_.zero_stage >= 2) {
    add_(un.grad_shard, un.recv);
    un.staging = Tensor();
    un.recv = Tensor();
  }
  if (opts_.zero_stage == 3 && u != root_unit_) release(u);
}

void DataParallel::end_micro_step() {
  in_backward_ = false;
  if (!sync_) return;
  for (size_t u = 0; u < units_.size(); ++u)
    launch(static_cast<int>(u));  // units with unused params
  for (size_t u = 0; u < units_.size(); ++u) finish(static_cast<int>(u));
}

double DataParallel::grad_norm() {
  // One device reduction (and one host sync) over every gradient, not one per tensor.
  auto counted = [this](const std::vector<nn::Parameter>& ps) {
    if (!opts_.counts_in_norm) return ps;
    std::vector<nn::Parameter> out;
    for (const nn::Parameter& p : ps)
      if (opts_.counts_in_norm(p.name)) out.push_back(p);
    return out;
  };
  double sq = opts_.zero_stage == 0
                  ? optim::grad_sum_squares(counted(params_))  // the same on every dp rank
                  : comm_.all_reduce_scalar(optim::grad_sum_squares(counted(opt_->params())));
  if (opts_.sum_over_model_parallel) sq = opts_.sum_over_model_parallel(sq);
  return std::sqrt(sq);
}

double DataParallel::clip_grad_norm(double max_norm) {
  const double norm = grad_norm();
  if (max_norm > 0 && norm > max_norm) scale_grads(max_norm / (norm + 1e-6));
  return norm;
}

bool DataParallel::grads_non_finite() { return !std::isfinite(grad_norm()); }

void DataParallel::scale_grads(double s) {
  for (auto& u : units_) mul_(opts_.zero_stage == 0 ? u->flat_grad : u->grad_shard, s);
}

void DataParallel::step(double lr, double grad_scale) {
  opt_->step_scaled(lr, grad_scale);
  const int stage = opts_.zero_stage;
  if (stage == 1 || stage == 2) {
    for (auto& u : units_) {
      Tensor mine = u->master.clone();  // all_gather's input must not alias its output
      comm_.all_gather(mine, u->flat_param);
      ++collectives_;
    }
  }
  if (stage == 3) release(root_unit_);
}

namespace {
EnvSwitch g_lazy_zero("KILN_LAZY_ZERO_GRAD", /*default_on=*/true);
}  // namespace

bool lazy_zero_grad_enabled() { return g_lazy_zero.on(); }
void set_lazy_zero_grad_override(int on) { g_lazy_zero.force(on); }

bool DataParallel::marks_grads_stale() const {
  return opts_.zero_stage == 0 && lazy_zero_grad_enabled();
}

void DataParallel::zero_grad() {
  if (marks_grads_stale()) {
    for (const nn::Parameter& p : params_) p.tensor.mark_grad_stale();
    return;
  }
  for (auto& u : units_) {
    if (u->flat_grad.defined()) u->flat_grad.zero_();
    if (u->grad_shard.defined()) u->grad_shard.zero_();
  }
}

void DataParallel::settle(const nn::Parameter& p) {
  if (p.tensor.grad_stale()) (void)p.tensor.grad();  // grad() zeroes it
}

void DataParallel::settle_grads() {
  for (const nn::Parameter& p : params_) settle(p);
}

void DataParallel::gather(int u, bool wait) {
  Unit& un = *units_[u];
  if (un.is_gathered) return;
  if (!un.gather_work) {
    un.send_buf = raw::convert(un.master, opts_.gather_dtype);
    un.gathered = Tensor::empty({un.padded}, opts_.gather_dtype, un.master.device());
    un.gather_work = comm_.all_gather_async(un.send_buf, un.gathered);
    ++collectives_;
    if (u != root_unit_) peak_blocks_ = std::max(peak_blocks_, ++live_blocks_);
  }
  if (!wait) return;
  un.gather_work->wait();
  un.gather_work.reset();
  un.send_buf = Tensor();
  for (size_t j = 0; j < un.params.size(); ++j)
    bind(params_[un.params[j]].tensor, un.gathered, un.offsets[j]);
  un.is_gathered = true;
}

void DataParallel::release(int u) {
  Unit& un = *units_[u];
  if (!un.is_gathered) return;
  for (int p : un.params) release_storage(p);
  un.gathered = Tensor();
  un.is_gathered = false;
  if (u != root_unit_) --live_blocks_;
}

Tensor DataParallel::hooked_block(int b, const Tensor& x,
                                  const std::function<Tensor(const Tensor&)>& run) {
  const int u = unit_of_block_[b];
  gather(u, true);
  if (b + 1 < static_cast<int>(unit_of_block_.size())) gather(unit_of_block_[b + 1], false);
  Tensor y = run(x);
  release(u);
  auto node = record<PreBackwardNode>({&y});
  if (!node) return y;
  node->hook = [this, b, u] {
    gather(u, true);
    if (b > 0) gather(unit_of_block_[b - 1], false);
  };
  Tensor out = y.detach();
  set_history(out, node);
  return out;
}

int64_t DataParallel::optimizer_state_bytes() {
  int64_t n = 0;
  for (auto& [name, t] : opt_->state()) n += static_cast<int64_t>(t.nbytes());
  return n;
}

int64_t DataParallel::parameter_bytes() const {
  int64_t n = 0;
  for (auto& u : units_)
    n += static_cast<int64_t>((u->flat_param.defined() ? u->flat_param : u->master).nbytes());
  return n;
}

int64_t DataParallel::gradient_bytes() const {
  int64_t n = 0;
  for (auto& u : units_)
    n += static_cast<int64_t>((u->flat_grad.defined() ? u->flat_grad : u->grad_shard).nbytes());
  return n;
}

std::vector<Piece> DataParallel::parameter_pieces() {
  std::vector<Piece> out;
  const auto& pieces = opt_->params();
  for (size_t i = 0; i < pieces.size(); ++i) {
    const auto [p, off] = piece_origin_[i];
    out.push_back({params_[p].name, params_[p].tensor.shape(), off,
                   pieces[i].tensor.reshape({pieces[i].tensor.numel()})});
  }
  return out;
}

std::vector<Piece> DataParallel::optimizer_pieces() {
  std::map<std::string, size_t> index;
  const auto& pieces = opt_->params();
  for (size_t i = 0; i < pieces.size(); ++i) index[pieces[i].name] = i;
  std::vector<Piece> out;
  for (auto& [name, t] : opt_->state()) {
    const size_t slash = name.find('/');
    auto it = index.find(name.substr(slash + 1));
    KILN_CHECK(slash != std::string::npos && it != index.end()) << "optimizer state " << name;
    const auto [p, off] = piece_origin_[it->second];
    out.push_back({name, params_[p].tensor.shape(), off, t.reshape({t.numel()})});
  }
  return out;
}

}  // namespace kiln::parallel
