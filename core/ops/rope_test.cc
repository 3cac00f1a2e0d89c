// Tests for rotary_embedding: values against Hugging Face's rotate_half formula written plainly in
// f64, a hand-computed case, position offsets, dtypes, strided input, gradients, bad input.
#include "core/ops/rope.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>

#include "core/autograd.h"
#include "core/check.h"
#include "core/ops/view.h"
#include "core/testing/fake_cuda.h"
#include "core/testing/gradcheck.h"

namespace kiln {
namespace {

using testing::gradcheck;
using ::testing::HasSubstr;
using testing::max_scaled_error;
using testing::randn64;
using ::testing::ThrowsMessage;

// HF LlamaRotaryEmbedding + apply_rotary_pos_emb in f64:
//   emb = cat(freqs, freqs); out = x * cos(emb) + rotate_half(x) * sin(emb),
//   rotate_half(x) = cat(-x[D/2:], x[:D/2]).
Tensor reference_rope(const Tensor& x, double theta, int64_t offset) {
  const int64_t rows = x.size(0) * x.size(1), t_len = x.size(2), d = x.size(3), half = d / 2;
  std::vector<double> v = x.to_vector(), out(v.size());
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t t = 0; t < t_len; ++t) {
      const double* xr = v.data() + (r * t_len + t) * d;
      double* o = out.data() + (r * t_len + t) * d;
      for (int64_t i = 0; i < d; ++i) {
        const double inv_freq = 1.0 / std::pow(theta, static_cast<double>(2 * (i % half)) / d);
        const double angle = static_cast<double>(offset + t) * inv_freq;
        const double rotated = i < half ? -xr[i + half] : xr[i - half];
        o[i] = xr[i] * std::cos(angle) + rotated * std::sin(angle);
      }
    }
  }
  return Tensor::from_vector(out, x.shape(), DType::kF64);
}

TEST(Rope, MatchesHuggingFaceFormula) {
  Tensor x = randn64({2, 3, 7, 8}, 1);
  for (auto [theta, offset] : std::vector<std::pair<double, int64_t>>{
           {10000.0, 0}, {10000.0, 11}, {500000.0, 3}, {10.0, 1000}}) {
    Tensor out = rotary_embedding(x, theta, offset);
    EXPECT_EQ(out.shape(), x.shape());
    EXPECT_LE(max_scaled_error(out, reference_rope(x, theta, offset), 1e-13, 1e-12), 1.0)
        << theta << " " << offset;
  }
}

TEST(Rope, HandComputedPairing) {
  // D = 4, theta = 100: frequencies 1 and 1/10. Position 2 (offset 1, t = 1).
  // Pair (0, 2) rotates by 2 rad, pair (1, 3) by 0.2 rad.
  Tensor x = Tensor::from_vector({0, 0, 0, 0, 1, 2, 3, 4}, {1, 1, 2, 4}, DType::kF64);
  std::vector<double> o = rotary_embedding(x, 100.0, 1).to_vector();
  EXPECT_DOUBLE_EQ(o[4], 1 * std::cos(2.0) - 3 * std::sin(2.0));
  EXPECT_DOUBLE_EQ(o[6], 3 * std::cos(2.0) + 1 * std::sin(2.0));
  EXPECT_DOUBLE_EQ(o[5], 2 * std::cos(0.2) - 4 * std::sin(0.2));
  EXPECT_DOUBLE_EQ(o[7], 4 * std::cos(0.2) + 2 * std::sin(0.2));
}

TEST(Rope, OffsetContinuesTheSequence) {
  // Rotating positions 3..7 with offset 3 equals rows 3..7 of rotating positions 0..7.
  Tensor x = randn64({1, 2, 8, 6}, 2);
  Tensor full = rotary_embedding(x, 10000.0, 0);
  Tensor tail = rotary_embedding(x.narrow(2, 3, 5).contiguous(), 10000.0, 3);
  EXPECT_LE(max_scaled_error(tail, full.narrow(2, 3, 5).contiguous(), 1e-14, 1e-13), 1.0);
}

