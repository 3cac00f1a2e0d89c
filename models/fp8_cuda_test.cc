// fp8 in the models (core/ops/fp8.h through models::Transformer::set_fp8), label gpu:
// 1. set_fp8 marks every linear layer of the blocks and nothing else (runs without a GPU too).
// 2. A tiny GPT-2 (2 layers, C = 128, vocab 512, T = 64, batch 16) trained 30 AdamW steps in
//    bf16 and in bf16 + fp8 from the same seed and data: the fp8 losses stay within 5% of the
//    bf16 ones at every step (bf16 against f32 stays within 2% over 50 steps,
//    tests/gpu_train_test.cc; fp8 adds ~3-5% noise per GEMM, which averages out over the
//    parameters) and fall by more than 0.5 nat (gpu_train_test.cc's learning criterion). Skips
//    without a GPU of compute capability 8.9+.
// 3. The same tiny GPT-2 trained in fp8 with GPT-2's MLP as one fp8_mlp_gelu op
//    (KILN_FP8_FUSED_MLP=1; the graph holds Fp8MlpGelu nodes) and as fp8_linear -> gelu ->
//    fp8_linear: the losses within 1e-2 of each other at every step. The two runs differ only in
//    h's rounding (GELU of the f32 GEMM result in the epilogue against GELU of its bf16 rounding:
//    one bf16 ulp on ~30% of h's elements, core/ops/fp8_fused_cuda_test.cc), a smaller
//    perturbation than fp8 against bf16 (every GEMM operand rounded to 3 or 2 mantissa bits),
//    whose losses were measured 8.2e-4 apart at most over these 30 steps (benchmarks/RESULTS.md);
//    1e-2 is 12x that, and a wrong gradient in the fused op stops the loss from falling. A third
//    run adds the bias gradients from dY's cast (KILN_FP8_FUSED_DBIAS=1: f32 partial sums
//    instead of sum_to's f64, one bf16 rounding either way), held to the same 1e-2. Not yet run
//    on a GPU.
// 4. Delayed scaling under full activation recompute: the recomputed blocks scale each fp8 tensor
//    by the amax the first forward used (core/recompute.h RecomputeLog), so loss and every
//    gradient are bit-identical to the run without recompute over passes on different batches
//    (deterministic mode). Not yet run on a GPU.
// The fp8 kernels themselves are tested against host references in core/ops/fp8_cuda_test.cc and
// core/ops/fp8_fused_cuda_test.cc.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/check.h"
#include "core/cuda/runtime.h"
#include "core/ops/fp8.h"
#include "core/random.h"
#include "core/testing/gpu_test_util.h"
#include "models/model.h"
#include "models/transformer.h"
#include "optim/optimizer.h"

