// The pipeline executor: a ForwardBackward (parallel/forward_backward.h) that runs one stage's
// action list (parallel/pipeline/schedule.h) per flush of micro-batches: forwards and backwards
// of its model chunks through StageWork, activations and their gradients point-to-point over the
// mesh's pp group (communicator ranks = pipeline stages; sends asynchronous, waited at the end
// of the flush, so a stage never waits for its receiver), gradients accumulated over the
// micro-batches, the data-parallel / ZeRO hooks (GradSync) bracketing every backward with `last`
// set on the stage's final one only. The loss is summed on the last stage and broadcast over the
// pp group, so every stage returns the step's loss.
#pragma once

#include <map>
#include <memory>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/forward_backward.h"
#include "parallel/pipeline/schedule.h"

namespace kiln::parallel::pipeline {

// What one stage computes. The default backward runs the whole autograd tape from the chunk's
// output, input and weight gradients at once (weights_in_input_pass() true, backward_weight does
// nothing: a zero-bubble schedule then runs like 1F1B). A StageWork that splits (ModelStageWork
// with a ZB-H1 schedule: autograd's backward_input_only / run_weights) computes only the input
// gradient in backward_input and the weight gradients in backward_weight; the executor then
// brackets the weight passes with the GradSync hooks, `last` on the stage's final one.
class StageWork {
 public:
  virtual ~StageWork() = default;
  // Forward of local chunk `chunk` on `batch`. `input`: the previous virtual stage's output (a
  // leaf requiring grad), undefined on virtual stage 0 (which reads batch.inputs). Returns the
  // output activation (B, T, C), or on the last virtual stage the mean loss (0-dim).
  virtual Tensor forward(int chunk, const MicroBatch& batch, const Tensor& input) = 0;
  // A tensor to receive the activation of `batch` into (the shape, dtype and device forward
  // returns; also the shape of its gradient).
  virtual Tensor activation_buffer(const MicroBatch& batch) = 0;
  // Backward of one chunk: from `output` with `grad_output` (on the last virtual stage `output`
  // is the loss already scaled and grad_output undefined). Returns input's gradient (undefined
  // when `input` is). Computes the weight gradients too unless weights_in_input_pass() is false.
  virtual Tensor backward_input(int chunk, int micro, const Tensor& input, const Tensor& output,
                                const Tensor& grad_output);
  virtual void backward_weight(int /*chunk*/, int /*micro*/) {}
  virtual bool weights_in_input_pass() const { return true; }
  // The tied classifier (GPT-2, p > 1): the last stage's gradient of its copy of the embedding,
  // taken (and cleared) after its last backward; the first stage adds it to its own before its
  // last backward, so the data-parallel sync and the optimizer see the sum. tied_buffer: a tensor
  // of its shape to receive into.
  virtual Tensor take_tied_grad() { return Tensor(); }
  virtual Tensor tied_buffer() { return Tensor(); }
  virtual void add_tied_grad(const Tensor& /*g*/) {}
};

class PipelineExecutor final : public ForwardBackward {
 public:
  // `spec.micro_batches` is the flush size (0: each run() is one flush of all its micro-batches);
  // run() takes a multiple of it. `pp` is the mesh's pp group (its rank is the stage); neither
  // `pp` nor `work` is owned.
  PipelineExecutor(const ScheduleSpec& spec, Communicator& pp, StageWork& work);
  Tensor run(const NextMicroBatch& next, int64_t micro_batches, double loss_scale,
             GradSync& grad_sync) override;
  // Evaluation: the mean loss of one batch through every virtual stage in order (no grad), equal
  // on every stage (broadcast from the last).
  double forward_loss(const MicroBatch& batch);
  int stage() const { return stage_; }
  // This stage's list for flushes of `m` micro-batches (built once per m).
  const std::vector<Action>& actions(int m);

 private:
  struct Flush;
  // One flush; adds its micro-batch losses (last stage) into `loss_sum`.
  void run_flush(Flush& f, bool last_flush, GradSync& grad_sync);
  // The index of the action whose backward completes this stage's gradients in `list`.
  int last_grad_action(const std::vector<Action>& list) const;
  void compute(Flush& f, const Action& a, bool sync_last, GradSync& grad_sync);
  void communicate(Flush& f, const Action& a);
  int virtual_of(int chunk) const { return virtual_stage(spec_, stage_, chunk); }
  bool is_last_virtual(int chunk) const {
    return virtual_of(chunk) == spec_.stages * spec_.virtual_stages - 1;
  }

  ScheduleSpec spec_;
  Communicator& pp_;
  StageWork& work_;
  int stage_;
  std::map<int, std::vector<Action>> actions_;  // by flush size
};

}  // namespace kiln::parallel::pipeline