TEST(Rope, StridedInputAndLowPrecision) {
  // (B, T, H, D) transposed to (B, H, T, D): a non-contiguous view, as models produce it.
  Tensor bthd = randn64({2, 5, 3, 4}, 3);
  Tensor x = bthd.transpose(1, 2);
  ASSERT_FALSE(x.is_contiguous());
  EXPECT_LE(max_scaled_error(rotary_embedding(x), reference_rope(x.contiguous(), 10000.0, 0), 1e-13,
                             1e-12),
            1.0);
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF16}) {
    Tensor xl = x.to(dt);
    Tensor out = rotary_embedding(xl, 10000.0, 7);
    EXPECT_EQ(out.dtype(), dt);
    // f32: a few f32 roundings; bf16 / f16: one final rounding to 8 / 11 mantissa bits.
    const double rtol = dt == DType::kF32 ? 1e-6 : dt == DType::kBF16 ? 1.0 / 256 : 1.0 / 2048;
    EXPECT_LE(
        max_scaled_error(out.to(DType::kF64),
                         reference_rope(xl.to(DType::kF64).contiguous(), 10000.0, 7), 1e-6, rtol),
        1.0)
        << dtype_name(dt);
  }
}

TEST(Rope, GradientsMatchFiniteDifferences) {
  for (auto [theta, offset] :
       std::vector<std::pair<double, int64_t>>{{10000.0, 0}, {10000.0, 5}, {50.0, 123}}) {
    auto r = gradcheck(
        [theta, offset](const std::vector<Tensor>& x) {
          return rotary_embedding(x[0], theta, offset);
        },
        {randn64({2, 3, 4, 6}, 4)});
    EXPECT_LE(r.max_rel_error, 1e-6) << theta << " " << offset << " " << r.worst;
    std::cout << "[rope gradcheck offset=" << offset << "] max_rel_error " << r.max_rel_error
              << "\n";
  }
}

TEST(Rope, BackwardIsTheInverseRotation) {
  Tensor x = randn64({1, 2, 6, 8}, 5).set_requires_grad(true);
  Tensor y = randn64({1, 2, 6, 8}, 6);
  Tensor g = rotary_embedding(y, 10000.0, 9);  // grad of <rope(x), rope(y)> w.r.t. x is y
  rotary_embedding(x, 10000.0, 9).backward(g);
  EXPECT_LE(max_scaled_error(x.grad(), y, 1e-13, 1e-12), 1.0);
}

// A leaf x laid out like split_heads' view of a (B, T, H * D) projection: (B, H, T, D) over
// (B, T, H, D) memory.
Tensor heads_inner_leaf(int64_t b, int64_t h, int64_t t, int64_t d, uint64_t seed, DType dt) {
  return randn64({b, t, h, d}, seed).to(dt).permute({0, 2, 1, 3}).set_requires_grad(true);
}