namespace kiln {
namespace {

using testing::GpuTest;
using Fp8Cuda = GpuTest;

const Device kGpu = Device::cuda(0);

#define KILN_REQUIRE_FP8()                                                                  \
  do {                                                                                      \
    if (cuda::compute_capability() < 89) GTEST_SKIP() << "fp8 GEMMs need compute cap 8.9+"; \
  } while (0)

// set_fp8 marks every linear layer of the blocks and nothing else; on the CPU the flag changes
// nothing (these run without a GPU too).
TEST(Fp8Model, SetFp8MarksTheBlockLinearsOnly) {
  for (models::Family fam : {models::Family::kGPT2, models::Family::kLlama}) {
    models::ModelSpec s;
    s.family = fam;
    s.n_layer = 2;
    s.n_head = 2;
    s.n_kv_head = fam == models::Family::kLlama ? 1 : 2;
    s.d_model = 32;
    s.d_ff = 64;
    s.vocab_size = 64;
    s.max_seq_len = 16;
    s.tied_embeddings = fam == models::Family::kGPT2;
    s.bias = fam == models::Family::kGPT2;
    models::Transformer m(s, 5);
    Generator gen(3);
    Tensor ids = randint({2, 16}, gen, s.vocab_size, DType::kI32);
    const Tensor before = m.forward(ids).detach();
    m.set_fp8(true);
    EXPECT_TRUE(m.fp8());
    int marked = 0;
    for (const auto& b : m.h) {
      for (const auto& l : {b->attn->c_attn, b->attn->c_proj, b->attn->q_proj, b->attn->k_proj,
                            b->attn->v_proj, b->attn->o_proj, b->mlp->c_fc, b->mlp->c_proj,
                            b->mlp->gate_proj, b->mlp->up_proj, b->mlp->down_proj}) {
        if (!l) continue;
        EXPECT_TRUE(l->fp8);
        ++marked;
      }
    }
    EXPECT_EQ(marked, fam == models::Family::kGPT2 ? 2 * 4 : 2 * 7);
    if (m.lm_head) EXPECT_FALSE(m.lm_head->fp8) << "the classifier stays out of fp8";
    EXPECT_TRUE(testing::same_bits(m.forward(ids).detach(), before)) << "CPU forward changed";
    set_fp8_fused_mlp_override(1);  // the fused fp8 MLP is CUDA-only: the CPU forward stays
    EXPECT_TRUE(testing::same_bits(m.forward(ids).detach(), before)) << "fused MLP on the CPU";
    set_fp8_fused_mlp_override(-1);
    m.set_fp8(false);
    EXPECT_FALSE(m.h[0]->attn->c_proj ? m.h[0]->attn->c_proj->fp8 : m.h[0]->attn->o_proj->fp8);
  }
}

// ---- 2. a tiny GPT-2 trained in bf16 and in bf16 + fp8 ----

constexpr int kTrainSteps = 30;

// Batches of a learnable rule: each row starts at a random token and continues with
// next = (17 * cur + 5 + 97 * c) mod V, c uniform in [0, 4): four successors per token, as the
// trainer's synthetic data, so the loss can fall from log(V) = 6.24 towards log(4) = 1.39. (The
// f32 CPU run of this model and schedule goes from 6.26 to 3.16 in 30 steps; a bf16 CPU run stays
// within 0.04% of it.)
std::pair<Tensor, Tensor> rule_batch(Generator& gen, int64_t b, int64_t t, int64_t v) {
  std::vector<int64_t> ids(b * t), tgt(b * t);
  const std::vector<int64_t> starts = randint({b}, gen, v).to_ints();
  const std::vector<int64_t> choice = randint({b * t}, gen, 4).to_ints();
  for (int64_t i = 0; i < b; ++i) {
    int64_t cur = starts[i];
    for (int64_t j = 0; j < t; ++j) {
      ids[i * t + j] = cur;
      cur = (17 * cur + 5 + 97 * choice[i * t + j]) % v;
      tgt[i * t + j] = cur;
    }
  }
  return {Tensor::from_ints(ids, {b, t}, DType::kI32, kGpu),
          Tensor::from_ints(tgt, {b, t}, DType::kI32, kGpu)};
}

// Whether the graph below `root` holds a node named `name`.
bool graph_has(const Tensor& root, const char* name) {
  std::vector<std::shared_ptr<Node>> todo = {root.grad_fn()};
  for (size_t i = 0; i < todo.size() && i < 4096; ++i) {
    if (!todo[i]) continue;
    if (std::strcmp(todo[i]->name(), name) == 0) return true;
    for (const Edge& e : todo[i]->next) todo.push_back(e.fn);
  }
  return false;
}

// The tiny GPT-2 of these tests: 2 layers, C 128, 4 heads, vocabulary 512, T 64.
models::ModelSpec tiny_gpt2() {
  models::ModelSpec s;
  s.family = models::Family::kGPT2;
  s.n_layer = 2;
  s.n_head = 4;
  s.n_kv_head = 4;
  s.d_model = 128;
  s.d_ff = 512;
  s.vocab_size = 512;
  s.max_seq_len = 64;
  return s;
}

std::vector<double> train_tiny(bool fp8, bool fused_mlp = false, bool fused_dbias = false) {
  set_fp8_fused_mlp_override(fused_mlp ? 1 : 0);
  set_fp8_fused_dbias_override(fused_dbias ? 1 : 0);
  const models::ModelSpec s = tiny_gpt2();
  std::unique_ptr<models::LanguageModel> model = models::build_model(s, 11);
  model->to(kGpu);
  model->set_compute_dtype(DType::kBF16);
  model->set_fp8(fp8);
  model->set_training(true);
  auto* tr = dynamic_cast<models::Transformer*>(model.get());
  KILN_CHECK(tr != nullptr);
  {  // the fp8 path is really taken in the blocks (and only with fp8 on)
    Tensor probe = Tensor::zeros({16, 64, s.d_model}, DType::kBF16, kGpu);
    EXPECT_EQ(tr->h[0]->attn->c_attn->uses_fp8(probe, DType::kBF16), fp8);
    EXPECT_EQ(tr->h[1]->mlp->c_fc->uses_fp8(probe, DType::kBF16), fp8);
  }
  std::vector<nn::Parameter> params = model->parameters();
  optim::AdamW opt(params, optim::AdamWOptions{0.9, 0.95, 1e-8, 0.1});
  Generator data(2024);
  std::vector<double> losses;
  for (int step = 0; step < kTrainSteps; ++step) {
    auto [x, y] = rule_batch(data, 16, 64, s.vocab_size);
    Tensor loss = model->loss(x, y);
    if (step == 0 && fp8) {  // the graph holds fp8 nodes (the MLP's as one when fused)
      EXPECT_TRUE(graph_has(loss, "Fp8Linear")) << "no Fp8Linear node in the fp8 model's graph";
      EXPECT_EQ(graph_has(loss, "Fp8MlpGelu"), fused_mlp);
    }
    loss.backward();
    optim::clip_grad_norm(params, 1.0);
    const double lr = 3e-3 * std::min(1.0, (step + 1) / 5.0);
    opt.step(lr);
    opt.zero_grad();
    losses.push_back(loss.item());
  }
  set_fp8_fused_mlp_override(-1);
  set_fp8_fused_dbias_override(-1);
  return losses;
}

TEST_F(Fp8Cuda, TinyGpt2TrainsLikeBf16) {
  KILN_REQUIRE_FP8();
  const std::vector<double> bf16 = train_tiny(false), fp8 = train_tiny(true);
  ASSERT_EQ(bf16.size(), static_cast<size_t>(kTrainSteps));
  ASSERT_EQ(fp8.size(), static_cast<size_t>(kTrainSteps));
  double worst = 0;
  int worst_step = 0;
  for (int i = 0; i < kTrainSteps; ++i) {
    const double d = std::fabs(fp8[i] - bf16[i]) / std::fabs(bf16[i]);
    if (!(d <= worst)) {
      worst = d;
      worst_step = i;
    }
  }
  std::printf(
      "tiny GPT-2, %d steps: bf16 %.4f -> %.4f, bf16+fp8 %.4f -> %.4f, max rel diff %.3e "
      "at step %d\n",
      kTrainSteps, bf16.front(), bf16.back(), fp8.front(), fp8.back(), worst, worst_step);
  std::printf("  backward passes with dY in e4m3 (no e5m2 x e4m3 kernel): %lld\n",
              static_cast<long long>(fp8_e4m3_backward_count()));
  for (int i = 0; i < kTrainSteps; i += 5)
    std::printf("  step %2d: bf16 %.4f fp8 %.4f\n", i, bf16[i], fp8[i]);
  EXPECT_LE(worst, 5e-2);
  EXPECT_NE(fp8.front(), bf16.front()) << "the fp8 forward gave the bf16 loss bits";
  EXPECT_LT(bf16.back(), bf16.front() - 0.5) << "bf16 did not learn";
  EXPECT_LT(fp8.back(), fp8.front() - 0.5) << "fp8 did not learn";
}

TEST_F(Fp8Cuda, TinyGpt2WithTheFusedFp8MlpTrainsLikeTheComposedOne) {
  KILN_REQUIRE_FP8();
  const std::vector<double> composed = train_tiny(true);
  const std::vector<double> fused = train_tiny(true, true);
  const std::vector<double> both = train_tiny(true, true, true);
  for (const auto& [name, run] :
       {std::pair<const char*, const std::vector<double>*>{"fp8_mlp_gelu", &fused},
        {"fp8_mlp_gelu + fused dbias", &both}}) {
    ASSERT_EQ(run->size(), static_cast<size_t>(kTrainSteps));
    double worst = 0;
    for (int i = 0; i < kTrainSteps; ++i)
      worst = std::max(worst, std::fabs((*run)[i] - composed[i]) / std::fabs(composed[i]));
    std::printf(
        "tiny GPT-2 in fp8, %d steps: composed MLP %.4f -> %.4f, %s %.4f -> %.4f, max rel "
        "diff %.3e\n",
        kTrainSteps, composed.front(), composed.back(), name, run->front(), run->back(), worst);
    EXPECT_LE(worst, 1e-2) << name;
    EXPECT_LT(run->back(), run->front() - 0.5) << name << " did not learn";
  }
  std::printf("  fp8_mlp_gelu forwards with the GELU unfused: %lld\n",
              static_cast<long long>(fp8_mlp_unfused_gelu_count()));
}

TEST_F(Fp8Cuda, RecomputeKeepsDelayedScalingBitIdentical) {
  KILN_REQUIRE_FP8();
  struct Reset {
    ~Reset() {
      set_fp8_delayed_scaling_override(-1);
      cuda::set_deterministic(false);
    }
  } reset;
  set_fp8_delayed_scaling_override(1);
  cuda::set_deterministic(true);  // attention's backward sums in a fixed order
  const models::ModelSpec s = tiny_gpt2();
  std::unique_ptr<models::LanguageModel> plain = models::build_model(s, 11),
                                         rc = models::build_model(s, 11);
  for (models::LanguageModel* m : {plain.get(), rc.get()}) {
    m->to(kGpu);
    m->set_compute_dtype(DType::kBF16);
    m->set_fp8(true);
    m->set_training(true);
  }
  rc->set_recompute(models::Recompute::kFull);
  Generator data(7);
  for (int pass = 0; pass < 3; ++pass) {  // other batches: other amaxes, so the scales lag
    SCOPED_TRACE("pass " + std::to_string(pass));
    auto [x, y] = rule_batch(data, 16, 64, s.vocab_size);
    Tensor la = plain->loss(x, y), lb = rc->loss(x, y);
    EXPECT_TRUE(testing::same_bits(la.to(Device::cpu()), lb.to(Device::cpu())));
    EXPECT_TRUE(graph_has(lb, "Checkpoint")) << "recompute is not on";
    la.backward();
    lb.backward();
    std::vector<nn::Parameter> pa = plain->parameters(), pb = rc->parameters();
    for (size_t i = 0; i < pa.size(); ++i) {
      EXPECT_TRUE(testing::same_bits(pa[i].tensor.grad().to(Device::cpu()),
                                     pb[i].tensor.grad().to(Device::cpu())))
          << pa[i].name;
      pa[i].tensor.zero_grad();
      pb[i].tensor.zero_grad();
    }
  }
}

}  // namespace
}  // namespace kiln
