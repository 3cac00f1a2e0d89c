// rotary_embedding on CUDA against the CPU reference (core/ops/rope.cc), forward and backward,
// f32 / bf16 / f16 / f64: Llama-sized heads (D 128), a small odd T, a position offset, a large
// theta, and a strided input (the (B, T, H, D) -> (B, H, T, D) transpose attention feeds it, read
// through its strides without a copy). Angles are computed in f64 on both sides. Every case:
// outputs and gradients in poisoned blocks, bit-identical rerun (cuda_op_test_util.h states the
// tolerance). Then the kernels of core/ops/rope.cu against each other: v2 (vector, 32-bit scalar
// and 64-bit paths, one or several heads a thread) bit-identical to v1 and close to the CPU op,
// forward and inverse, for contiguous, projection-layout, packed-slice, misaligned, strided and
// odd shapes; the result written in (B, T, H, D) memory (the backward's layout for a heads-inner
// x) bit-identical to the contiguous one, by both kernels and through autograd; the angle-table
// cache (reused per key, a new entry per T / D / theta / offset / compute dtype, capped, entries
// kept alive). Skips where no GPU is visible.
#include "core/ops/rope_cuda.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/ops/cuda_op_test_util.h"
#include "core/ops/rope.h"
#include "core/ops/view.h"

namespace kiln {
namespace {

using cuda::RopeImpl;
using cuda::RopePath;
using testing::bit_equal;
using testing::expect_gpu_close;
using testing::expect_gpu_matches_cpu;
using testing::fresh_seed;
using testing::rand_cpu;

TEST(RopeCuda, MatchesCpuForwardAndBackward) {
  KILN_SKIP_WITHOUT_GPU();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Generator gen(seed);
  struct Case {
    Shape shape;
    double theta;
    int64_t offset;
  };
  const Case cases[] = {{{2, 3, 17, 64}, 10000.0, 0},
                        {{1, 4, 33, 128}, 500000.0, 0},
                        {{2, 2, 5, 8}, 10000.0, 1000},
                        {{1, 1, 1, 2}, 10000.0, 7}};
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF16, DType::kF64}) {
    for (const Case& c : cases) {
      const double theta = c.theta;
      const int64_t off = c.offset;
      std::vector<Tensor> in = {rand_cpu(c.shape, dt, gen)};
      expect_gpu_matches_cpu(
          [theta, off](const std::vector<Tensor>& v) {
            return std::vector<Tensor>{rotary_embedding(v[0], theta, off)};
          },
          in, gen,
          std::string("rope ") + dtype_name(dt) + " " + shape_str(c.shape) + " offset " +
              std::to_string(off));
    }
  }
}

TEST(RopeCuda, StridedInput) {
  KILN_SKIP_WITHOUT_GPU();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Generator gen(seed);
  for (DType dt : {DType::kF32, DType::kBF16}) {
    std::vector<Tensor> in = {rand_cpu({2, 9, 3, 16}, dt, gen)};  // (B, T, H, D)
    expect_gpu_matches_cpu(
        [](const std::vector<Tensor>& v) {
          return std::vector<Tensor>{rotary_embedding(v[0].transpose(1, 2), 10000.0, 3)};
        },
        in, gen, std::string("rope transposed ") + dtype_name(dt));
  }
}

// The (B, H, T, D) view of a random CUDA buffer that one kernel case rotates, and the path v2 must
// take for it: kVector with min(16 / element size, max_vec) pairs per thread, or a scalar kernel.
struct KernelCase {
  std::string name;
  Shape buffer;
  std::function<Tensor(const Tensor&)> view;
  int64_t offset;
  double theta;
  RopePath path;
  int max_vec;
};

// (B, T, H, D) -> (B, H, T, D).
Tensor heads_first(const Tensor& x) { return permute(x, {0, 2, 1, 3}); }
// Heads [h0, h0 + h) of a packed (B, T, width) buffer as (B, H, T, D).
std::function<Tensor(const Tensor&)> packed(int64_t h0, int64_t h, int64_t d) {
  return [=](const Tensor& b) {
    return heads_first(unflatten(narrow(b, 2, h0 * d, h * d), 2, {h, d}));
  };
}