// The backward writes the gradient of a heads-inner x in x's memory order (so that split_heads'
// backward is a view), with the same values as the contiguous gradient; other inputs keep the
// contiguous (B, H, T, D) gradient.
TEST(Rope, GradientOfAHeadsInnerInputKeepsItsLayout) {
  struct Reset {
    ~Reset() { set_rope_grad_layout_override(-1); }
  } reset;
  EXPECT_TRUE(rope_grad_follows_input_layout(Device::cpu()));
  for (DType dt : {DType::kF64, DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(dtype_name(dt));
    Tensor x = heads_inner_leaf(2, 3, 5, 8, 11, dt);
    Tensor y = randn64({2, 3, 5, 8}, 12);
    Tensor g = rotary_embedding(y, 10000.0, 4).to(dt);  // the gradient w.r.t. x is then ~y
    std::vector<Tensor> gx;
    for (int on : {1, 0}) {
      set_rope_grad_layout_override(on);
      gx.push_back(kiln::grad({rotary_embedding(x, 10000.0, 4)}, {g}, {x})[0]);
    }
    EXPECT_EQ(gx[0].strides(), (Shape{5 * 3 * 8, 8, 3 * 8, 1}));  // (B, T, H, D) memory
    EXPECT_TRUE(gx[1].is_contiguous());
    EXPECT_EQ(gx[0].dtype(), dt);
    EXPECT_EQ(gx[0].to(DType::kF64).to_vector(), gx[1].to(DType::kF64).to_vector());
    // bf16: g and the gradient each rounded to 8 mantissa bits.
    const double tol = dt == DType::kF64 ? 1e-12 : dt == DType::kF32 ? 1e-6 : 1.0 / 64;
    EXPECT_LE(max_scaled_error(gx[0].to(DType::kF64), y, tol, tol), 1.0);
  }
  // Heads outer (contiguous x): the gradient stays (B, H, T, D) contiguous.
  set_rope_grad_layout_override(1);
  Tensor xc = randn64({2, 3, 5, 8}, 13).set_requires_grad(true);
  EXPECT_TRUE(
      kiln::grad({rotary_embedding(xc)}, {randn64({2, 3, 5, 8}, 14)}, {xc})[0].is_contiguous());
}

// rope_qkv_packed against its composition (split, split_heads, rotary_embedding, a contiguous v):
// the same bits forward, and the same bits in the packed gradient, also when an output gets no
// gradient (its columns zero).
TEST(Rope, PackedQkvEqualsItsComposition) {
  const int64_t b = 2, t = 5, h = 4, hkv = 2, d = 8, w = (h + 2 * hkv) * d;
  for (DType dt : {DType::kF64, DType::kBF16}) {
    SCOPED_TRACE(dtype_name(dt));
    Tensor p = randn64({b, t, w}, 21).to(dt).set_requires_grad(true);
    std::vector<Tensor> g = {randn64({b, h, t, d}, 22).to(dt), randn64({b, hkv, t, d}, 23).to(dt),
                             randn64({b, hkv, t, d}, 24).to(dt)};
    auto composed = [&](const Tensor& x) {
      auto parts = split(x, {h * d, hkv * d, hkv * d}, -1);
      auto heads = [&](const Tensor& y, int64_t n) {
        return permute(unflatten(y, 2, {n, d}), {0, 2, 1, 3});
      };
      return std::vector<Tensor>{rotary_embedding(heads(parts[0], h), 500.0, 3),
                                 rotary_embedding(heads(parts[1], hkv), 500.0, 3),
                                 heads(contiguous(parts[2]), hkv)};
    };
    const QkvHeads f = rope_qkv_packed(p, h, hkv, 500.0, 3);
    const std::vector<Tensor> c = composed(p);
    const std::vector<Tensor> fv = {f.q, f.k, f.v};
    for (int i = 0; i < 3; ++i) {
      EXPECT_EQ(fv[i].shape(), c[i].shape()) << i;
      EXPECT_EQ(fv[i].to(DType::kF64).to_vector(), c[i].to(DType::kF64).to_vector()) << i;
    }
    EXPECT_TRUE(f.q.is_contiguous());
    EXPECT_TRUE(f.v.permute({0, 2, 1, 3}).is_contiguous());  // (B, T, Hkv, D) memory
    // All three gradients, then v's missing, then only v's.
    for (int mask : {7, 3, 4}) {
      std::vector<Tensor> outs_f, outs_c, gs;
      for (int i = 0; i < 3; ++i) {
        if (!(mask >> i & 1)) continue;
        outs_f.push_back(fv[i]);
        outs_c.push_back(c[i]);
        gs.push_back(g[i]);
      }
      const Tensor gf = kiln::grad(outs_f, gs, {p})[0], gc = kiln::grad(outs_c, gs, {p})[0];
      EXPECT_EQ(gf.shape(), p.shape());
      EXPECT_EQ(gf.to(DType::kF64).to_vector(), gc.to(DType::kF64).to_vector()) << "mask " << mask;
    }
  }
  EXPECT_THAT(
      [] {
        rope_qkv_packed(Tensor::zeros({1, 2, 30}), 4, 2, 1e4);
      },
      ThrowsMessage<Error>(HasSubstr("rope_qkv_packed: width 30")));
}

TEST(Rope, BadInputIsAClearError) {
  EXPECT_THAT(
      [] {
        rotary_embedding(Tensor::zeros({2, 4, 8}));
      },
      ThrowsMessage<Error>(HasSubstr("rotary_embedding: x (B, H, T, D) must have 4 dims")));
  EXPECT_THAT(
      [] {
        rotary_embedding(Tensor::zeros({1, 2, 4, 7}));
      },
      ThrowsMessage<Error>(HasSubstr("rotary_embedding: head dim D must be even")));
  EXPECT_THAT(
      [] {
        rotary_embedding(Tensor::zeros({1, 2, 4, 8}, DType::kI64));
      },
      ThrowsMessage<Error>(HasSubstr("rotary_embedding: expected a floating tensor")));
  EXPECT_THAT(
      [] {
        rotary_embedding(Tensor::zeros({1, 2, 4, 8}), 0.0);
      },
      ThrowsMessage<Error>(HasSubstr("theta must be positive")));
  EXPECT_THAT(
      [] {
        rotary_embedding(Tensor::zeros({1, 2, 4, 8}), 10000.0, -1);
      },
      ThrowsMessage<Error>(HasSubstr("position_offset must be >= 0, got -1")));
  Tensor xc = testing::fake_cuda_tensor({1, 2, 4, 8});
  // Without a usable GPU a CUDA tensor is a clear error; with one, the CUDA kernel runs instead
  // (tested against this CPU reference in rope_cuda_test.cc).
  if (!cuda_available()) {
    EXPECT_THAT([&] { rotary_embedding(xc); },
                ThrowsMessage<Error>(HasSubstr("rotary_embedding: x is on cuda:0 but")));
  }
}

}  // namespace
}  // namespace kiln
