// The seam between the training loop and the way one optimizer step's micro-batches run. The loop
// (launch/trainer.cc) asks for `run(next, micro_batches, loss_scale, grad_sync)` and gets the
// summed loss; how forward and backward passes are ordered, and on which ranks, is the
// implementation's business: NoPipeline today (the whole model on every rank, micro-batches one
// after another), a pipeline executor later (stages exchanging activations, a schedule deciding
// the order). The implementation calls the gradient-sync hooks itself, because only it knows which
// micro-batch is the last to finish its backward.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "core/tensor.h"
#include "parallel/grad_sync.h"

namespace kiln::parallel {

// One micro-batch on the training device.
struct MicroBatch {
  Tensor inputs;   // (B, T) token ids
  Tensor targets;  // (B, T) next-token ids
};
// The step's micro-batches, in order; called exactly `micro_batches` times per run.
using NextMicroBatch = std::function<MicroBatch()>;
// The model's mean loss on a micro-batch: a 0-dim tensor that backward() starts from.
using LossFn = std::function<Tensor(const Tensor& inputs, const Tensor& targets)>;

class ForwardBackward {
 public:
  virtual ~ForwardBackward() = default;
  // Forward and backward over `micro_batches` micro-batches from `next`. Each micro-batch's loss is
  // multiplied by loss_scale / micro_batches before its backward, so that the gradients add up to
  // loss_scale times the gradient of the step's mean loss. grad_sync.begin_micro_step(last) and
  // end_micro_step() bracket every micro-batch. Returns the sum of the unscaled micro-batch
  // losses: a 0-dim f64 tensor on the device (no host sync), undefined on a rank that computes no
  // loss (a pipeline stage other than the last). REQUIRES micro_batches >= 1.
  virtual Tensor run(const NextMicroBatch& next, int64_t micro_batches, double loss_scale,
                     GradSync& grad_sync) = 0;
};

// No pipeline: every rank holds the whole model (or its tensor-parallel part) and runs its
// micro-batches one after another; the last one synchronises the gradients.
class NoPipeline final : public ForwardBackward {
 public:
  explicit NoPipeline(LossFn loss) : loss_(std::move(loss)) {}
  Tensor run(const NextMicroBatch& next, int64_t micro_batches, double loss_scale,
             GradSync& grad_sync) override;

 private:
  LossFn loss_;
};

}  // namespace kiln::parallel
