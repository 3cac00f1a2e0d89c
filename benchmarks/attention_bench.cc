// Causal attention kernels on the GPU: cuDNN fused attention (kiln's backend-graph path) and the
// kiln kernel, forward and forward+backward, in TFLOP/s and as a fraction of the GPU's dense bf16
// peak measured in the same binary by a large cuBLASLt GEMM (8192^3, bf16 in and out, f32
// accumulation). Kernels are called directly on preallocated tensors (no autograd), timed with
// CUDA events on the compute stream: 3 warm-ups, then the median of `reps` runs.
//
// FLOPs counted the usual way for causal attention (half of the dense T x T work):
//   forward = 4 B Hq T^2 D / 2 (QK^T and PV), backward = 2.5 x forward (five T x T x D matmuls).
// Usage: attention_bench [reps]
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/cuda/cudnn_sdpa.h"
#include "core/cuda/runtime.h"
#include "core/ops/attention_cuda.h"
#include "core/random.h"

#if KILN_WITH_CUDNN
#include <cudnn_graph.h>
#endif

namespace {

using namespace kiln;

// Median milliseconds of fn over reps runs after 3 warm-ups, timed with events.
double time_ms(const std::function<void()>& fn, int reps) {
  cudaStream_t s = cuda::compute_stream();
  for (int i = 0; i < 3; ++i) fn();
  cudaEvent_t a, b;
  KILN_CUDA_CHECK(cudaEventCreate(&a));
  KILN_CUDA_CHECK(cudaEventCreate(&b));
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    KILN_CUDA_CHECK(cudaEventRecord(a, s));
    fn();
    KILN_CUDA_CHECK(cudaEventRecord(b, s));
    KILN_CUDA_CHECK(cudaEventSynchronize(b));
    float t = 0;
    KILN_CUDA_CHECK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  KILN_CUDA_CHECK(cudaEventDestroy(a));
  KILN_CUDA_CHECK(cudaEventDestroy(b));
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

Tensor random_gpu(const Shape& shape, uint64_t seed, DType dt) {
  Generator g(seed);
  return randn(shape, g).to(dt).to(Device::cuda(0));
}

// Dense bf16 TFLOP/s of an n x n x n cuBLASLt GEMM (f32 accumulation) on random data.
double gemm_peak_tflops(int64_t n, int reps) {
  Tensor a = random_gpu({n, n}, 1, DType::kBF16), b = random_gpu({n, n}, 2, DType::kBF16);
  Tensor c = Tensor::empty({n, n}, DType::kBF16, Device::cuda(0));
  cublasLtHandle_t lt = cuda::lt_handle();
  cublasLtMatmulDesc_t op;
  KILN_CUBLAS_CHECK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  cublasLtMatrixLayout_t la, lb, lc;
  KILN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, n, n, n));
  KILN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, n, n, n));
  KILN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lc, CUDA_R_16BF, n, n, n));
  cublasLtMatmulPreference_t pref;
  KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  size_t ws = cuda::lt_workspace_size();
  KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
  cublasLtMatmulHeuristicResult_t heur;
  int found = 0;
  KILN_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, lc, lc, pref, 1, &heur, &found));
  KILN_CHECK(found > 0) << "no cuBLASLt algorithm for the peak GEMM";
  const float one = 1.f, zero = 0.f;
  const double ms = time_ms(
      [&] {
        KILN_CUBLAS_CHECK(cublasLtMatmul(lt, op, &one, a.raw(), la, b.raw(), lb, &zero, c.raw(), lc,
                                         c.raw(), lc, &heur.algo, cuda::lt_workspace(), ws,
                                         cuda::compute_stream()));
      },
      reps);
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatrixLayoutDestroy(la);
  cublasLtMatrixLayoutDestroy(lb);
  cublasLtMatrixLayoutDestroy(lc);
  cublasLtMatmulDescDestroy(op);
  return 2.0 * n * n * n / (ms * 1e-3) / 1e12;
}

struct Shape5 {
  const char* name;
  int64_t b, hq, hkv, t, d;
};

struct Buffers {
  Tensor q, k, v, out, lse, dout, dq, dk, dv;
};

Buffers make_buffers(const Shape5& s) {
  const Device dev = Device::cuda(0);
  const DType bf = DType::kBF16;
  return {random_gpu({s.b, s.hq, s.t, s.d}, 10, bf),
          random_gpu({s.b, s.hkv, s.t, s.d}, 11, bf),
          random_gpu({s.b, s.hkv, s.t, s.d}, 12, bf),
          Tensor::empty({s.b, s.hq, s.t, s.d}, bf, dev),
          Tensor::empty({s.b, s.hq, s.t}, DType::kF32, dev),
          random_gpu({s.b, s.hq, s.t, s.d}, 13, bf),
          Tensor::empty({s.b, s.hq, s.t, s.d}, bf, dev),
          Tensor::empty({s.b, s.hkv, s.t, s.d}, bf, dev),
          Tensor::empty({s.b, s.hkv, s.t, s.d}, bf, dev)};
}

