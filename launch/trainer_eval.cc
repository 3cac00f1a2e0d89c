// The Trainer's evaluation (mean validation loss) and text samples, both outside the training
// step: ZeRO-3 gathers the embeddings and head around them.
#include <cmath>

#include "absl/strings/str_join.h"
#include "core/autograd.h"
#include "launch/trainer.h"
#include "models/generate.h"

namespace kiln::launch {

double Trainer::evaluate() {
  if (!make_val_) return NAN;
  join_optimizer();  // the forward below reads the fp32 parameters (no scope)
  NoGradGuard ng;
  for (models::LanguageModel* c : chunk_ptrs()) c->set_training(false);
  dp_->begin_forward();  // ZeRO-3: the embeddings and head are gathered for the pass
  std::unique_ptr<BatchSource> val = make_val_();
  const int batches = cfg_.eval().batches();
  const int64_t micro = cfg_.parallel().micro_batch_size();
  const int64_t seq = cfg_.data().seq_len();
  double total = 0;
  int n = 0;
  for (int i = 0; i < batches; ++i) {
    absl::StatusOr<Batch> b = val->next(micro, seq);
    if (!b.ok()) break;  // a small validation set ends early
    const Tensor in = to_device(b->inputs), tg = to_device(b->targets);
    total += pipeline_ ? pipeline_->forward_loss({in, tg}) : model().loss(in, tg).item();
    ++n;
  }
  dp_->end_forward();
  for (models::LanguageModel* c : chunk_ptrs()) c->set_training(true);
  return n ? total / n : NAN;
}

std::string Trainer::sample(int64_t step) {
  const int64_t n = cfg_.eval().sample_tokens();
  if (n <= 0 || pipeline_) return "";  // no sampling through a pipeline yet
  join_optimizer();
  std::vector<int64_t> prompt;
  if (!cfg_.eval().sample_prompt().empty() && codec_.encode)
    prompt = codec_.encode(cfg_.eval().sample_prompt());
  if (prompt.empty()) prompt = {codec_.eot >= 0 ? codec_.eot : 0};
  models::SampleOptions so;
  so.max_new_tokens = n;
  so.temperature = cfg_.eval().sample_temperature();
  so.top_k = cfg_.eval().sample_top_k();
  dp_->begin_forward();
  std::vector<int64_t> ids = models::generate(model(), prompt, so, sample_gen_);
  dp_->end_forward();
  std::string text;
  if (codec_.decode) {
    text = codec_.decode(ids);
  } else {
    text = absl::StrJoin(ids, " ");
  }
  metrics_.log_text("sample", step, "text", text);
  return text;
}

}  // namespace kiln::launch
