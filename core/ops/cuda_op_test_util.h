// Test harness shared by the *_cuda_test.cc files of the hand-written CUDA ops (layernorm,
// rmsnorm, activation, softmax, embedding, rope, cross_entropy, dropout): fresh random inputs,
// the GPU-vs-CPU tolerance, poisoned output blocks, and one call that runs an op on both devices
// and checks outputs, gradients, full coverage of every output element and bit-identical reruns.
//
// Tolerance: the CPU reference runs on the very values the GPU sees (the same inputs, already
// rounded to the test dtype) and an element passes when
//   |gpu - cpu| <= tol * (max|cpu| + |cpu|),
// i.e. relative to the element, with an absolute floor of tol times the tensor's largest
// magnitude (an element that cancels to near zero, such as a gradient summed over a row, is judged
// on the tensor's scale). tol = 1e-5 for f32, 1e-2 for bf16 and f16 (both sides round each result
// to 8 / 11 significant bits), 1e-12 for f64.
//
// Poisoning: before the GPU op runs, the allocator's cache is emptied, then blocks of each output
// size are allocated, filled with 0xFF bytes (NaN in every float dtype) and freed, so the op's
// outputs land in them (the caching allocator hands a freed block of the same size back), and the
// allocator's own poisoning is on for any other allocation. The harness asserts that every output
// and gradient lives in one of the poisoned blocks, so an element the kernel never wrote stays
// NaN and fails the comparison.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/cuda/allocator.h"
#include "core/cuda/runtime.h"
#include "core/random.h"
#include "core/testing/gradcheck.h"
#include "core/testing/require_gpu.h"

namespace kiln::testing {

#define KILN_SKIP_WITHOUT_GPU() \
  if (!::kiln::cuda_available()) KILN_GPU_SKIP("no CUDA device visible")

// A new seed per run (printed by the callers' SCOPED_TRACE on failure): inputs are fresh each run.
inline uint64_t fresh_seed() {
  std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 32) ^ rd();
}

// normal(0, 1) values rounded to dtype, on the CPU.
inline Tensor rand_cpu(const Shape& shape, DType dtype, Generator& gen) {
  return randn(shape, gen, DType::kF64).to(dtype);
}

inline double gpu_tolerance(DType t) {
  switch (t) {
    case DType::kF64:
      return 1e-12;
    case DType::kF32:
      return 1e-5;
    default:
      return 1e-2;  // bf16, f16
  }
}

// The largest |element|; NaN if any element is NaN (std::max alone would skip it, and a read of a
// poisoned or stale value would then pass a bound).
inline double max_abs(const Tensor& t) {
  double m = 0;
  for (double v : t.to_vector()) {
    if (std::isnan(v)) return v;
    m = std::max(m, std::fabs(v));
  }
  return m;
}
// The largest |element| among those that are not NaN (a reference's scale).
inline double max_abs_skipping_nan(const Tensor& t) {
  double m = 0;
  for (double v : t.to_vector()) m = std::max(m, std::fabs(v));
  return m;
}

// gpu (on a CUDA device) against the CPU reference ref, with the tolerance above.
inline void expect_gpu_close(const Tensor& gpu, const Tensor& ref, const std::string& what) {
  ASSERT_TRUE(gpu.defined()) << what;
  ASSERT_TRUE(ref.defined()) << what;
  EXPECT_TRUE(gpu.device().is_cuda()) << what << ": " << gpu.str();
  ASSERT_EQ(gpu.shape(), ref.shape()) << what << ": " << gpu.str() << " vs " << ref.str();
  ASSERT_EQ(gpu.dtype(), ref.dtype()) << what << ": " << gpu.str() << " vs " << ref.str();
  const double tol = gpu_tolerance(ref.dtype());
  const double err =
      max_scaled_error(gpu.to(Device::cpu()), ref, tol * max_abs_skipping_nan(ref) + 1e-300, tol);
  EXPECT_LE(err, 1.0) << what << ": scaled error " << err << " (tol " << tol << ", " << gpu.str()
                      << ")";
}