void report(const char* shape, const char* impl, const char* pass, double ms, double flops,
            double peak) {
  const double tf = flops / (ms * 1e-3) / 1e12;
  std::printf("%-34s %-20s %-9s %9.3f %9.1f %7.1f%%\n", shape, impl, pass, ms, tf,
              100.0 * tf / peak);
}

}  // namespace

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::atoi(argv[1]) : 20;
  if (!cuda_available()) {
    std::printf("attention_bench: no CUDA device visible\n");
    return 0;
  }
  NoGradGuard ng;
  cudaDeviceProp prop;
  KILN_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
#if KILN_WITH_CUDNN
  std::printf("GPU: %s, cuDNN %zu\n", prop.name, cudnnGetVersion());
#else
  std::printf("GPU: %s, built without cuDNN\n", prop.name);
#endif
  const double peak = gemm_peak_tflops(8192, reps);
  std::printf("dense bf16 peak (cuBLASLt 8192^3 GEMM): %.1f TFLOP/s\n\n", peak);
  std::printf("%-34s %-20s %-9s %9s %9s %8s\n", "shape", "impl", "pass", "ms", "TFLOP/s",
              "of peak");

  const Shape5 shapes[] = {
      {"B=8 H=12 T=1024 D=64 (GPT-2 124M)", 8, 12, 12, 1024, 64},
      {"B=4 Hq=32 Hkv=8 T=2048 D=128", 4, 32, 8, 2048, 128},
  };
  for (const Shape5& s : shapes) {
    Buffers x = make_buffers(s);
    const double scale = 1.0 / std::sqrt(static_cast<double>(s.d));
    const double fwd_flops = 4.0 * s.b * s.hq * s.t * s.t * s.d / 2;
    auto cudnn_fwd = [&] {
      absl::Status st = cuda::sdpa_forward(x.q, x.k, x.v, scale, x.out, x.lse);
      KILN_CHECK(st.ok()) << st.message();
    };
    auto cudnn_bwd = [&](bool det) {
      absl::Status st =
          cuda::sdpa_backward(x.q, x.k, x.v, x.out, x.dout, x.lse, scale, det, x.dq, x.dk, x.dv);
      KILN_CHECK(st.ok()) << st.message();
    };
    auto kiln_fwd = [&] {
      attention_cuda::kiln_attention_forward(x.q, x.k, x.v, scale, x.out, x.lse);
    };
    auto kiln_bwd = [&] {
      attention_cuda::kiln_attention_backward(x.q, x.k, x.v, x.out, x.dout, x.lse, scale, x.dq,
                                              x.dk, x.dv);
    };
    absl::Status probe = cuda::sdpa_forward(x.q, x.k, x.v, scale, x.out, x.lse);
    if (probe.ok()) {
      report(s.name, "cudnn", "fwd", time_ms(cudnn_fwd, reps), fwd_flops, peak);
      report(s.name, "cudnn", "fwd+bwd", time_ms([&] { cudnn_fwd(), cudnn_bwd(false); }, reps),
             3.5 * fwd_flops, peak);
      absl::Status det =
          cuda::sdpa_backward(x.q, x.k, x.v, x.out, x.dout, x.lse, scale, true, x.dq, x.dk, x.dv);
      if (det.ok()) {
        report(s.name, "cudnn deterministic", "fwd+bwd",
               time_ms([&] { cudnn_fwd(), cudnn_bwd(true); }, reps), 3.5 * fwd_flops, peak);
      } else {
        std::printf("%-34s cudnn deterministic: not served (%s)\n", s.name,
                    std::string(det.message()).c_str());
      }
    } else {
      std::printf("%-34s cudnn: not served (%s)\n", s.name, std::string(probe.message()).c_str());
    }
    report(s.name, "kiln", "fwd", time_ms(kiln_fwd, reps), fwd_flops, peak);
    report(s.name, "kiln", "fwd+bwd", time_ms([&] { kiln_fwd(), kiln_bwd(); }, reps),
           3.5 * fwd_flops, peak);
  }
  std::printf("\n(plans built: %lld)\n", static_cast<long long>(cuda::sdpa_plans_built()));
  return 0;
}
