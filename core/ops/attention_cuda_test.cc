// causal_attention on CUDA tensors against the CPU reference: the cuDNN path (KILN_ATTENTION=cudnn)
// and the kiln kernel (KILN_ATTENTION=kiln), forward and dq/dk/dv, on fresh random inputs (a new
// seed per run, printed on failure), GQA and MHA, T not a multiple of the 32-row tile, strided
// inputs; every output allocation poisoned with NaN first; bit-identical reruns in deterministic
// mode; the auto dispatch and its errors. Skips where no GPU is visible.
//
// Tolerance: the reference is the CPU op in f64 on the very values the GPU sees (the inputs
// rounded to the test dtype, then widened), so only the GPU arithmetic is measured. An element
// passes when |gpu - ref| <= tol * (max|ref| + |ref|), i.e. the error is scaled by the tensor's
// largest reference magnitude (a gradient element near zero is judged on the tensor's scale, not
// its own). tol = 1e-2 for bf16 and f16 (bf16 keeps 8 bits: one rounding of a result is 2^-9
// relative, and cuDNN feeds P and dS to its second matmuls in bf16); tol = 1e-5 for f32 (the kiln
// kernel computes in f32 throughout).
#include "core/ops/attention_cuda.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/check.h"
#include "core/cuda/allocator.h"
#include "core/cuda/cudnn_sdpa.h"
#include "core/cuda/runtime.h"
#include "core/ops/attention.h"
#include "core/ops/view.h"
#include "core/testing/gradcheck.h"
#include "core/testing/require_gpu.h"

namespace kiln {
namespace {

using attention_cuda::Impl;
using testing::bit_equal;
using testing::max_scaled_error;
using testing::randn64;

#define SKIP_WITHOUT_GPU() \
  if (!cuda_available()) KILN_GPU_SKIP("no CUDA device visible")

// Sets KILN_ATTENTION for the scope ("" unsets it).
class ScopedImpl {
 public:
  explicit ScopedImpl(const char* v) {
    if (const char* old = std::getenv("KILN_ATTENTION")) old_ = old, had_ = true;
    if (*v) {
      setenv("KILN_ATTENTION", v, 1);
    } else {
      unsetenv("KILN_ATTENTION");
    }
  }
  ~ScopedImpl() {
    if (had_) {
      setenv("KILN_ATTENTION", old_.c_str(), 1);
    } else {
      unsetenv("KILN_ATTENTION");
    }
  }

 private:
  std::string old_;
  bool had_ = false;
};

// Every CUDA allocation in scope comes back filled with NaN (0xFF bytes).
class ScopedPoison {
 public:
  ScopedPoison() : prev_(cuda::poison_allocations()) { cuda::set_poison_allocations(true); }
  ~ScopedPoison() { cuda::set_poison_allocations(prev_); }

 private:
  bool prev_;
};

class ScopedDeterministic {
 public:
  ScopedDeterministic() : prev_(cuda::deterministic()) { cuda::set_deterministic(true); }
  ~ScopedDeterministic() { cuda::set_deterministic(prev_); }