// Empties the allocator's cache, then leaves `per_size` NaN-filled free blocks of each size in it,
// and turns the allocator's poisoning on for the object's lifetime.
class PoisonedBlocks {
 public:
  explicit PoisonedBlocks(const std::vector<size_t>& sizes, int per_size = 12) {
    prev_ = cuda::poison_allocations();
    cuda::synchronize();
    cuda::empty_cache();
    for (size_t s : std::set<size_t>(sizes.begin(), sizes.end())) {
      if (s == 0) continue;
      for (int i = 0; i < per_size; ++i) {
        auto st = std::make_shared<Storage>(s, Device::cuda(0));
        KILN_CUDA_CHECK(cudaMemsetAsync(st->data(), 0xFF, s, cuda::compute_stream()));
        blocks_.insert(st->data());
        storages_.push_back(st);
      }
    }
    cuda::synchronize();
    storages_.clear();  // back to the cache, NaN-filled
    cuda::set_poison_allocations(true);
  }
  ~PoisonedBlocks() { cuda::set_poison_allocations(prev_); }
  PoisonedBlocks(const PoisonedBlocks&) = delete;
  PoisonedBlocks& operator=(const PoisonedBlocks&) = delete;

  // The poisoned blocks' addresses: a result whose storage is one of them was written into NaN.
  const std::set<const void*>& blocks() const { return blocks_; }

 private:
  bool prev_ = false;
  std::set<const void*> blocks_;
  std::vector<std::shared_ptr<Storage>> storages_;
};

using MultiFn = std::function<std::vector<Tensor>(const std::vector<Tensor>&)>;

struct GpuRun {
  std::vector<Tensor> outs, grads;  // grads: one per floating input
};

// A CUDA copy of t. With misalign, the copy is a contiguous view starting one element into a
// larger buffer (a leaf of its own), so its data pointer is not 16-byte aligned.
inline Tensor to_gpu(const Tensor& t, bool misalign) {
  if (!misalign) return t.to(Device::cuda(0));
  Tensor flat = Tensor::empty({t.numel() + 1}, t.dtype(), Device::cuda(0));
  Tensor view = flat.narrow(0, 1, t.numel()).reshape(t.shape());
  view.copy_(t);
  return view.detach();
}

struct GpuOptions {
  bool want_grads = true;  // also compare the gradients of every floating input
  bool misalign = false;   // GPU inputs at a data pointer that is not 16-byte aligned
};

// Runs f on CUDA copies of `cpu_inputs` (floating ones as leaves requiring grad), then backward
// with `root_grads` (CUDA copies). With `poison`, outputs and gradients must land in poisoned
// blocks.
inline GpuRun run_on_gpu(const MultiFn& f, const std::vector<Tensor>& cpu_inputs,
                         const std::vector<Tensor>& root_grads_cpu, GpuOptions opt, bool poison,
                         const std::string& what) {
  const bool want_grads = opt.want_grads;
  GpuRun r;
  std::vector<Tensor> in, leaves;
  std::vector<size_t> in_sizes;
  for (const Tensor& t : cpu_inputs) {
    Tensor g = to_gpu(t, opt.misalign && is_floating(t.dtype()));
    if (is_floating(t.dtype())) {
      g.set_requires_grad(want_grads);
      leaves.push_back(g);
      in_sizes.push_back(t.nbytes());
    }
    in.push_back(g);
  }
  std::vector<Tensor> roots;
  for (const Tensor& g : root_grads_cpu) roots.push_back(g.to(Device::cuda(0)));
  std::vector<size_t> out_sizes;
  for (const Tensor& g : root_grads_cpu) out_sizes.push_back(g.nbytes());
  // Addresses of every poisoned block handed out so far (an op may produce its gradients in the
  // forward, as linear_cross_entropy does).
  std::set<const void*> poisoned;
  auto holds = [&](const Tensor& t) {
    return t.defined() && t.numel() > 0 && poisoned.count(t.storage()->data()) > 0;
  };
  {
    // Forward: outputs, and gradients some ops already produce in the forward.
    std::vector<size_t> sizes = out_sizes;
    sizes.insert(sizes.end(), in_sizes.begin(), in_sizes.end());
    std::unique_ptr<PoisonedBlocks> pb;
    if (poison) pb = std::make_unique<PoisonedBlocks>(sizes);
    r.outs = f(in);
    cuda::synchronize();
    if (poison) {
      poisoned.insert(pb->blocks().begin(), pb->blocks().end());
      for (size_t i = 0; i < r.outs.size(); ++i) {
        if (r.outs[i].numel() > 0)
          EXPECT_TRUE(holds(r.outs[i])) << what << ": output " << i << " " << r.outs[i].str()
                                        << " was not written into a poisoned block";
      }
    }
  }
  if (want_grads && !leaves.empty()) {
    std::unique_ptr<PoisonedBlocks> pb;
    if (poison) pb = std::make_unique<PoisonedBlocks>(in_sizes);
    r.grads = kiln::grad(r.outs, roots, leaves);
    cuda::synchronize();
    if (poison) {
      poisoned.insert(pb->blocks().begin(), pb->blocks().end());
      for (size_t i = 0; i < r.grads.size(); ++i) {
        if (r.grads[i].defined() && r.grads[i].numel() > 0)
          EXPECT_TRUE(holds(r.grads[i])) << what << ": gradient " << i << " " << r.grads[i].str()
                                         << " was not written into a poisoned block";
      }
    }
  }
  return r;
}

