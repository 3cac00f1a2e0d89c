// kiln plan's model against the code it describes: the parameter list it builds from a spec is the
// model's own (names, sizes, registration order, which DataParallel's units follow), stages and
// shards add up, and the plan moves the right way with ZeRO and recompute. The peak itself is
// checked against real trainings by tests/plan_test.py (ctest plan_memory_cpu).
#include "launch/memory_plan.h"

#include <gtest/gtest.h>

#include "models/presets.h"

namespace kiln::launch {
namespace {

using plan_internal::ParamInfo;
using plan_internal::stage_params;

ModelConfig preset(const std::string& name) {
  absl::StatusOr<ModelConfig> m = get_preset(name);
  EXPECT_TRUE(m.ok());
  EXPECT_TRUE(resolve_model_config(&*m).ok());
  return *m;
}

int64_t total(const std::vector<ParamInfo>& ps) {
  int64_t n = 0;
  for (const ParamInfo& p : ps) n += p.numel;
  return n;
}

TEST(MemoryPlan, ParameterListIsTheModels) {
  for (const char* name : {"gpt2-tiny", "llama-tiny"}) {
    ModelConfig m = preset(name);
    m.set_vocab_size(96);
    const models::ModelSpec spec = models::spec_from_config(m);
    std::unique_ptr<models::LanguageModel> model = models::build_model(spec, 1);
    const std::vector<nn::Parameter> real = model->parameters();
    const std::vector<ParamInfo> planned = stage_params(spec, 1, 1, 0);
    ASSERT_EQ(real.size(), planned.size()) << name;
    for (size_t i = 0; i < real.size(); ++i) {
      EXPECT_EQ(real[i].name, planned[i].name) << name << " #" << i;
      EXPECT_EQ(real[i].tensor.numel(), planned[i].numel) << real[i].name;
    }
  }
}

TEST(MemoryPlan, PresetsCountTheirParameters) {
  for (const char* name : {"gpt2-124m", "gpt2-1.5b", "llama-1b", "llama-8b"}) {
    const ModelConfig m = preset(name);
    const models::ModelSpec spec = models::spec_from_config(m);
    EXPECT_EQ(total(stage_params(spec, 1, 1, 0)), param_count(m)) << name;
    // Two pipeline stages hold every parameter once, plus GPT-2's tied table on the last stage.
    const int64_t both = total(stage_params(spec, 1, 2, 0)) + total(stage_params(spec, 1, 2, 1));
    const int64_t tied = spec.tied_embeddings ? spec.padded_vocab() * spec.d_model : 0;
    const int64_t wpe = name[0] == 'g' ? spec.max_seq_len * spec.d_model : 0;
    EXPECT_EQ(both, param_count(m) + tied) << name;
    // tp = 4 splits everything but the norms, GPT-2's positions and the row layers' biases.
    const int64_t tp4 = total(stage_params(spec, 4, 1, 0));
    EXPECT_LT(tp4, param_count(m) / 4 + wpe + 3 * spec.n_layer * spec.d_model + 2 * spec.d_model)
        << name;
    EXPECT_GT(tp4, param_count(m) / 4) << name;
  }
}

PlanInput gpt2_124m(bool cuda) {
  PlanInput in;
  ModelConfig m = preset("gpt2-124m");
  m.set_vocab_pad_multiple(128);
  in.spec = models::spec_from_config(m);
  in.seq_len = 1024;
  in.cuda = cuda;
  in.compute = cuda ? DType::kBF16 : DType::kF32;
  return in;
}

TEST(MemoryPlan, MovesWithZeroAndRecompute) {
  for (bool cuda : {false, true}) {
    const PlanInput in = gpt2_124m(cuda);
    PlanLayout l;
    l.dp = 8;
    l.micro_batch = 8;
    int64_t last = INT64_MAX;
    for (int zero = 0; zero <= 3; ++zero) {  // each stage shards more
      l.zero = zero;
      const int64_t peak = plan_memory(in, l).peak;
      EXPECT_LT(peak, last) << "zero " << zero << " cuda " << cuda;
      last = peak;
    }
    l.zero = 1;
    const int64_t none = plan_memory(in, l).peak;
    l.recompute = models::Recompute::kSelective;
    const int64_t selective = plan_memory(in, l).peak;
    l.recompute = models::Recompute::kFull;
    const int64_t full = plan_memory(in, l).peak;
    EXPECT_LE(selective, none);
    // On the GPU the blocks' activations dominate; on the CPU the (N, V) logits and their gradient
    // (3.1 GB here) stay whatever the policy.
    EXPECT_LT(full, cuda ? selective / 2 : selective) << "cuda " << cuda;
  }
}

// The activations term of a plan ("N block(s) x ..."): N.
int64_t activation_blocks(const MemoryPlan& p) {
  EXPECT_FALSE(p.layout.measured());
  for (const MemoryTerm& t : p.terms)
    if (t.name == "activations") return std::stoll(t.how);
  return -1;
}

// pp 4, micro-batches of 4 sequences, `accum` of them per step (one flush).
PlanLayout pp4(int64_t accum) {
  PlanLayout l;
  l.pp = 4;
  l.micro_batch = 4;
  l.accum = accum;
  return l;
}

TEST(MemoryPlan, MicroBatchesInFlightFollowTheSchedule) {
  // pp 4, 3 blocks a stage, 8 micro-batches in one flush: the first stage (the peak here) holds
  // 4 micro-batches under 1F1B (pp - 0), all 8 under GPipe, 4 under ZB-H1 (pp; every stage does,
  // and the last one's head makes it the peak). Interleaved, v = 2, 12 layers over 8 chunks
  // (2/1/1/2/1/2/2/1: stage 0 runs chunks of 2 and 1 blocks): min(v m, 2 (p - 1) + (v - 1) p + 1)
  // = 11 chunk passes, each counted at the larger chunk's 2 blocks.
  using parallel::pipeline::ScheduleKind;
  const PlanInput in = gpt2_124m(true);
  const PlanLayout l = pp4(8);
  auto blocks_at = [&](ScheduleKind k, int v, std::vector<int64_t> layers) {
    PlanLayout x = l;
    x.schedule = k;
    x.v = v;
    x.layers = std::move(layers);
    const MemoryPlan p = plan_memory(in, x);
    return activation_blocks(p);
  };
  EXPECT_EQ(blocks_at(ScheduleKind::k1F1B, 1, {}), 4 * 3);
  EXPECT_EQ(blocks_at(ScheduleKind::kGPipe, 1, {}), 8 * 3);
  EXPECT_EQ(blocks_at(ScheduleKind::kZBH1, 1, {}), 4 * 3);
  EXPECT_EQ(blocks_at(ScheduleKind::kInterleaved1F1B, 2, {2, 1, 1, 2, 1, 2, 2, 1}), 11 * 2);
}

TEST(MemoryPlan, UnevenSplitsPlanTheStageWithMostLayers) {
  // 12 layers split 2 / 2 / 6 / 2 over pp 4: stage 2 holds 6 blocks (no embedding, no head) and
  // its activations and parameters make the peak; the stages' parameters add up to the model's.
  const PlanInput in = gpt2_124m(true);
  PlanLayout l = pp4(4);
  l.layers = {2, 2, 6, 2};
  int64_t sum = 0;
  for (int s = 0; s < 4; ++s) sum += total(plan_internal::stage_params(in.spec, l, s));
  int64_t tied_copy = in.spec.padded_vocab() * in.spec.d_model;  // GPT-2's head copy of wte
  EXPECT_EQ(sum - tied_copy, total(stage_params(in.spec, 1, 1, 0)));
  EXPECT_EQ(plan_internal::stage_chunks(in.spec, l, 2),
            (std::vector<std::pair<int64_t, int64_t>>{{4, 10}}));
  const MemoryPlan p = plan_memory(in, l);
  EXPECT_EQ(p.stage, 2);
  EXPECT_EQ(activation_blocks(p), 2 * 6);  // 1F1B: pp - 2 micro-batches of 6 blocks
}

TEST(MemoryPlan, LayoutsOfAWorld) {
  const PlanInput in = gpt2_124m(true);
  const std::vector<PlanLayout> ls = all_layouts(in.spec, 8, 64, 8);
  // tp in {1, 2, 4} (12 heads), pp in {1, 2, 4} (12 layers), dp = 8 / (tp pp), ZeRO only with dp
  // > 1.
  EXPECT_FALSE(ls.empty());
  for (const PlanLayout& l : ls) {
    EXPECT_EQ(l.dp * l.tp * l.pp, 8);
    EXPECT_EQ(12 % l.tp, 0);
    EXPECT_EQ(l.micro_batch * l.dp * l.accum, 64);
    if (l.dp == 1) EXPECT_EQ(l.zero, 0);
  }
}

}  // namespace
}  // namespace kiln::launch
