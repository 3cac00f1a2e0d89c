// Llama's packed projections (q/k/v and gate/up as one GEMM over concat_or_view of their bf16
// weights, models/transformer.cc packed_linear) with each piece's weight gradient added straight
// into its f32 .grad (KILN_PACKED_DIRECT_WGRAD, core/ops/matmul.h), label gpu (skips without a
// GPU). A tiny GQA Llama (2 layers, C = 64, 4 query / 2 kv heads of 16) in bf16, fused projections
// on, an nn::PrecastScope open around each micro-step's forward and backward as in training,
// every .grad defined (zeros) beforehand as under DataParallel, deterministic mode; the switch
// forced on against off:
// - F = 96: 5 pieces a block (q, k, v at 0 / 128 / 192 bytes of a 256-byte row; gate, up at 0 /
//   192 of 384) take the direct path in each micro-step; F = 90: only q, k, v (gate/up's packed
//   row of 180 bf16 is not a multiple of 16 bytes, so that GEMM falls back).
// - Every other parameter's .grad is bit-identical (the path only changes where the weight
//   gradient is added). A piece's .grad differs by the old path's rounding of the packed gradient
//   to bf16 before its add: at most 2^-9 of each element per micro-step, so within 1e-2 of the
//   tensor's largest element over 2 micro-steps (a block read at a wrong offset, or added twice
//   or not at all, is off by O(1)); pieces that fell back are bit-identical.
// - Every parameter's grad-ready hook fires once per micro-step either way.
// - A piece without a .grad (layer 0's k_proj, as before a first step): that block's GEMM falls
//   back (3 pieces fewer), its q/k/v bit-identical to the switch-off run.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/cuda/runtime.h"
#include "core/nn/precast.h"
#include "core/ops/matmul.h"
#include "core/random.h"
#include "core/testing/gpu_test_util.h"
#include "models/model_test_util.h"
#include "models/transformer.h"