std::vector<KernelCase> kernel_cases() {
  auto same = [](const Tensor& b) { return b; };
  auto transposed = [](const Tensor& b) { return heads_first(b); };
  // (B, T, (4 + 2 * 2) * 32): q heads 0..3, k heads 4..5, v heads 6..7.
  const Shape qkv = {2, 9, 256};
  return {
      {"contiguous", {2, 3, 17, 64}, same, 0, 10000.0, RopePath::kVector, 8},
      {"contiguous, 4 heads a thread", {2, 8, 17, 64}, same, 0, 10000.0, RopePath::kVector, 8},
      {"contiguous, 2 heads a thread", {2, 6, 9, 16}, same, 9, 10000.0, RopePath::kVector, 8},
      {"D/2 = 5, 4 heads a thread", {1, 4, 7, 10}, same, 1, 10000.0, RopePath::kScalar32, 1},
      {"projection layout", {2, 33, 4, 64}, transposed, 5, 10000.0, RopePath::kVector, 8},
      {"llama heads", {1, 33, 4, 128}, transposed, 0, 500000.0, RopePath::kVector, 8},
      {"packed q slice", qkv, packed(0, 4, 32), 0, 10000.0, RopePath::kVector, 8},
      {"packed k slice", qkv, packed(4, 2, 32), 3, 10000.0, RopePath::kVector, 8},
      {"packed v slice", qkv, packed(6, 2, 32), 0, 10000.0, RopePath::kVector, 8},
      {"D/2 = 4", {3, 7, 5, 8}, transposed, 0, 10000.0, RopePath::kVector, 4},
      {"D/2 = 6", {1, 3, 7, 12}, same, 2, 10000.0, RopePath::kVector, 2},
      {"D/2 = 5", {2, 7, 3, 10}, transposed, 0, 10000.0, RopePath::kScalar32, 1},
      {"T = 1", {2, 3, 1, 64}, same, 1000, 10000.0, RopePath::kVector, 8},
      {"105 rows", {3, 5, 7, 16}, same, 0, 10.0, RopePath::kVector, 8},
      {"single pair", {1, 1, 1, 2}, same, 7, 10000.0, RopePath::kScalar32, 1},
      {"misaligned",
       {1 + 2 * 3 * 5 * 16},
       [](const Tensor& b) {
         return narrow(b, 0, 1, 2 * 3 * 5 * 16).reshape({2, 3, 5, 16});
       },
       4,
       10000.0,
       RopePath::kScalar32,
       1},
      {"D innermost stride 5",
       {2, 3, 16, 5},
       [](const Tensor& b) { return b.transpose(2, 3); },
       0,
       10000.0,
       RopePath::kScalar32,
       1},
  };
}

// The CPU op: x rotated by +angle, or by -angle (its backward applied to x) when inverse.
Tensor cpu_rope(const Tensor& x, double theta, int64_t offset, bool inverse) {
  if (!inverse) return rotary_embedding(x, theta, offset).detach();
  EnableGradGuard eg;
  Tensor leaf = x.detach().set_requires_grad(true);
  return kiln::grad({rotary_embedding(leaf, theta, offset)}, {x}, {leaf})[0];
}

TEST(RopeCuda, V2KernelsBitIdenticalToV1AndCloseToCpu) {
  KILN_SKIP_WITHOUT_GPU();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Generator gen(seed);
  for (DType dt : {DType::kBF16, DType::kF16, DType::kF32, DType::kF64}) {
    for (const KernelCase& c : kernel_cases()) {
      Tensor buf = rand_cpu(c.buffer, dt, gen).to(Device::cuda(0));
      Tensor x = c.view(buf);
      ASSERT_EQ(x.dim(), 4) << c.name;
      Tensor x_cpu = x.contiguous().to(Device::cpu());
      for (bool inverse : {false, true}) {
        const std::string what = c.name + " " + dtype_name(dt) + (inverse ? " inverse" : "");
        Tensor v1, v2;
        {
          // Unwritten result elements stay NaN.
          testing::PoisonedBlocks pb({x.nbytes()});
          v1 = cuda::rope_forward(x, c.theta, c.offset, inverse, RopeImpl::kV1);
          EXPECT_EQ(cuda::last_rope_path(), RopePath::kV1) << what;
          v2 = cuda::rope_forward(x, c.theta, c.offset, inverse, RopeImpl::kV2);
          cuda::synchronize();
        }
        EXPECT_EQ(cuda::last_rope_path(), c.path) << what;
        if (c.path == RopePath::kVector) {
          EXPECT_EQ(cuda::last_rope_vec(), std::min<int>(16 / dtype_size(dt), c.max_vec)) << what;
        }
        ASSERT_EQ(v2.shape(), x.shape()) << what;
        EXPECT_TRUE(v2.is_contiguous()) << what;
        EXPECT_TRUE(bit_equal(v1, v2)) << what << ": v2 differs from v1";
        expect_gpu_close(v2, cpu_rope(x_cpu, c.theta, c.offset, inverse), what);
      }
    }
  }
}

