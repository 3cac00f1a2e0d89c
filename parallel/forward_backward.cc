// NoPipeline: the micro-batch loop of one training step.
#include "parallel/forward_backward.h"

#include "core/autograd.h"
#include "core/check.h"
#include "core/ops/elementwise.h"
#include "core/ops/view.h"

namespace kiln::parallel {

Tensor NoPipeline::run(const NextMicroBatch& next, int64_t micro_batches, double loss_scale,
                       GradSync& grad_sync) {
  KILN_CHECK_GE(micro_batches, 1);
  Tensor loss_sum;
  for (int64_t i = 0; i < micro_batches; ++i) {
    MicroBatch b = next();
    grad_sync.begin_micro_step(i + 1 == micro_batches);
    Tensor loss = loss_(b.inputs, b.targets);
    Tensor scaled = scale(loss, loss_scale / static_cast<double>(micro_batches));
    scaled.backward();
    grad_sync.end_micro_step();
    NoGradGuard ng;
    Tensor l = cast(loss.detach(), DType::kF64);  // summed in f64 on the device: no sync
    loss_sum = loss_sum.defined() ? add(loss_sum, l) : l;
  }
  return loss_sum;
}

}  // namespace kiln::parallel
