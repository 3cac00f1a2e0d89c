// The pipeline executor with several model chunks per stage (interleaved 1F1B, v = 2), and every
// other schedule through the same path, under mpirun -np 2 and -np 4: the stages are built from
// the stage constructor (models::build_stage, chunk c of stage s = virtual stage c * pp + s), run
// by PipelineExecutor over the world as the pp group, and updated by plain SGD; 20 steps of
// losses must equal a single model's (NoPipeline, same micro-batches, same SGD) within 1e-6.
// (The executor alone; tests/pp_test.cc runs interleaved v = 2 through the Trainer.)
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "core/autograd.h"
#include "core/ops/elementwise.h"
#include "core/random.h"
#include "launch/pipeline_stage.h"
#include "models/model.h"
#include "parallel/forward_backward.h"
#include "parallel/pipeline/executor.h"
#include "parallel/world.h"

namespace kiln {
namespace {

using parallel::pipeline::ScheduleKind;
constexpr int kSteps = 20, kMicro = 4;
constexpr double kLr = 0.05;

models::ModelSpec tiny(bool llama) {
  models::ModelSpec s;
  s.family = llama ? models::Family::kLlama : models::Family::kGPT2;
  s.n_layer = 8;
  s.n_head = 2;
  s.n_kv_head = llama ? 1 : 2;
  s.d_model = 16;
  s.d_ff = 32;
  s.vocab_size = 64;
  s.max_seq_len = 8;
  s.tied_embeddings = !llama;
  s.bias = !llama;
  return s;
}

// The micro-batch sequence every run draws from: (2, 8) ids, targets shifted.
struct Data {
  Generator gen{11};
  parallel::MicroBatch next() {
    Tensor ids = randint({2, 9}, gen, 64);
    std::vector<double> v = ids.to_vector();
    std::vector<double> in, tg;
    for (int b = 0; b < 2; ++b)
      for (int t = 0; t < 8; ++t) {
        in.push_back(v[b * 9 + t]);
        tg.push_back(v[b * 9 + t + 1]);
      }
    return {Tensor::from_vector(in, {2, 8}, DType::kI64),
            Tensor::from_vector(tg, {2, 8}, DType::kI64)};
  }
};

void sgd(const std::vector<models::LanguageModel*>& models, const Tensor& skip) {
  NoGradGuard ng;
  for (models::LanguageModel* m : models)
    for (const nn::Parameter& p : m->parameters()) {
      if (skip.defined() && p.tensor.impl_ptr() == skip.impl_ptr()) continue;
      if (p.tensor.grad().defined()) add_(p.tensor, p.tensor.grad(), -kLr);
      Tensor(p.tensor).set_grad(Tensor());
    }
}

std::vector<double> single(bool llama) {
  auto model = models::build_model(tiny(llama), 5);
  models::LanguageModel* m = model.get();
  parallel::NoPipeline fb([m](const Tensor& x, const Tensor& y) { return m->loss(x, y); });
  parallel::NoGradSync sync;
  Data data;
  std::vector<double> out;
  for (int s = 0; s < kSteps; ++s) {
    out.push_back(fb.run([&] { return data.next(); }, kMicro, 1.0, sync).item() / kMicro);
    sgd({m}, Tensor());
  }
  return out;
}

std::vector<double> piped(bool llama, ScheduleKind kind, int v, parallel::Communicator& pp) {
  const int p = pp.size(), chunks = p * v;
  std::vector<std::unique_ptr<models::LanguageModel>> owned;
  std::vector<models::LanguageModel*> mine;
  for (int c = 0; c < v; ++c) {
    owned.push_back(
        models::build_stage(tiny(llama), 5, launch::stage_spec(8, c * p + pp.rank(), chunks)));
    mine.push_back(owned.back().get());
  }
  launch::ModelStageWork work(mine, parallel::pipeline::splits_backward(kind));
  parallel::pipeline::PipelineExecutor exec({kind, p, 0, v, !llama}, pp, work);
  parallel::NoGradSync sync;
  Data data;
  const Tensor tied = launch::tied_copy(*mine.back());
  std::vector<double> out;
  for (int s = 0; s < kSteps; ++s) {
    out.push_back(exec.run([&] { return data.next(); }, kMicro, 1.0, sync).item() / kMicro);
    sgd(mine, tied);
    launch::sync_tied_weights(mine, pp);
  }
  return out;
}

struct Case {
  ScheduleKind kind;
  int v;
};

TEST(PipelineChunks, LossesMatchSingleModel) {
  const parallel::World world = parallel::detect_world();
  std::unique_ptr<parallel::Communicator> comm = parallel::make_cpu_world();
  ASSERT_GT(comm->size(), 1) << "run under mpirun -np 2 or -np 4";
  for (bool llama : {false, true})
    for (Case c : {Case{ScheduleKind::kInterleaved1F1B, 2}, Case{ScheduleKind::kGPipe, 1},
                   Case{ScheduleKind::k1F1B, 1}, Case{ScheduleKind::kZBH1, 1}}) {
      const std::vector<double> ref = single(llama), got = piped(llama, c.kind, c.v, *comm);
      double worst = 0;
      for (int i = 0; i < kSteps; ++i)
        worst = std::max(worst, std::fabs(got[i] - ref[i]) / std::fabs(ref[i]));
      if (comm->rank() == 0)
        std::printf("pp=%d %s %s v=%d: max relative loss difference %.3g over %d steps\n",
                    comm->size(), llama ? "llama" : "gpt2",
                    parallel::pipeline::schedule_name(c.kind).c_str(), c.v, worst, kSteps);
      EXPECT_LE(worst, 1e-6) << parallel::pipeline::schedule_name(c.kind);
    }
}

}  // namespace
}  // namespace kiln
