// A pipeline stage of a LanguageModel for the executor (parallel/pipeline/executor.h): its model
// chunks (built by models::build_stage) composed as embed -> run_block over the chunk's blocks ->
// head_loss, and GPT-2's tied classifier kept in sync between the first and the last stage. Lives
// in launch/ because parallel/ never depends on models/.
#pragma once

#include <map>
#include <utility>
#include <vector>

#include "core/autograd.h"
#include "models/model.h"
#include "parallel/communicator.h"
#include "parallel/pipeline/executor.h"
#include "parallel/pipeline/schedule.h"
#include "proto/config.pb.h"

namespace kiln::launch {

// The stage spec of virtual stage `vs` of `chunks` (= pp * virtual_stages) equal pieces of an
// n_layer model: blocks [vs L / chunks, (vs + 1) L / chunks), the embedding on the first, the head
// on the last. REQUIRES n_layer % chunks == 0 (validate_config checks).
models::StageSpec stage_spec(int64_t n_layer, int vs, int chunks);
// The same for a split given as layers per virtual stage (`layers[vs]`, each >= 1): virtual stage
// vs holds the blocks after those of virtual stages 0 .. vs - 1.
models::StageSpec stage_spec(const std::vector<int64_t>& layers, int vs);
// The layers of each virtual stage a resolved, validated config asks for: parallel.pipeline_layers
// when given, else split over pp x (virtual stages of the schedule) as parallel.pipeline_split
// says.
std::vector<int64_t> pipeline_layers(const ParallelConfig& p, const ModelConfig& m);
// SPLIT_BY_PARAMETERS: one layer per chunk, then each further layer to the chunk with the fewest
// parameters (the lowest index on ties), counting the embeddings on chunk 0 and the final norm and
// head (or GPT-2's tied copy of the embedding) on the last; this minimises the largest chunk.
// REQUIRES n_layer >= chunks >= 1.
std::vector<int64_t> layers_by_parameters(const ModelConfig& m, int chunks);

// The schedule a resolved ParallelConfig names, for flushes of its pipeline_micro_batches (0: one
// flush per step).
parallel::pipeline::ScheduleSpec schedule_spec(const ParallelConfig& p, bool tied_embedding);

class ModelStageWork final : public parallel::pipeline::StageWork {
 public:
  // `chunks[c]` runs local chunk c (not owned). With `split_backward` (a schedule that
  // splits_backward) backward_input computes only the gradients on the path to the chunk's input
  // (and to GPT-2's tied classifier copy, whose gradient the schedule sends after the last input
  // pass) and backward_weight the parameters' gradients (autograd's backward_input_only /
  // run_weights); else backward_input computes both.
  explicit ModelStageWork(std::vector<models::LanguageModel*> chunks, bool split_backward = false)
      : chunks_(std::move(chunks)), split_(split_backward) {}
  Tensor forward(int chunk, const parallel::MicroBatch& batch, const Tensor& input) override;
  Tensor activation_buffer(const parallel::MicroBatch& batch) override;
  Tensor backward_input(int chunk, int micro, const Tensor& input, const Tensor& output,
                        const Tensor& grad_output) override;
  void backward_weight(int chunk, int micro) override;
  bool weights_in_input_pass() const override { return !split_; }
  Tensor take_tied_grad() override;
  Tensor tied_buffer() override;
  void add_tied_grad(const Tensor& g) override;

 private:
  std::vector<models::LanguageModel*> chunks_;
  bool split_;
  std::map<std::pair<int, int>, DeferredWeights> deferred_;  // (chunk, micro) awaiting its W pass
};

// The tied embedding's copy that a GPT-2 stage with the head but not the embedding holds
// ("wte.weight"); undefined on other stages and models. It is not trained there: the first stage
// owns it (optimizer, checkpoints) and sends it after each step (sync_tied_weights).
Tensor tied_copy(models::LanguageModel& model);
// After the optimizer step (and after loading a checkpoint): the first stage's embedding to the
// last stage's copy over the pp group. No-op unless GPT-2 tied with pp > 1.
void sync_tied_weights(models::LanguageModel& model, parallel::Communicator& pp);
// The same with model chunks: the first stage's chunk 0 sends, the last stage's last chunk takes.
void sync_tied_weights(const std::vector<models::LanguageModel*>& chunks,
                       parallel::Communicator& pp);

}  // namespace kiln::launch
