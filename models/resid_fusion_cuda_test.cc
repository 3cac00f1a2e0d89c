// The residual fusions of Block::forward on CUDA (label gpu; skips without a GPU): tiny GPT-2
// (LayerNorm, biases, mlp_gelu) and Llama (RMSNorm, GQA, SwiGLU) models, 2 blocks, one
// training step's loss and every parameter gradient with Block::resid_epilogue and
// Block::norm_skip_fused on against off, under no / selective / full recompute:
// - bf16 compute: the MLP's residual ran in the GEMM epilogue (the separate-C GEMM count of
//   core/cuda/gemm.h rises by one per block; Llama's node is LinearAddCuda) and the graph holds
//   one norm-with-skip node per block (not checked under full recompute, whose checkpoint hides
//   the blocks' nodes); loss within 1e-2, every gradient within 5e-2 of its largest element
//   (both runs round each GEMM output to bf16, in other places: the fused add rounds once).
// - f32 compute: the epilogue is not taken (16-bit only), the norm-with-skip is; loss and
//   gradients within 2e-5 (the fused norm backward adds the skip gradient before rounding).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/cuda/gemm.h"
#include "core/random.h"
#include "core/testing/gpu_test_util.h"
#include "models/model.h"
#include "models/model_test_util.h"
#include "models/transformer.h"

namespace kiln {
namespace {

using ResidFusionCuda = testing::GpuTest;
using models::test_util::rel_diff;

models::ModelSpec tiny(models::Family f) {
  models::ModelSpec s;
  s.family = f;
  s.n_layer = 2;
  s.n_head = 4;
  s.n_kv_head = f == models::Family::kLlama ? 2 : 4;
  s.d_model = 64;
  s.d_ff = f == models::Family::kLlama ? 96 : 256;
  s.vocab_size = 128;
  s.max_seq_len = 32;
  s.tied_embeddings = f == models::Family::kGPT2;
  s.bias = f == models::Family::kGPT2;
  return s;
}

struct Result {
  Tensor loss;                       // on the CPU
  std::vector<Tensor> grads;         // every parameter's, f64 on the CPU
  std::map<std::string, int> nodes;  // of the loss's graph
  int64_t separate_c = 0;            // GEMMs with a separate C during the step
};

Result step(models::Transformer& m, bool fused) {
  for (const auto& b : m.h) b->resid_epilogue = b->norm_skip_fused = fused;
  Generator gen(7);
  const int64_t v = m.spec().vocab_size;
  Tensor ids = randint({2, 32}, gen, v, DType::kI32).to(Device::cuda(0));
  Tensor tgt = randint({2, 32}, gen, v, DType::kI32).to(Device::cuda(0));
  const int64_t before = cuda::gemm_separate_c_count();
  Tensor loss = m.loss(ids, tgt);
  Result r{loss.detach().to(Device::cpu()), {}, models::test_util::node_counts(loss), 0};
  loss.backward();
  r.separate_c = cuda::gemm_separate_c_count() - before;
  for (nn::Parameter& p : m.parameters()) {
    EXPECT_TRUE(p.tensor.grad().defined()) << p.name;
    r.grads.push_back(p.tensor.grad().to(Device::cpu()).to(DType::kF64));
    p.tensor.zero_grad();
  }
  return r;
}

int count(const Result& r, const char* name) {
  auto it = r.nodes.find(name);
  return it == r.nodes.end() ? 0 : it->second;
}

void check(models::Family fam, DType compute, double loss_tol, double grad_tol) {
  const bool gpt2 = fam == models::Family::kGPT2;
  for (models::Recompute rc :
       {models::Recompute::kNone, models::Recompute::kSelective, models::Recompute::kFull}) {
    const std::string what = std::string(gpt2 ? "gpt2 " : "llama ") + dtype_name(compute) +
                             " recompute " + std::to_string(static_cast<int>(rc));
    models::Transformer m(tiny(fam), 3);
    m.to(Device::cuda(0));
    m.set_compute_dtype(compute);
    m.set_recompute(rc);
    const Result plain = step(m, false);
    const Result fused = step(m, true);
    const bool epilogue = compute != DType::kF32;
    EXPECT_EQ(plain.separate_c, 0) << what;
    // Full recompute runs each block's forward twice (once more in backward).
    const int64_t per_run = rc == models::Recompute::kFull ? 2 : 1;
    EXPECT_EQ(fused.separate_c, epilogue ? 2 * per_run : 0) << what << ": epilogue GEMMs";
    if (rc != models::Recompute::kFull) {
      EXPECT_EQ(count(fused, gpt2 ? "LayerNormSkip" : "RmsNormSkip"), 2) << what;
      if (!gpt2) EXPECT_EQ(count(fused, "LinearAddCuda"), epilogue ? 2 : 0) << what;
      EXPECT_EQ(count(plain, gpt2 ? "LayerNormSkip" : "RmsNormSkip"), 0) << what;
    }
    EXPECT_LE(rel_diff(fused.loss, plain.loss), loss_tol)
        << what << ": loss " << fused.loss.item() << " vs " << plain.loss.item();
    const std::vector<nn::Parameter> params = m.parameters();
    ASSERT_EQ(fused.grads.size(), params.size()) << what;
    for (size_t i = 0; i < params.size(); ++i)
      EXPECT_LE(rel_diff(fused.grads[i], plain.grads[i]), grad_tol)
          << what << ": " << params[i].name;
  }
}

TEST_F(ResidFusionCuda, Gpt2Bf16OnMatchesOff) {
  check(models::Family::kGPT2, DType::kBF16, 1e-2, 5e-2);
}
TEST_F(ResidFusionCuda, LlamaBf16OnMatchesOff) {
  check(models::Family::kLlama, DType::kBF16, 1e-2, 5e-2);
}
TEST_F(ResidFusionCuda, Gpt2F32OnMatchesOff) {
  check(models::Family::kGPT2, DType::kF32, 2e-5, 2e-5);
}
TEST_F(ResidFusionCuda, LlamaF32OnMatchesOff) {
  check(models::Family::kLlama, DType::kF32, 2e-5, 2e-5);
}

}  // namespace
}  // namespace kiln
