// Data parallelism and ZeRO-1/2/3 for one data-parallel group, applied to a model from outside.
//
// Parameters are grouped into units, each with a flat fp32 buffer padded to a multiple of dp and
// split evenly: rank r owns elements [r*S, (r+1)*S) of every unit (FSDP-style), so a unit's
// reduce-scatter hands each rank exactly its shard.
//   stage 0 (DDP): units are buckets of about bucket_mb in reverse registration order (the order
//     gradients become ready); gradients live in a flat buffer (params' .grad are views of it; the
//     units' buffers are views of one allocation, the last unit's first, so the .grads of
//     different units lie in registration order); on the last micro-step of a step, a bucket is
//     all-reduced (averaged) as soon as every gradient in it is ready, while backward goes on; no
//     communication on the other micro-steps.
//   stage 1: as stage 0, but each bucket is reduce-scattered; each rank updates its shard of the
//     fp32 parameters with its shard of the optimizer state, then the parameters are all-gathered.
//   stage 2: gradients are sharded too: each ready gradient is copied into its unit's staging
//     buffer and released; a complete unit is reduce-scattered into the rank's fp32 gradient shard
//     (every micro-step, as DeepSpeed does, so no full-size gradient persists).
//   stage 3: parameters are sharded too: units are the model's blocks plus a root unit (embeddings,
//     final norm, head). A block's parameters are all-gathered (in the compute dtype) just before
//     the block runs, the next block's gather is started in advance, and they are released right
//     after; backward gathers them again (a hook on the block's output) and releases them once
//     their gradients have been reduce-scattered. Only the fp32 shard persists.
// The optimizer (AdamW or SGD from optim/) runs unchanged over the rank's pieces of the parameters.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "optim/optimizer.h"
#include "parallel/box.h"
#include "parallel/communicator.h"
#include "parallel/grad_sync.h"
#include "parallel/shardable.h"

namespace kiln::parallel {

struct DataParallelOptions {
  int zero_stage = 0;
  double bucket_mb = 25.0;
  DType gather_dtype = DType::kF32;  // ZeRO-3: dtype parameters are gathered in
  // Takes this replica's sum of squared gradients (already summed over the dp group where ZeRO
  // shards them) to the whole model's: Mesh::sum_over_model_parallel, over the tp and pp groups.
  // Empty: every rank holds the whole model.
  std::function<double(double)> sum_over_model_parallel;
  // Whether this rank counts a parameter (by name) in its local sum of squares: under tensor
  // parallelism every rank counts its shards, and only one rank of the tp group the parameters
  // all of them hold whole (Mesh::counts_replicated). Empty: every parameter.
  std::function<bool(const std::string& name)> counts_in_norm;
};

using OptimizerFactory =
    std::function<std::unique_ptr<optim::Optimizer>(std::vector<nn::Parameter> pieces)>;

// One rank's piece of a named tensor (checkpoints store and reshard these). Two forms, one meaning:
// - flat (box unset): elements [offset, offset + local.numel()) of the flattened global tensor,
//   as ZeRO shards them; it stands for the boxes parallel::flat_range_boxes gives (at most 2N - 1);
// - box (box.offset.size() == global_shape.size() > 0): the elements of `box`, held by `local`
//   row-major (local.numel() == box_volume(box)); `offset` is 0. A tensor-parallel shard (rows or
//   columns of a weight) is one such piece.
struct Piece {
  std::string name;
  Shape global_shape;
  int64_t offset = 0;
  Tensor local;
  Box box;