// The result written through other strides (rope_into): over (B, T, H, D) memory (NaN-filled
// first), and into a
// column slice of a wider packed buffer; every kernel case, both implementations, forward and
// inverse, the same bits as the contiguous result, the path unchanged, the rest of the packed
// buffer untouched.
TEST(RopeCuda, ResultThroughOtherStridesBitIdenticalToContiguous) {
  KILN_SKIP_WITHOUT_GPU();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Generator gen(seed);
  for (DType dt : {DType::kBF16, DType::kF32, DType::kF64}) {
    for (const KernelCase& c : kernel_cases()) {
      Tensor x = c.view(rand_cpu(c.buffer, dt, gen).to(Device::cuda(0)));
      const int64_t b = x.size(0), h = x.size(1), t = x.size(2), d = x.size(3);
      for (RopeImpl impl : {RopeImpl::kV1, RopeImpl::kV2}) {
        for (bool inverse : {false, true}) {
          const std::string what = c.name + " " + dtype_name(dt) +
                                   (impl == RopeImpl::kV1 ? " v1" : " v2") +
                                   (inverse ? " inverse" : "");
          Tensor want = cuda::rope_forward(x, c.theta, c.offset, inverse, impl).to(Device::cpu());
          // (B, T, H, D) memory, then heads 1..h of a packed (B, T, (h + 2) D) buffer.
          Tensor bthd = Tensor::full({b, t, h, d}, std::nan(""), dt, Device::cuda(0));
          Tensor packed = Tensor::full({b, t, (h + 2) * d}, -7.0, dt, Device::cuda(0));
          const Tensor outs[2] = {
              permute(bthd, {0, 2, 1, 3}),
              permute(unflatten(narrow(packed, 2, d, h * d), 2, {h, d}), {0, 2, 1, 3})};
          for (const Tensor& out : outs) {
            cuda::rope_into(x, out, c.theta, c.offset, inverse, impl);  // unwritten: NaN / -7
            EXPECT_EQ(cuda::last_rope_path(), impl == RopeImpl::kV1 ? RopePath::kV1 : c.path)
                << what;
            EXPECT_TRUE(bit_equal(out.contiguous().to(Device::cpu()), want)) << what;
          }
          Tensor rest = concat({narrow(packed, 2, 0, d), narrow(packed, 2, (h + 1) * d, d)}, 2);
          for (double v : rest.to(Device::cpu()).to_vector()) ASSERT_EQ(v, -7.0) << what;
        }
      }
    }
  }
}

// Autograd: the gradient of a heads-inner x (split_heads' view of a projection) comes back in
// the projection's memory order when asked, with the bits of the contiguous gradient, close to
// the CPU's.
TEST(RopeCuda, GradientOfAHeadsInnerInputInItsLayout) {
  KILN_SKIP_WITHOUT_GPU();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Generator gen(seed);
  struct Reset {
    ~Reset() { set_rope_grad_layout_override(-1); }
  } reset;
  EnableGradGuard eg;
  for (DType dt : {DType::kBF16, DType::kF32}) {
    // Llama 1B's q and k heads at D 64, T 33: (B, T, H * D) projections.
    for (int64_t heads : {32, 4}) {
      Tensor p = rand_cpu({2, 33, heads * 64}, dt, gen);
      Tensor g = rand_cpu({2, heads, 33, 64}, dt, gen);
      Tensor x = heads_first(unflatten(p.to(Device::cuda(0)), 2, {heads, 64}));
      x = x.detach().set_requires_grad(true);  // a leaf with the view's strides
      std::vector<Tensor> gx;
      for (int on : {1, 0}) {
        set_rope_grad_layout_override(on);
        gx.push_back(
            kiln::grad({rotary_embedding(x, 500000.0, 0)}, {g.to(Device::cuda(0))}, {x})[0]);
      }
      const std::string what = std::string(dtype_name(dt)) + " heads " + std::to_string(heads);
      EXPECT_EQ(gx[0].strides(), (Shape{33 * heads * 64, 64, heads * 64, 1})) << what;
      EXPECT_TRUE(gx[1].is_contiguous()) << what;
      EXPECT_TRUE(bit_equal(gx[0].contiguous().to(Device::cpu()), gx[1].to(Device::cpu()))) << what;
      expect_gpu_close(gx[0].contiguous(), cpu_rope(g, 500000.0, 0, true), what);
    }
  }
}