namespace kiln {
namespace {

using PackedWgradCuda = testing::GpuTest;
using models::test_util::rel_diff;
using models::test_util::tiny_gpu_llama;

constexpr int64_t kBatch = 2, kSeq = 32;
const Device kGpu = Device::cuda(0);

struct Restore {
  ~Restore() {
    set_packed_direct_wgrad_override(-1);
    cuda::set_deterministic(false);
  }
};

struct Outcome {
  std::vector<Tensor> grads;  // every parameter's, on the CPU, in parameter order
  std::vector<int> hooks;     // how often each parameter's hook fired
  int64_t pieces = 0;         // weight-gradient pieces added directly
};

// A bf16 Llama on the GPU with fused projections, each parameter's hook counting into *hooks.
struct Model {
  explicit Model(int64_t d_ff) : m(tiny_gpu_llama(d_ff), 3) {
    m.to(kGpu);
    m.set_compute_dtype(DType::kBF16);
    for (const auto& b : m.h) b->attn->fuse_proj = b->mlp->fuse_proj = true;
    const std::vector<nn::Parameter> ps = m.parameters();
    hooks = std::make_shared<std::vector<int>>(ps.size());
    for (size_t i = 0; i < ps.size(); ++i) {
      Tensor t = ps[i].tensor;
      t.register_grad_ready_hook([h = hooks, i](Tensor&) { ++(*h)[i]; });
      params.push_back(t);
    }
  }
  models::Transformer m;
  std::vector<Tensor> params;
  std::shared_ptr<std::vector<int>> hooks;
};

// `steps` micro-steps (the same batches every call) with the switch forced `on`, every .grad
// zeros first except `no_grad`'s (left undefined); returns the grads and clears them.
Outcome micro_steps(Model& model, bool on, int steps, const Tensor& no_grad = Tensor()) {
  set_packed_direct_wgrad_override(on ? 1 : 0);
  for (Tensor& p : model.params)
    p.set_grad(no_grad.defined() && p.same(no_grad) ? Tensor()
                                                    : Tensor::zeros(p.shape(), DType::kF32, kGpu));
  std::fill(model.hooks->begin(), model.hooks->end(), 0);
  const int64_t before = packed_direct_wgrad_pieces();
  Generator gen(7);
  const int64_t v = model.m.spec().vocab_size;
  for (int s = 0; s < steps; ++s) {
    Tensor ids = randint({kBatch, kSeq}, gen, v, DType::kI32).to(kGpu);
    Tensor tgt = randint({kBatch, kSeq}, gen, v, DType::kI32).to(kGpu);
    nn::PrecastScope scope(model.params, DType::kBF16);
    model.m.loss(ids, tgt).backward();
  }
  Outcome r;
  r.pieces = packed_direct_wgrad_pieces() - before;
  r.hooks = *model.hooks;
  for (Tensor& p : model.params) {
    r.grads.push_back(p.grad().to(Device::cpu()).to(DType::kF64));
    p.zero_grad();
  }
  return r;
}

// Whether p is one of the packed pieces of `layers` (gate/up only when `gate_up`).
bool is_piece(const Model& model, const Tensor& p, const std::vector<int>& layers, bool qkv,
              bool gate_up) {
  for (int i : layers) {
    const auto& a = *model.m.h[i]->attn;
    const auto& f = *model.m.h[i]->mlp;
    for (const Tensor* w : {&a.q_proj->weight, &a.k_proj->weight, &a.v_proj->weight})
      if (qkv && p.same(*w)) return true;
    for (const Tensor* w : {&f.gate_proj->weight, &f.up_proj->weight})
      if (gate_up && p.same(*w)) return true;
  }
  return false;
}

// on vs off: pieces within 1e-2 (the header's bound), where direct(p) says the piece took the
// direct path; every other gradient the same bits; every hook fired `steps` times.
template <typename Direct>
void expect_match(const Model& model, const Outcome& on, const Outcome& off, int steps,
                  Direct direct, const std::string& what) {
  ASSERT_EQ(on.grads.size(), model.params.size()) << what;
  ASSERT_EQ(off.grads.size(), model.params.size()) << what;
  for (size_t i = 0; i < model.params.size(); ++i) {
    SCOPED_TRACE(what + ", parameter " + std::to_string(i));
    EXPECT_EQ(on.hooks[i], steps);
    EXPECT_EQ(off.hooks[i], steps);
    if (direct(model.params[i])) {
      EXPECT_LE(rel_diff(on.grads[i], off.grads[i]), 1e-2);
    } else {
      EXPECT_TRUE(testing::same_bits(on.grads[i], off.grads[i]));
    }
  }
}

TEST_F(PackedWgradCuda, LlamaPiecesAddIntoTheirF32GradsOverTwoMicroSteps) {
  Restore restore;
  cuda::set_deterministic(true);  // attention's backward sums in a fixed order
  for (int64_t f : {int64_t{96}, int64_t{90}}) {
    const std::string tag = "F=" + std::to_string(f);
    Model model(f);
    const Outcome on = micro_steps(model, true, 2), off = micro_steps(model, false, 2);
    const bool gate_up = f == 96;
    EXPECT_EQ(on.pieces, 2 * 2 * (gate_up ? 5 : 3)) << tag << ": steps x layers x pieces";
    EXPECT_EQ(off.pieces, 0) << tag;
    expect_match(
        model, on, off, 2,
        [&](const Tensor& p) {
          return is_piece(model, p, {0, 1}, true, gate_up);
        },
        tag);
  }
}

TEST_F(PackedWgradCuda, APieceWithoutAGradFallsBack) {
  Restore restore;
  cuda::set_deterministic(true);
  Model model(96);
  const Tensor k0 = model.m.h[0]->attn->k_proj->weight;
  const Outcome on = micro_steps(model, true, 1, k0), off = micro_steps(model, false, 1, k0);
  EXPECT_EQ(on.pieces, 2 * 5 - 3) << "layer 0's q/k/v GEMM should have fallen back";
  EXPECT_EQ(off.pieces, 0);
  // Layer 0's q/k/v (fallen back) bit-identical; gate/up of both layers and layer 1's q/k/v direct.
  expect_match(
      model, on, off, 1,
      [&](const Tensor& p) {
        return is_piece(model, p, {1}, true, true) || is_piece(model, p, {0}, false, true);
      },
      "k_proj of layer 0 without a .grad");
}

}  // namespace
}  // namespace kiln