// The whole check for one op and one set of inputs: f on the CPU is the reference; f on CUDA
// must match it (outputs and the gradients of every floating input, for random upstream
// gradients), write every element (poisoned blocks), and give bit-identical results when run
// again. Returns the first GPU run for further checks.
inline GpuRun expect_gpu_matches_cpu(const MultiFn& f, const std::vector<Tensor>& cpu_inputs,
                                     Generator& gen, const std::string& what, GpuOptions opt = {}) {
  const bool want_grads = opt.want_grads;
  std::vector<Tensor> leaves_c, in_c;
  for (const Tensor& t : cpu_inputs) {
    Tensor c = t.detach();
    if (is_floating(t.dtype())) {
      c.set_requires_grad(want_grads);
      leaves_c.push_back(c);
    }
    in_c.push_back(c);
  }
  std::vector<Tensor> outs_c = f(in_c);
  std::vector<Tensor> roots;
  for (const Tensor& o : outs_c) roots.push_back(rand_cpu(o.shape(), o.dtype(), gen));
  GpuRun a = run_on_gpu(f, cpu_inputs, roots, opt, /*poison=*/true, what);
  if (::testing::Test::HasFatalFailure()) return a;
  EXPECT_EQ(a.outs.size(), outs_c.size()) << what;
  for (size_t i = 0; i < std::min(a.outs.size(), outs_c.size()); ++i)
    expect_gpu_close(a.outs[i], outs_c[i], what + ", output " + std::to_string(i));
  if (want_grads && !leaves_c.empty()) {
    std::vector<Tensor> grads_c = kiln::grad(outs_c, roots, leaves_c);
    EXPECT_EQ(a.grads.size(), grads_c.size()) << what;
    for (size_t i = 0; i < std::min(a.grads.size(), grads_c.size()); ++i) {
      if (!grads_c[i].defined()) {
        EXPECT_FALSE(a.grads[i].defined()) << what << ", gradient " << i;
        continue;
      }
      expect_gpu_close(a.grads[i], grads_c[i], what + ", gradient of input " + std::to_string(i));
    }
  }
  // Determinism: the same inputs again give the same bits.
  GpuRun b = run_on_gpu(f, cpu_inputs, roots, opt, /*poison=*/false, what);
  for (size_t i = 0; i < std::min(a.outs.size(), b.outs.size()); ++i)
    EXPECT_TRUE(bit_equal(a.outs[i], b.outs[i])) << what << ": output " << i << " differs on rerun";
  for (size_t i = 0; i < std::min(a.grads.size(), b.grads.size()); ++i) {
    if (a.grads[i].defined())
      EXPECT_TRUE(bit_equal(a.grads[i], b.grads[i]))
          << what << ": gradient " << i << " differs on rerun";
  }
  return a;
}

}  // namespace kiln::testing