// rope_qkv_packed: q, k, v and the packed gradient against the CPU op; the same bits as its
// composition on the GPU.
TEST(RopeCuda, PackedQkvMatchesCpuAndItsComposition) {
  KILN_SKIP_WITHOUT_GPU();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Generator gen(seed);
  for (DType dt : {DType::kF32, DType::kBF16}) {
    // Llama 1B's heads at D 64 (32 q heads, 4 kv heads), T 33.
    std::vector<Tensor> in = {rand_cpu({2, 33, 40 * 64}, dt, gen)};
    expect_gpu_matches_cpu(
        [](const std::vector<Tensor>& v) {
          const QkvHeads r = rope_qkv_packed(v[0], 32, 4, 500000.0, 0);
          return std::vector<Tensor>{r.q, r.k, r.v};
        },
        in, gen, std::string("rope_qkv_packed ") + dtype_name(dt));
    EnableGradGuard eg;
    Tensor p = in[0].to(Device::cuda(0)).detach().set_requires_grad(true);
    const QkvHeads r = rope_qkv_packed(p, 32, 4, 500000.0, 0);
    const std::vector<Tensor> parts = split(p, {32 * 64, 4 * 64, 4 * 64}, -1);
    auto heads = [](const Tensor& y, int64_t n) {
      return permute(unflatten(y, 2, {n, 64}), {0, 2, 1, 3});
    };
    const std::vector<Tensor> c = {rotary_embedding(heads(parts[0], 32), 500000.0, 0),
                                   rotary_embedding(heads(parts[1], 4), 500000.0, 0),
                                   heads(contiguous(parts[2]), 4)};
    const std::vector<Tensor> f = {r.q, r.k, r.v};
    std::vector<Tensor> g;
    for (int i = 0; i < 3; ++i) {
      EXPECT_TRUE(
          bit_equal(f[i].contiguous().to(Device::cpu()), c[i].contiguous().to(Device::cpu())))
          << i;
      g.push_back(rand_cpu(f[i].shape(), dt, gen).to(Device::cuda(0)));
    }
    EXPECT_TRUE(bit_equal(kiln::grad(f, g, {p})[0].to(Device::cpu()),
                          kiln::grad(c, g, {p})[0].to(Device::cpu())));
  }
}

// The autograd path (default kernel) on a slice of a packed q / k / v projection output.
TEST(RopeCuda, PackedSliceForwardAndBackward) {
  KILN_SKIP_WITHOUT_GPU();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Generator gen(seed);
  for (DType dt : {DType::kF32, DType::kBF16}) {
    std::vector<Tensor> in = {rand_cpu({2, 9, 256}, dt, gen)};  // (B, T, 8 heads * 32)
    expect_gpu_matches_cpu(
        [](const std::vector<Tensor>& v) {
          return std::vector<Tensor>{rotary_embedding(packed(4, 2, 32)(v[0]), 10000.0, 2)};
        },
        in, gen, std::string("rope packed k slice ") + dtype_name(dt));
    // Without KILN_ROPE the default is v2: the last call, the backward of a contiguous gradient,
    // ran the vector kernel.
    if (std::getenv("KILN_ROPE") == nullptr) EXPECT_EQ(cuda::last_rope_path(), RopePath::kVector);
  }
}

// Every call of the cache test: x (1, 2, t, d) of dtype, rotated by v2; checked against v1.
void rotate_and_compare(int64_t t, int64_t d, double theta, int64_t offset, DType dt,
                        Generator& gen) {
  Tensor x = rand_cpu({1, 2, t, d}, dt, gen).to(Device::cuda(0));
  Tensor v2 = cuda::rope_forward(x, theta, offset, false, RopeImpl::kV2);
  Tensor v1 = cuda::rope_forward(x, theta, offset, false, RopeImpl::kV1);
  EXPECT_TRUE(bit_equal(v1, v2)) << "T " << t << " D " << d << " theta " << theta << " offset "
                                 << offset << " " << dtype_name(dt);
}