 private:
  bool prev_;
};

uint64_t fresh_seed() {
  static std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 32) ^ rd();
}

struct Dims {
  int64_t b, hq, hkv, t, d;
  std::string str() const {
    return "B=" + std::to_string(b) + " Hq=" + std::to_string(hq) + " Hkv=" + std::to_string(hkv) +
           " T=" + std::to_string(t) + " D=" + std::to_string(d);
  }
};

// f64 CPU tensors holding values exactly representable in dt.
struct Inputs {
  Tensor q, k, v, gout;
};
Inputs random_inputs(const Dims& s, DType dt, uint64_t seed) {
  auto make = [&](Shape shape, uint64_t sd) { return randn64(shape, sd).to(dt).to(DType::kF64); };
  return {make({s.b, s.hq, s.t, s.d}, seed), make({s.b, s.hkv, s.t, s.d}, seed + 1),
          make({s.b, s.hkv, s.t, s.d}, seed + 2), make({s.b, s.hq, s.t, s.d}, seed + 3)};
}

struct Results {
  Tensor out, dq, dk, dv;  // f64 on the CPU
};

// x's values in dt on `device`, as leaves requiring grad (gout does not).
struct Leaves {
  Tensor q, k, v, gout;
};
Leaves leaves(const Inputs& x, DType dt, Device device) {
  // detach: to() returns x's own tensor when nothing changes, which must not become a leaf.
  auto leaf = [&](const Tensor& t) { return t.to(dt).to(device).detach().set_requires_grad(true); };
  return {leaf(x.q), leaf(x.k), leaf(x.v), x.gout.to(dt).to(device)};
}

// Forward + backward of causal_attention; results as f64 CPU tensors.
Results run(const Leaves& l) {
  Tensor out = causal_attention(l.q, l.k, l.v);
  out.backward(l.gout);
  auto host = [](const Tensor& t) { return t.to(Device::cpu()).to(DType::kF64); };
  return {host(out), host(l.q.grad()), host(l.k.grad()), host(l.v.grad())};
}
Results run(const Inputs& x, DType dt, Device device) { return run(leaves(x, dt, device)); }

// max|a - r| / max|r|: the error scaled by the reference's largest magnitude.
double scaled_error(const Tensor& a, const Tensor& r) {
  std::vector<double> av = a.to_vector(), rv = r.to_vector();
  double err = 0, mag = 0;
  for (size_t i = 0; i < av.size(); ++i) {
    if (std::isnan(av[i])) return INFINITY;
    err = std::max(err, std::abs(av[i] - rv[i]));
    mag = std::max(mag, std::abs(rv[i]));
  }
  return err / mag;
}

// Checks every result against the reference under the file's tolerance rule.
void expect_close(const Results& gpu, const Results& ref, double tol, const std::string& what) {
  const char* names[] = {"out", "dq", "dk", "dv"};
  const Tensor* g[] = {&gpu.out, &gpu.dq, &gpu.dk, &gpu.dv};
  const Tensor* r[] = {&ref.out, &ref.dq, &ref.dk, &ref.dv};
  for (int i = 0; i < 4; ++i) {
    ASSERT_EQ(g[i]->shape(), r[i]->shape()) << what << " " << names[i];
    double maxref = 0;
    for (double x : r[i]->to_vector()) maxref = std::max(maxref, std::abs(x));
    const double e = max_scaled_error(*g[i], *r[i], tol * maxref, tol);
    EXPECT_LE(e, 1.0) << what << " " << names[i] << ": scaled error " << scaled_error(*g[i], *r[i])
                      << " over tol " << tol;
    std::cout << "[attention cuda] " << what << " " << names[i] << " max|err|/max|ref| "
              << scaled_error(*g[i], *r[i]) << "\n";
  }
}

// GPU (with the implementation forced by `impl`) against the CPU reference, outputs poisoned.
void check_against_cpu(const char* impl, Impl expected, DType dt, const Dims& s, double tol) {
  const uint64_t seed = fresh_seed();
  const std::string what =
      std::string(impl) + " " + dtype_name(dt) + " " + s.str() + " seed " + std::to_string(seed);
  SCOPED_TRACE(what);
  Inputs x = random_inputs(s, dt, seed);
  Results ref = run(x, DType::kF64, Device::cpu());
  ScopedImpl env(impl);
  ScopedPoison poison;
  Results gpu = run(x, dt, Device::cuda(0));
  EXPECT_EQ(attention_cuda::last_forward_impl(), expected) << what;
  EXPECT_EQ(attention_cuda::last_backward_impl(), expected) << what;
  expect_close(gpu, ref, tol, what);
}

const std::vector<Dims> kShapes = {
    {2, 8, 2, 100, 64},  // GQA, T not a multiple of 32
    {2, 4, 4, 160, 64},  // MHA, T = 5 tiles
    {1, 8, 2, 77, 128},  // GQA, D = 128
    {1, 2, 1, 33, 64},   // MQA, one row past a tile
};

TEST(AttentionCuda, CudnnMatchesCpu) {
  SKIP_WITHOUT_GPU();
  if (!cuda::cudnn_sdpa_available()) KILN_GPU_SKIP("cuDNN 9 not available");
  for (const Dims& s : kShapes) {
    check_against_cpu("cudnn", Impl::kCudnn, DType::kBF16, s, 1e-2);
    check_against_cpu("cudnn", Impl::kCudnn, DType::kF16, s, 1e-2);
  }
}

TEST(AttentionCuda, KilnKernelMatchesCpu) {
  SKIP_WITHOUT_GPU();
  std::vector<Dims> shapes = kShapes;
  shapes.push_back({2, 6, 3, 45, 40});   // D = 40 (not a tile width), T < 2 tiles
  shapes.push_back({1, 2, 2, 9, 8});     // tiny
  shapes.push_back({1, 4, 2, 70, 256});  // the largest head dim
  for (const Dims& s : shapes) {
    check_against_cpu("kiln", Impl::kKiln, DType::kBF16, s, 1e-2);
    check_against_cpu("kiln", Impl::kKiln, DType::kF32, s, 1e-5);
  }
  check_against_cpu("kiln", Impl::kKiln, DType::kF16, kShapes[0], 1e-2);
}

TEST(AttentionCuda, StridedInputsMatchCpu) {
  // q, k, v as (B, H, T, D) views of (B, T, H, D) projections: unit stride in D only.
  SKIP_WITHOUT_GPU();
  const Dims s{2, 8, 2, 96, 64};
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Inputs x = random_inputs(s, DType::kBF16, seed);
  Results ref = run(x, DType::kF64, Device::cpu());
  for (const char* impl : {"cudnn", "kiln"}) {
    if (std::string(impl) == "cudnn" && !cuda::cudnn_sdpa_available()) continue;
    ScopedImpl env(impl);
    auto leaf = [&](const Tensor& t) {
      Tensor bthd = t.transpose(1, 2).contiguous().to(DType::kBF16).to(Device::cuda(0));
      return bthd.detach().set_requires_grad(true);
    };
    Tensor qb = leaf(x.q), kb = leaf(x.k), vb = leaf(x.v);
    Tensor out = causal_attention(qb.transpose(1, 2), kb.transpose(1, 2), vb.transpose(1, 2));
    out.backward(x.gout.to(DType::kBF16).to(Device::cuda(0)));
    auto host = [](const Tensor& t) { return t.to(Device::cpu()).to(DType::kF64); };
    Results gpu{host(out), host(qb.grad().transpose(1, 2)), host(kb.grad().transpose(1, 2)),
                host(vb.grad().transpose(1, 2))};
    expect_close(gpu, ref, 1e-2, std::string("strided ") + impl);
  }
}

TEST(AttentionCuda, PackedQkvAsTheModelUsesItMatchesCpu) {
  // GPT-2's path: one (B, T, 3 H D) projection, split into thirds, each unflattened to (B, T, H, D)
  // and permuted to (B, H, T, D) (views, no copies); the output merged back to (B, T, H D). On
  // cuDNN the output comes back laid out (B, T, H, D) (the merge is a view) and the gradient of
  // the packed projection is one buffer that split's backward passes on without concatenating.
  // Checked against the f64 CPU reference of the same composition; NaN-poisoned allocations.
  SKIP_WITHOUT_GPU();
  const int64_t b = 2, h = 4, t = 80, d = 64, c = h * d;
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Tensor qkv64 = randn64({b, t, 3 * c}, seed).to(DType::kBF16).to(DType::kF64);
  Tensor gout64 = randn64({b, t, c}, seed + 1).to(DType::kBF16).to(DType::kF64);
  auto model = [&](const Tensor& qkv, Tensor* y_bhtd) {
    std::vector<Tensor> parts = split(qkv, {c, c, c}, -1);
    auto heads = [&](const Tensor& x) { return unflatten(x, 2, {h, d}).permute({0, 2, 1, 3}); };
    Tensor y = causal_attention(heads(parts[0]), heads(parts[1]), heads(parts[2]));
    if (y_bhtd) *y_bhtd = y;
    return y.permute({0, 2, 1, 3}).reshape({b, t, c});
  };
  Tensor ref_leaf = qkv64.detach().set_requires_grad(true);
  Tensor ref = model(ref_leaf, nullptr);
  ref.backward(gout64);
  for (const char* impl : {"cudnn", "kiln"}) {
    if (std::string(impl) == "cudnn" && !cuda::cudnn_sdpa_available()) continue;
    SCOPED_TRACE(impl);
    ScopedImpl env(impl);
    ScopedPoison poison;
    Tensor leaf = qkv64.to(DType::kBF16).to(Device::cuda(0)).detach().set_requires_grad(true);
    Tensor y_bhtd;
    Tensor y = model(leaf, &y_bhtd);
    y.backward(gout64.to(DType::kBF16).to(Device::cuda(0)));
    if (std::string(impl) == "cudnn") {
      EXPECT_EQ(y_bhtd.strides(), (Shape{t * c, d, c, 1})) << "output not laid out (B, T, H, D)";
      EXPECT_EQ(y.storage(), y_bhtd.storage()) << "merge_heads copied";
    }
    auto host = [](const Tensor& x) { return x.to(Device::cpu()).to(DType::kF64); };
    const double e_out = scaled_error(host(y), ref),
                 e_grad = scaled_error(host(leaf.grad()), ref_leaf.grad());
    EXPECT_LT(e_out, 1e-2) << "out";
    EXPECT_LT(e_grad, 1e-2) << "d qkv";
    for (double v : leaf.grad().to(Device::cpu()).to(DType::kF64).to_vector())
      ASSERT_FALSE(std::isnan(v)) << "an element of d qkv was never written";
  }
}

TEST(AttentionCuda, EveryOutputElementWritten) {
  // The brief's recipe on top of the allocator's poison hook: blocks of the output sizes are
  // allocated, filled with NaN and freed, so the caching allocator hands exactly those blocks to
  // the op's outputs; any element the kernels skip stays NaN.
  SKIP_WITHOUT_GPU();
  const Dims s{2, 8, 2, 100, 64};
  for (const char* impl : {"cudnn", "kiln"}) {
    if (std::string(impl) == "cudnn" && !cuda::cudnn_sdpa_available()) continue;
    ScopedImpl env(impl);
    Leaves in = leaves(random_inputs(s, DType::kBF16, fresh_seed()), DType::kBF16, Device::cuda(0));
    {
      std::vector<Tensor> junk;
      for (const Shape& shape : {Shape{s.b, s.hq, s.t, s.d}, Shape{s.b, s.hq, s.t, s.d},
                                 Shape{s.b, s.hkv, s.t, s.d}, Shape{s.b, s.hkv, s.t, s.d}}) {
        junk.push_back(Tensor::full(shape, NAN, DType::kBF16, Device::cuda(0)));
      }
      junk.push_back(Tensor::full({s.b, s.hq, s.t}, NAN, DType::kF32, Device::cuda(0)));
    }
    ScopedPoison poison;  // and every later allocation too
    Results gpu = run(in);
    for (const Tensor* t : {&gpu.out, &gpu.dq, &gpu.dk, &gpu.dv})
      for (double v : t->to_vector()) ASSERT_FALSE(std::isnan(v)) << impl << " left a NaN";
  }
}

TEST(AttentionCuda, DeterministicModeIsBitIdentical) {
  SKIP_WITHOUT_GPU();
  ScopedDeterministic det;
  const Dims s{2, 8, 2, 256, 64};
  Inputs x = random_inputs(s, DType::kBF16, fresh_seed());
  for (const char* impl : {"cudnn", "kiln"}) {
    if (std::string(impl) == "cudnn" && !cuda::cudnn_sdpa_available()) continue;
    ScopedImpl env(impl);
    Results a = run(x, DType::kBF16, Device::cuda(0));
    Results b = run(x, DType::kBF16, Device::cuda(0));
    EXPECT_TRUE(bit_equal(a.out, b.out)) << impl;
    EXPECT_TRUE(bit_equal(a.dq, b.dq)) << impl;
    EXPECT_TRUE(bit_equal(a.dk, b.dk)) << impl;
    EXPECT_TRUE(bit_equal(a.dv, b.dv)) << impl;
  }
}

TEST(AttentionCuda, AutoPicksCudnnForHalfAndKilnForF32) {
  SKIP_WITHOUT_GPU();
  ScopedImpl env("");
  const Dims s{1, 4, 2, 64, 64};
  Inputs x = random_inputs(s, DType::kBF16, fresh_seed());
  run(x, DType::kBF16, Device::cuda(0));
  EXPECT_EQ(attention_cuda::last_forward_impl(),
            cuda::cudnn_sdpa_available() ? Impl::kCudnn : Impl::kKiln);
  run(x, DType::kF32, Device::cuda(0));
  EXPECT_EQ(attention_cuda::last_forward_impl(), Impl::kKiln);
  EXPECT_EQ(attention_cuda::last_backward_impl(), Impl::kKiln);
  // D = 20 is not a multiple of 8: cuDNN declines and auto falls back to the kiln kernel.
  Inputs odd = random_inputs({1, 2, 2, 16, 20}, DType::kBF16, fresh_seed());
  run(odd, DType::kBF16, Device::cuda(0));
  EXPECT_EQ(attention_cuda::last_forward_impl(), Impl::kKiln);
}

TEST(AttentionCuda, PlansAreCachedPerShape) {
  SKIP_WITHOUT_GPU();
  if (!cuda::cudnn_sdpa_available()) KILN_GPU_SKIP("cuDNN 9 not available");
  ScopedImpl env("cudnn");
  const Dims s{1, 4, 2, 48, 64};
  Inputs x = random_inputs(s, DType::kBF16, fresh_seed());
  run(x, DType::kBF16, Device::cuda(0));
  const int64_t built = cuda::sdpa_plans_built();
  run(x, DType::kBF16, Device::cuda(0));
  EXPECT_EQ(cuda::sdpa_plans_built(), built);
}

// KILN_SDPA_TUNE: a shape first seen with tuning on keeps several plans and runs the fastest;
// every candidate (forced one at a time) must match the CPU, and the forced one must be the one
// that ran. The counts and timings are printed for the GPU session's log.
TEST(AttentionCuda, EveryTunedCandidateMatchesCpu) {
  SKIP_WITHOUT_GPU();
  if (!cuda::cudnn_sdpa_available()) KILN_GPU_SKIP("cuDNN 9 not available");
  struct Restore {
    ~Restore() {
      cuda::force_sdpa_tune(-1);
      cuda::force_sdpa_candidate(-1);
    }
  } restore;
  cuda::force_sdpa_tune(1);
  const Dims s{2, 8, 2, 192, 64};  // a shape no other test builds, so its plans are new
  check_against_cpu("cudnn", Impl::kCudnn, DType::kBF16, s, 1e-2);
  const cuda::SdpaTuneResult f = cuda::last_sdpa_tune(false), b = cuda::last_sdpa_tune(true);
  std::cout << "[attention cuda] tuned forward: " << f.candidates << " candidates, first "
            << f.first_ms << " ms, picked #" << f.picked << " " << f.best_ms
            << " ms; backward: " << b.candidates << " candidates, first " << b.first_ms
            << " ms, picked #" << b.picked << " " << b.best_ms << " ms\n";
  // A shape with one candidate is never timed (last_sdpa_tune stays empty for it).
  for (const cuda::SdpaTuneResult& r : {f, b}) {
    if (r.candidates == 0) continue;
    EXPECT_GE(r.candidates, 2);
    EXPECT_GE(r.picked, 0);
    EXPECT_LT(r.picked, r.candidates);
    if (r.first_ms > 0) EXPECT_LE(r.best_ms, r.first_ms);  // 0: candidate 0 failed to run
  }
  EXPECT_EQ(cuda::last_sdpa_candidate(false), std::max(f.picked, 0));
  EXPECT_EQ(cuda::last_sdpa_candidate(true), std::max(b.picked, 0));
  const int n = std::max({f.candidates, b.candidates, 1});
  for (int i = 0; i < n; ++i) {
    cuda::force_sdpa_candidate(i);
    check_against_cpu("cudnn", Impl::kCudnn, DType::kBF16, s, 1e-2);
    EXPECT_EQ(cuda::last_sdpa_candidate(false), i % std::max(f.candidates, 1)) << i;
    EXPECT_EQ(cuda::last_sdpa_candidate(true), i % std::max(b.candidates, 1)) << i;
  }
  // Deterministic mode never tunes (the pick depends on timings): a new shape leaves the last
  // tuning results as they were.
  cuda::force_sdpa_candidate(-1);
  ScopedDeterministic det;
  check_against_cpu("cudnn", Impl::kCudnn, DType::kBF16, {2, 8, 2, 224, 64}, 1e-2);
  for (bool backward : {false, true}) {
    const cuda::SdpaTuneResult r = cuda::last_sdpa_tune(backward), was = backward ? b : f;
    EXPECT_EQ(r.candidates, was.candidates) << backward;
    EXPECT_EQ(r.first_ms, was.first_ms) << backward;
  }
}

TEST(AttentionCuda, ForcingCudnnForF32IsAClearError) {
  SKIP_WITHOUT_GPU();
  ScopedImpl env("cudnn");
  Tensor q = randn64({1, 2, 8, 16}, 1).to(DType::kF32).to(Device::cuda(0));
  try {
    causal_attention(q, q, q);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("serves bf16 and f16 only"), std::string::npos)
        << e.what();
  }
  ScopedImpl bad("fastest");
  try {
    causal_attention(q, q, q);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("KILN_ATTENTION must be cudnn, kiln or auto"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace kiln
