// gelu, silu and swiglu on CUDA against the CPU reference (core/ops/activation.cc), forward and
// backward, f32 / bf16 / f16 / f64: a size that is a multiple of every vector width (the 16-byte
// path), an odd size (vector body plus scalar tail), a view whose data pointer is not 16-byte
// aligned (the scalar path), and a non-contiguous input. Every case: outputs and gradients in
// poisoned blocks, bit-identical rerun (cuda_op_test_util.h states the tolerance). swiglu_packed
// likewise (F a multiple of every vector width, odd F: the scalar kernel), and bit-identical to
// the CUDA swiglu on the two halves, forward and backward. Skips where no GPU is visible.
#include <gtest/gtest.h>

#include <string>

#include "core/ops/activation.h"
#include "core/ops/cuda_op_test_util.h"

namespace kiln {
namespace {

using testing::expect_gpu_matches_cpu;
using testing::fresh_seed;
using testing::rand_cpu;

// How the test feeds the op its input(s). kMisaligned: the GPU inputs start one element into
// their buffer (the harness's misalign option).
enum class Layout { kContiguous, kMisaligned, kTransposed };

Tensor arrange(const Tensor& t, Layout l) {
  return l == Layout::kTransposed ? t.transpose(0, 1) : t;
}

TEST(ActivationCuda, MatchesCpuForwardAndBackward) {
  KILN_SKIP_WITHOUT_GPU();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Generator gen(seed);
  struct Case {
    Shape shape;
    Layout layout;
    const char* name;
  };
  const Case cases[] = {{{64, 128}, Layout::kContiguous, "64x128"},
                        {{7, 143}, Layout::kContiguous, "7x143 (odd)"},
                        {{33, 65}, Layout::kMisaligned, "misaligned"},
                        {{48, 40}, Layout::kTransposed, "transposed"}};
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF16, DType::kF64}) {
    for (const Case& c : cases) {
      const std::string tag = std::string(dtype_name(dt)) + " " + c.name;
      const Layout l = c.layout;
      testing::GpuOptions opt;
      opt.misalign = l == Layout::kMisaligned;
      std::vector<Tensor> one = {rand_cpu(c.shape, dt, gen)};
      expect_gpu_matches_cpu(
          [l](const std::vector<Tensor>& v) { return std::vector<Tensor>{gelu(arrange(v[0], l))}; },
          one, gen, "gelu " + tag, opt);
      expect_gpu_matches_cpu(
          [l](const std::vector<Tensor>& v) { return std::vector<Tensor>{silu(arrange(v[0], l))}; },
          one, gen, "silu " + tag, opt);
      std::vector<Tensor> two = {rand_cpu(c.shape, dt, gen), rand_cpu(c.shape, dt, gen)};
      expect_gpu_matches_cpu(
          [l](const std::vector<Tensor>& v) {
            return std::vector<Tensor>{swiglu(arrange(v[0], l), arrange(v[1], l))};
          },
          two, gen, "swiglu " + tag, opt);
    }
  }
}

TEST(ActivationCuda, SwigluGradientOfOneInputOnly) {
  KILN_SKIP_WITHOUT_GPU();
  Generator gen(fresh_seed());
  Tensor gate = rand_cpu({16, 40}, DType::kF32, gen), up = rand_cpu({16, 40}, DType::kF32, gen);
  Tensor g = rand_cpu({16, 40}, DType::kF32, gen);
  for (int which = 0; which < 2; ++which) {
    Tensor gc = gate.detach().set_requires_grad(which == 0);
    Tensor uc = up.detach().set_requires_grad(which == 1);
    Tensor gg = gate.to(Device::cuda(0)).set_requires_grad(which == 0);
    Tensor ug = up.to(Device::cuda(0)).set_requires_grad(which == 1);
    Tensor leaf_c = which == 0 ? gc : uc, leaf_g = which == 0 ? gg : ug;
    Tensor want = kiln::grad({swiglu(gc, uc)}, {g}, {leaf_c})[0];
    Tensor got = kiln::grad({swiglu(gg, ug)}, {g.to(Device::cuda(0))}, {leaf_g})[0];
    testing::expect_gpu_close(got, want, which == 0 ? "d gate alone" : "d up alone");
  }
}

TEST(ActivationCuda, SwigluPackedMatchesCpu) {
  KILN_SKIP_WITHOUT_GPU();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Generator gen(seed);
  struct Case {
    Shape shape;  // (.., 2F)
    Layout layout;
    const char* name;
  };
  const Case cases[] = {{{64, 256}, Layout::kContiguous, "F=128"},
                        {{2, 7, 2 * 143}, Layout::kContiguous, "F=143 (odd)"},
                        {{9, 2 * 40}, Layout::kMisaligned, "F=40 misaligned"},
                        {{48, 40}, Layout::kTransposed, "transposed"}};
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF16, DType::kF64}) {
    for (const Case& c : cases) {
      const Layout l = c.layout;
      testing::GpuOptions opt;
      opt.misalign = l == Layout::kMisaligned;
      std::vector<Tensor> one = {rand_cpu(c.shape, dt, gen)};
      expect_gpu_matches_cpu(
          [l](const std::vector<Tensor>& v) {
            return std::vector<Tensor>{swiglu_packed(arrange(v[0], l))};
          },
          one, gen, std::string("swiglu_packed ") + dtype_name(dt) + " " + c.name, opt);
    }
  }
}

// Bits of swiglu_packed(gu) and its d gu against the CUDA swiglu on gu's halves.
TEST(ActivationCuda, SwigluPackedEqualsSwigluOnTheHalvesBitForBit) {
  KILN_SKIP_WITHOUT_GPU();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Generator gen(seed);
  for (DType dt : {DType::kF32, DType::kBF16}) {
    for (int64_t f : {int64_t{256}, int64_t{143}, int64_t{8}, int64_t{1}}) {
      const std::string tag = std::string(dtype_name(dt)) + " F=" + std::to_string(f);
      const Device gpu = Device::cuda(0);
      Tensor gu = rand_cpu({3, 33, 2 * f}, dt, gen).to(gpu).set_requires_grad(true);
      Tensor gy = rand_cpu({3, 33, f}, dt, gen).to(gpu);
      Tensor y = swiglu_packed(gu);
      Tensor d_gu = kiln::grad({y}, {gy}, {gu})[0];
      Tensor gate = gu.detach().narrow(-1, 0, f).contiguous().set_requires_grad(true);
      Tensor up = gu.detach().narrow(-1, f, f).contiguous().set_requires_grad(true);
      Tensor want = swiglu(gate, up);
      std::vector<Tensor> d = kiln::grad({want}, {gy}, {gate, up});
      EXPECT_TRUE(testing::bit_equal(y.to(Device::cpu()), want.to(Device::cpu()))) << tag;
      EXPECT_TRUE(
          testing::bit_equal(d_gu.narrow(-1, 0, f).to(Device::cpu()), d[0].to(Device::cpu())))
          << "d gate " << tag;
      EXPECT_TRUE(
          testing::bit_equal(d_gu.narrow(-1, f, f).to(Device::cpu()), d[1].to(Device::cpu())))
          << "d up " << tag;
    }
  }
}

}  // namespace
}  // namespace kiln