TEST(RopeCuda, AngleTablesCachedPerKey) {
  KILN_SKIP_WITHOUT_GPU();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Generator gen(seed);
  cuda::clear_rope_table_cache();
  auto expect_stats = [](int64_t hits, int64_t builds, int64_t entries, int line) {
    const cuda::RopeTableCacheStats s = cuda::rope_table_cache_stats();
    EXPECT_EQ(s.hits, hits) << "line " << line;
    EXPECT_EQ(s.builds, builds) << "line " << line;
    EXPECT_EQ(s.entries, entries) << "line " << line;
  };
  rotate_and_compare(16, 8, 10000.0, 0, DType::kF32, gen);
  expect_stats(0, 1, 1, __LINE__);
  {
    // Blocks of the tables' size filled with NaN: a table the cache did not keep alive would be
    // handed out and overwritten here.
    testing::PoisonedBlocks pb({16 * 4 * sizeof(float)});
    Tensor junk = Tensor::full({16, 4}, std::nan(""), DType::kF32, Device::cuda(0));
    rotate_and_compare(16, 8, 10000.0, 0, DType::kF32, gen);
    expect_stats(1, 1, 1, __LINE__);
  }
  rotate_and_compare(16, 8, 10000.0, 0, DType::kBF16, gen);  // the same f32 tables
  expect_stats(2, 1, 1, __LINE__);
  rotate_and_compare(16, 8, 10000.0, 0, DType::kF64, gen);  // f64 tables
  expect_stats(2, 2, 2, __LINE__);
  rotate_and_compare(17, 8, 10000.0, 0, DType::kF32, gen);   // another T
  rotate_and_compare(16, 16, 10000.0, 0, DType::kF32, gen);  // another D
  rotate_and_compare(16, 8, 500000.0, 0, DType::kF32, gen);  // another theta
  rotate_and_compare(16, 8, 10000.0, 3, DType::kF32, gen);   // another offset
  expect_stats(2, 6, 6, __LINE__);
  rotate_and_compare(16, 8, 10000.0, 3, DType::kF32, gen);
  rotate_and_compare(16, 8, 10000.0, 0, DType::kF32, gen);
  expect_stats(4, 6, 6, __LINE__);
  // Generation-style: one position at a time. The cache keeps the kRopeTableCacheSize most
  // recently used entries; the first key was used long ago and is built again.
  for (int64_t p = 0; p < 20; ++p) rotate_and_compare(1, 8, 10000.0, 100 + p, DType::kF32, gen);
  expect_stats(4, 26, cuda::kRopeTableCacheSize, __LINE__);
  rotate_and_compare(16, 8, 10000.0, 0, DType::kF32, gen);
  expect_stats(4, 27, cuda::kRopeTableCacheSize, __LINE__);
  rotate_and_compare(1, 8, 10000.0, 119, DType::kF32, gen);  // recent: still cached
  expect_stats(5, 27, cuda::kRopeTableCacheSize, __LINE__);
}

// Offsets past 32 bits: x's rows 2^31 elements apart in a 4 GiB buffer; v2 runs the 64-bit kernel.
TEST(RopeCuda, SixtyFourBitOffsets) {
  KILN_SKIP_WITHOUT_GPU();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Generator gen(seed);
  {
    const int64_t far = int64_t{1} << 31, d = 64;
    auto storage = std::make_shared<Storage>((far + d) * 2, Device::cuda(0));
    auto view = [&](Shape shape, Shape strides) {
      auto impl = std::make_shared<TensorImpl>();
      impl->storage = storage;
      impl->shape = std::move(shape);
      impl->strides = std::move(strides);
      impl->dtype = DType::kBF16;
      return Tensor(impl);
    };
    Tensor rows = rand_cpu({2, 1, 1, d}, DType::kBF16, gen);
    Tensor flat = view({far + d}, {1});
    flat.narrow(0, 0, d).copy_(rows.reshape({2, d}).narrow(0, 0, 1).reshape({d}));
    flat.narrow(0, far, d).copy_(rows.reshape({2, d}).narrow(0, 1, 1).reshape({d}));
    Tensor x = view({2, 1, 1, d}, {far, d, d, 1});
    for (bool inverse : {false, true}) {
      Tensor v2 = cuda::rope_forward(x, 10000.0, 5, inverse, RopeImpl::kV2);
      EXPECT_EQ(cuda::last_rope_path(), RopePath::kScalar64);
      Tensor v1 = cuda::rope_forward(x, 10000.0, 5, inverse, RopeImpl::kV1);
      EXPECT_TRUE(bit_equal(v1, v2)) << inverse;
      expect_gpu_close(v2, cpu_rope(rows, 10000.0, 5, inverse), inverse ? "inverse" : "forward");
    }
  }
  cuda::synchronize();
  cuda::empty_cache();  // the 4 GiB block back to the device
}

}  // namespace
}  // namespace kiln
