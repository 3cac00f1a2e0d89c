// The residual fusions of Block::forward (issue 17: the MLP's residual add in its last GEMM's
// epilogue, Block::resid_epilogue; the first norm and the skip path as one op,
// Block::norm_skip_fused) forced onto the CPU with Block::fuse_on_cpu, where the ops compose the
// unfused ones: GPT-2 and Llama tiny models (f32 and bf16 compute, no / selective / full
// recompute, dropout in training) give the loss and every parameter gradient of the unfused model
// bit for bit; the graph holds one norm-with-skip node per block whose skip output feeds the
// block's first residual add; KILN_RESID_EPILOGUE / KILN_NORM_SKIP_FUSED set the defaults (ctest
// runs that test again with both 0, models/CMakeLists.txt).
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/random.h"
#include "core/testing/gradcheck.h"
#include "models/model_test_util.h"
#include "models/transformer.h"

namespace kiln::models {
namespace {

ModelSpec tiny(Family f) { return test_util::tiny_spec(f); }

struct StepResult {
  std::vector<Tensor> out;  // the loss, then every parameter's gradient
  int skip_nodes = 0;       // RmsNormSkip / LayerNormSkip nodes in the loss's graph
  int skip_uses = 0;        // edges into output 0 (the skip path) of those nodes
};

StepResult run(Family fam, bool fused, Recompute rc, double dropout, DType compute) {
  ModelSpec s = tiny(fam);
  s.dropout = dropout;
  Transformer m(s, 3);
  m.set_recompute(rc);
  m.set_compute_dtype(compute);
  for (const auto& b : m.h) {
    b->resid_epilogue = b->norm_skip_fused = fused;
    b->fuse_on_cpu = true;
  }
  Generator g(5);
  Tensor ids = randint({2, 7}, g, s.vocab_size, DType::kI32);
  Tensor targets = randint({2, 7}, g, s.vocab_size, DType::kI32);
  Tensor loss = m.loss(ids, targets);
  StepResult r;
  test_util::for_each_node(loss, [&](const Node& n) {
    const std::string name = n.name();
    if (name == "RmsNormSkip" || name == "LayerNormSkip") ++r.skip_nodes;
    for (const Edge& e : n.next) {
      const std::string to = e.fn ? e.fn->name() : "";
      if ((to == "RmsNormSkip" || to == "LayerNormSkip") && e.output_nr == 0) ++r.skip_uses;
    }
  });
  loss.backward();
  r.out.push_back(loss.detach());
  for (const nn::Parameter& p : m.parameters()) r.out.push_back(p.tensor.grad());
  return r;
}

std::string tag(Family fam, Recompute rc, double dropout, DType compute) {
  return std::string(fam == Family::kGPT2 ? "gpt2" : "llama") + " recompute " +
         std::to_string(static_cast<int>(rc)) + " dropout " + std::to_string(dropout) + " " +
         dtype_name(compute);
}

TEST(ResidFusion, FusedOnCpuEqualsUnfusedBitForBit) {
  for (Family fam : {Family::kGPT2, Family::kLlama}) {
    for (Recompute rc : {Recompute::kNone, Recompute::kSelective, Recompute::kFull}) {
      for (double p : {0.0, 0.1}) {
        for (DType compute : {DType::kF32, DType::kBF16}) {
          const std::string what = tag(fam, rc, p, compute);
          const StepResult plain = run(fam, false, rc, p, compute);
          const StepResult fused = run(fam, true, rc, p, compute);
          EXPECT_EQ(plain.skip_nodes, 0) << what;
          if (rc != Recompute::kFull) {  // full recompute hides the blocks' nodes
            EXPECT_EQ(fused.skip_nodes, 2) << what << ": norm-with-skip op not taken";
            EXPECT_EQ(fused.skip_uses, 2) << what << ": the skip output is not the residual";
          }
          ASSERT_EQ(fused.out.size(), plain.out.size()) << what;
          EXPECT_TRUE(testing::bit_equal(fused.out[0], plain.out[0])) << what << ": loss";
          for (size_t i = 1; i < plain.out.size(); ++i) {
            ASSERT_TRUE(fused.out[i].defined()) << what << ": gradient " << i;
            EXPECT_TRUE(testing::bit_equal(fused.out[i], plain.out[i]))
                << what << ": gradient of parameter " << i - 1;
          }
        }
      }
    }
  }
}

// Both fusions default on (since their GPU tests passed and they measured faster); =0 turns each
// off. KILN_RESID_FUSE_ON_CPU (tests only) defaults off. ctest runs this test a second time with
// the fusions 0 and the CPU switch 1 (models/CMakeLists.txt).
TEST(ResidFusion, DefaultsFollowEnvironment) {
  auto set_to = [](const char* name, const char* value) {
    const char* e = std::getenv(name);
    return e != nullptr && std::strcmp(e, value) == 0;
  };
  const bool epilogue = !set_to("KILN_RESID_EPILOGUE", "0");
  const bool skip = !set_to("KILN_NORM_SKIP_FUSED", "0");
  const bool on_cpu = set_to("KILN_RESID_FUSE_ON_CPU", "1");
  EXPECT_EQ(resid_epilogue_default(), epilogue);
  EXPECT_EQ(norm_skip_fused_default(), skip);
  Transformer m(tiny(Family::kLlama), 3);
  EXPECT_EQ(m.h[0]->resid_epilogue, epilogue);
  EXPECT_EQ(m.h[1]->norm_skip_fused, skip);
  EXPECT_EQ(m.h[0]->fuse_on_cpu, on_cpu);
}

}  // namespace
}  // namespace kiln::models
