// Model chunks as pipeline stage work, and the tied classifier's copies.
#include "launch/pipeline_stage.h"

#include <algorithm>

#include "core/autograd.h"
#include "core/check.h"
#include "core/ops/elementwise.h"
#include "models/presets.h"

namespace kiln::launch {
namespace {

Tensor find_param(models::LanguageModel& model, const std::string& name) {
  for (const nn::Parameter& p : model.parameters())
    if (p.name == name) return p.tensor;
  return Tensor();
}

bool tied_pipeline(const models::LanguageModel& model) {
  return model.spec().tied_embeddings && model.spec().family == models::Family::kGPT2;
}

}  // namespace

models::StageSpec stage_spec(int64_t n_layer, int vs, int chunks) {
  KILN_CHECK(chunks > 0 && n_layer % chunks == 0) << n_layer << " layers in " << chunks;
  const int64_t per = n_layer / chunks;
  return {vs == 0, vs * per, (vs + 1) * per, vs == chunks - 1};
}

models::StageSpec stage_spec(const std::vector<int64_t>& layers, int vs) {
  KILN_CHECK(vs >= 0 && vs < static_cast<int>(layers.size())) << vs << " of " << layers.size();
  int64_t first = 0;
  for (int i = 0; i < vs; ++i) first += layers[i];
  KILN_CHECK_GE(layers[vs], 1);
  return {vs == 0, first, first + layers[vs], vs == static_cast<int>(layers.size()) - 1};
}

std::vector<int64_t> pipeline_layers(const ParallelConfig& p, const ModelConfig& m) {
  if (!p.pipeline_layers().empty())
    return std::vector<int64_t>(p.pipeline_layers().begin(), p.pipeline_layers().end());
  const int chunks = std::max(p.pp(), 1) * schedule_spec(p, false).virtual_stages;
  if (p.pipeline_split() == ParallelConfig::SPLIT_BY_PARAMETERS)
    return layers_by_parameters(m, chunks);
  KILN_CHECK(m.n_layer() % chunks == 0) << m.n_layer() << " layers in " << chunks;
  return std::vector<int64_t>(chunks, m.n_layer() / chunks);
}

std::vector<int64_t> layers_by_parameters(const ModelConfig& m, int chunks) {
  KILN_CHECK(chunks >= 1 && m.n_layer() >= chunks) << m.n_layer() << " layers in " << chunks;
  const auto n = count_params(m);
  std::vector<int64_t> layers(chunks, 1), load(chunks, n.per_block);
  load.front() += n.token_embedding + n.position_embedding;
  load.back() += n.final_norm + (n.head > 0 ? n.head : chunks > 1 ? n.token_embedding : 0);
  for (int64_t l = chunks; l < m.n_layer(); ++l) {
    const int c = static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());
    ++layers[c];
    load[c] += n.per_block;
  }
  return layers;
}

parallel::pipeline::ScheduleSpec schedule_spec(const ParallelConfig& p, bool tied_embedding) {
  using parallel::pipeline::ScheduleKind;
  ScheduleKind kind = ScheduleKind::k1F1B;
  switch (p.pipeline_schedule()) {
    case ParallelConfig::GPIPE:
      kind = ScheduleKind::kGPipe;
      break;
    case ParallelConfig::INTERLEAVED_1F1B:
      kind = ScheduleKind::kInterleaved1F1B;
      break;
    case ParallelConfig::ZB_H1:
      kind = ScheduleKind::kZBH1;
      break;
    default:
      break;
  }
  return {kind, p.pp(), p.pipeline_micro_batches(),
          kind == ScheduleKind::kInterleaved1F1B ? p.virtual_stages() : 1,
          tied_embedding && p.pp() > 1};
}

Tensor ModelStageWork::forward(int chunk, const parallel::MicroBatch& batch, const Tensor& input) {
  models::LanguageModel& m = *chunks_[chunk];
  Tensor x = m.stage().embedding ? m.embed(batch.inputs) : input;
  for (int i = 0; i < m.num_blocks(); ++i) x = m.run_block(i, x);
  return m.stage().head ? m.head_loss(x, batch.targets) : x;
}

Tensor ModelStageWork::activation_buffer(const parallel::MicroBatch& batch) {
  const models::LanguageModel& m = *chunks_[0];
  const Device dev = m.parameters().front().tensor.device();
  return Tensor::empty({batch.inputs.size(0), batch.inputs.size(1), m.spec().d_model},
                       m.compute_dtype(), dev);
}

Tensor ModelStageWork::backward_input(int chunk, int micro, const Tensor& input,
                                      const Tensor& output, const Tensor& grad_output) {
  if (!split_) return StageWork::backward_input(chunk, micro, input, output, grad_output);
  std::vector<Tensor> to;
  if (input.defined()) to.push_back(input);
  const Tensor tied = tied_copy(*chunks_[chunk]);
  if (tied.defined()) to.push_back(tied);
  const bool fresh =
      deferred_
          .emplace(std::make_pair(chunk, micro), backward_input_only({output}, {grad_output}, to))
          .second;
  KILN_CHECK(fresh) << "input pass of chunk " << chunk << ", micro-batch " << micro << " twice";
  return input.defined() ? input.grad() : Tensor();
}

void ModelStageWork::backward_weight(int chunk, int micro) {
  if (!split_) return;
  auto it = deferred_.find({chunk, micro});
  KILN_CHECK(it != deferred_.end())
      << "weight pass of chunk " << chunk << ", micro-batch " << micro << " before its input pass";
  DeferredWeights w = std::move(it->second);
  deferred_.erase(it);
  run_weights(std::move(w));
}

Tensor ModelStageWork::take_tied_grad() {
  Tensor w = tied_copy(*chunks_.back());
  KILN_CHECK(w.defined()) << "no tied classifier on this stage";
  Tensor g = w.grad();
  w.set_grad(Tensor());
  return g;
}

Tensor ModelStageWork::tied_buffer() {
  Tensor w = find_param(*chunks_[0], "wte.weight");
  return Tensor::empty(w.shape(), w.grad().defined() ? w.grad().dtype() : w.dtype(), w.device());
}

void ModelStageWork::add_tied_grad(const Tensor& g) {
  Tensor w = find_param(*chunks_[0], "wte.weight");
  KILN_CHECK(w.defined() && chunks_[0]->stage().embedding) << "no embedding on this stage";
  if (w.grad().defined()) {
    add_(w.grad(), g);
  } else {
    w.set_grad(g.clone());
  }
}

Tensor tied_copy(models::LanguageModel& model) {
  if (!tied_pipeline(model) || model.stage().embedding || !model.stage().head) return Tensor();
  return find_param(model, "wte.weight");
}

void sync_tied_weights(models::LanguageModel& model, parallel::Communicator& pp) {
  sync_tied_weights(std::vector<models::LanguageModel*>{&model}, pp);
}

void sync_tied_weights(const std::vector<models::LanguageModel*>& chunks,
                       parallel::Communicator& pp) {
  if (!tied_pipeline(*chunks[0]) || pp.size() == 1) return;
  NoGradGuard ng;
  if (pp.rank() == 0) pp.send(find_param(*chunks[0], "wte.weight").detach(), pp.size() - 1);
  if (pp.rank() == pp.size() - 1) pp.recv(tied_copy(*chunks.back()).detach(), 0);
}

}  // namespace kiln::launch