  static Piece boxed(std::string name, Shape global_shape, Box box, Tensor local) {
    return {std::move(name), std::move(global_shape), 0, std::move(local), std::move(box)};
  }
  bool is_box() const { return !global_shape.empty() && box.offset.size() == global_shape.size(); }
  // The boxes this piece covers, each placed at its first element in `local` (flattened).
  std::vector<PlacedBox> placed_boxes() const {
    if (is_box()) return {{box, 0}};
    return place_flat_range(global_shape, offset, local.numel());
  }
};

// KILN_LAZY_ZERO_GRAD (default on; 0 zeroes the gradient buffers every step, as before
// 2026-12-06): DataParallel::zero_grad only marks stage 0's gradients stale. The tests' override:
// 1 on, 0 off, -1 the environment's.
bool lazy_zero_grad_enabled();
void set_lazy_zero_grad_override(int on);

class DataParallel : public GradSync {
 public:
  // `params` are model.module().parameters() with their decay flags set. `comm` is the
  // data-parallel group.
  DataParallel(Shardable& model, std::vector<nn::Parameter> params, Communicator& comm,
               DataParallelOptions opts, const OptimizerFactory& make_optimizer);
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  // Brackets a forward pass outside training (evaluation, sampling): ZeRO-3 gathers the root unit
  // (embeddings, final norm, head) for it and releases it after; no-ops for stages 0-2.
  void begin_forward();
  void end_forward();
  // Brackets every micro-step; `last` marks the one whose gradients are synchronised (stages 0/1).
  // (GradSync: a forward-backward schedule calls these, parallel/forward_backward.h.)
  void begin_micro_step(bool last) override;
  void end_micro_step() override;
  // After the last micro-step. The norm is over the whole (averaged) gradient, equal on all ranks
  // (over the tp and pp groups too, through opts.sum_over_model_parallel).
  double grad_norm();
  double clip_grad_norm(double max_norm);  // returns the norm before clipping
  bool grads_non_finite();
  void scale_grads(double s);
  // The optimizer step (then ZeRO's all-gather of the updated shards); grad_scale multiplies the
  // gradients first, as scale_grads(grad_scale) would (Optimizer::step_scaled folds it).
  void step(double lr, double grad_scale = 1.0);
  // Stage 0 (unless KILN_LAZY_ZERO_GRAD=0): every .grad marked stale (Tensor::mark_grad_stale),
  // no kernel: the next backward writes its first gradients over them, and anything that reads
  // one before zeroes it first (a parameter without a gradient). Else the buffers are zeroed.
  void zero_grad();
  bool marks_grads_stale() const;  // what zero_grad does
  // Zeroes the stale .grads now, in order on the compute stream: before anything reads the flat
  // buffers rather than each .grad through grad() (which zeroes a stale one itself): the
  // collectives (done in launch) and the side-stream optimizer step.
  void settle_grads();

  // Bytes this rank holds persistently.
  int64_t optimizer_state_bytes();
  int64_t parameter_bytes() const;
  int64_t gradient_bytes() const;
  // Collectives issued so far (tests check none run on accumulation micro-steps) and how many were
  // issued while a backward pass was still running.
  int64_t collectives() const { return collectives_; }
  int64_t collectives_during_backward() const { return during_backward_; }
  // ZeRO-3: block units whose gathered parameters exist now (bound, or a gather in flight), and
  // the most that ever existed at once (the block running plus the one prefetched: 2).
  int live_gathered_blocks() const { return live_blocks_; }
  int peak_gathered_blocks() const { return peak_blocks_; }

  std::vector<Piece> parameter_pieces();  // fp32 master values
  std::vector<Piece> optimizer_pieces();  // "<state>/<param>" pieces
  optim::Optimizer& optimizer() { return *opt_; }
  int zero_stage() const { return opts_.zero_stage; }

 private:
  static void settle(const nn::Parameter& p);  // settle_grads for one
  struct Unit;
  void build_units();
  void on_grad_ready(int param);
  void launch(int unit);
  void finish(int unit);
  void gather(int unit, bool wait);
  void release(int unit);
  void release_storage(int param);
  Tensor hooked_block(int block, const Tensor& x, const std::function<Tensor(const Tensor&)>& run);

  Shardable& model_;
  std::vector<nn::Parameter> params_;
  Communicator& comm_;
  DataParallelOptions opts_;
  std::vector<std::unique_ptr<Unit>> units_;
  std::vector<int> unit_of_;        // param index -> unit
  std::vector<int> unit_of_block_;  // block -> unit (stage 3)
  int root_unit_ = -1;              // stage 3
  std::unique_ptr<optim::Optimizer> opt_;
  std::vector<std::pair<int, int64_t>>
      piece_origin_;  // optimizer piece -> (param, offset in param)
  bool sync_ = false;
  bool in_backward_ = false;
  int64_t collectives_ = 0, during_backward_ = 0;
  int live_blocks_ = 0, peak_blocks_ = 0;
};

}  // namespace kiln::parallel
