// CUDA kernels of cross_entropy and linear_cross_entropy (core/ops/cross_entropy.cc).
//   targets   one 1024-thread block checks every target (in [0, V) or ignore_index) and counts
//             the rows that are not ignored; the launcher reads {first bad row, count} back (one
//             sync) and throws the CPU op's error for a bad target.
//   rows      one block of row_threads(V) threads per row (grid-stride): block max, block sum of
//             exp(x - max), lse and the row loss; in the fused op the same block then overwrites
//             the row's logits with their gradient (softmax - onehot) / count.
//   mean      one 1024-thread block adds the row losses in a fixed order and divides by count.
//   backward  one block per row: g / count * (softmax - onehot), zero rows for ignored targets.
// linear_cross_entropy runs over chunks of rows: a cuBLASLt GEMM writes the chunk's logits
// (rows, V) into one buffer, the row kernel turns them into their gradient in place, and two more
// GEMMs give dx for those rows and add the chunk's share of dW (accumulated in f32, f64 for f64).
// The (N, V) logits are never materialised, and each chunk's gradient shares their buffer.
#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#include "core/backend.h"
#include "core/ops/cross_entropy_cuda.h"
#include "core/ops/cuda_util.cuh"

namespace kiln::cuda {
namespace {

constexpr unsigned long long kNone = ULLONG_MAX;

std::atomic<int> g_ce_rows_forced{static_cast<int>(CeRows::kEnv)};
thread_local CeRows g_last_ce_rows = CeRows::kEnv;

// The row kernel asked for (core/ops/cross_entropy_cuda.h): the test override, else KILN_CE_ROWS.
CeRows ce_rows_wanted() {
  const auto forced = static_cast<CeRows>(g_ce_rows_forced.load());
  if (forced != CeRows::kEnv) return forced;
  static const CeRows env = [] {
    const char* e = std::getenv("KILN_CE_ROWS");
    const std::string v = e == nullptr ? "" : e;
    KILN_CHECK(v.empty() || v == "scalar" || v == "vector" || v == "shared")
        << "linear_cross_entropy: KILN_CE_ROWS must be scalar, vector or shared, got '" << v << "'";
    return v == "scalar" ? CeRows::kScalar : v == "vector" ? CeRows::kVector : CeRows::kShared;
  }();
  return env;
}

// ---- kernels ----

// info[0] = min(bad row) (left at kNone when every target is fine), info[1] = rows not ignored.
template <typename I>
__global__ void __launch_bounds__(kMaxRowThreads)
    check_targets_kernel(const I* __restrict__ t, int64_t rows, int64_t v, int64_t ignore,
                         unsigned long long* __restrict__ info) {
  __shared__ long long scratch[32];
  long long count = 0;
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) {
    const int64_t ti = static_cast<int64_t>(t[r]);
    if (ti == ignore) continue;
    if (ti < 0 || ti >= v) {
      atomicMin(&info[0], static_cast<unsigned long long>(r));
    } else {
      ++count;
    }
  }
  count = block_sum(count, scratch);
  if (threadIdx.x == 0) info[1] = static_cast<unsigned long long>(count);
}

// Per row r: lse = log sum exp(x), row_loss = lse - x[t] (0 for ignored rows), lse_out (when not
// null). kGrad: then x[r, :] = grad_scale * (softmax - onehot(t)) in place (0 for ignored rows).
template <typename T, typename I, bool kGrad>
__global__ void __launch_bounds__(kMaxRowThreads)
    ce_rows_kernel(T* logits, const I* __restrict__ targets, int64_t rows, int64_t v,
                   int64_t ignore, acc_t<T>* __restrict__ row_loss, acc_t<T>* __restrict__ lse_out,
                   acc_t<T> grad_scale) {
  using A = acc_t<T>;
  __shared__ A scratch[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    T* xr = logits + r * v;
    const int64_t t = static_cast<int64_t>(targets[r]);
    const bool valid = t != ignore && t >= 0 && t < v;  // bad targets were rejected already
    const A xt = valid ? to_acc(xr[t]) : A(0);          // read before any thread overwrites
    A m = -INFINITY;
    for (int64_t j = threadIdx.x; j < v; j += blockDim.x) m = max(m, to_acc(xr[j]));
    m = block_max(m, scratch);
    A s = 0;
    for (int64_t j = threadIdx.x; j < v; j += blockDim.x) s += exp(to_acc(xr[j]) - m);
    s = block_sum(s, scratch);  // every thread has finished reading the row past this point
    const A lse = m + log(s);
    if (threadIdx.x == 0) {
      row_loss[r] = valid ? lse - xt : A(0);
      if (lse_out != nullptr) lse_out[r] = lse;
    }
    if constexpr (kGrad) {
      for (int64_t j = threadIdx.x; j < v; j += blockDim.x) {
        A gj = 0;
        if (valid) {
          gj = grad_scale * exp(to_acc(xr[j]) - lse);
          if (j == t) gj -= grad_scale;
        }
        xr[j] = from_acc<T>(gj);
      }
    }
  }
}

// ce_rows_kernel for 16-bit logits with V % 8 == 0 and a 16-byte aligned buffer: 8 logits per
// 16-byte access, and the max and the sum of exponentials in one pass over the row (each thread
// keeps a running max and rescales its sum when the max grows), so the row is read twice (the
// second time mostly from L2) and written once, instead of read three times with 2-byte loads.
template <typename A>
__device__ __forceinline__ A fast_exp(A x) {
  return exp(x);
}
template <>
__device__ __forceinline__ float fast_exp(float x) {
  return __expf(x);
}

// kShared: the first pass also stores the row in dynamic shared memory (V elements), and the
// gradient pass reads it from there: each thread touches the same slots of every row, so no
// barrier is needed between rows.
template <typename T, typename I, bool kGrad, bool kShared = false>
__global__ void __launch_bounds__(kMaxRowThreads)
    ce_rows_vec_kernel(T* logits, const I* __restrict__ targets, int64_t rows, int64_t v,
                       int64_t ignore, acc_t<T>* __restrict__ row_loss,
                       acc_t<T>* __restrict__ lse_out, acc_t<T> grad_scale) {
  using A = acc_t<T>;
  constexpr int kV = 16 / sizeof(T);  // launched for 16-bit T (8 per access)
  __shared__ A scratch[32];
  extern __shared__ uint4 row_copy[];  // kShared: the row, v / kV vectors
  const int64_t nvec = v / kV;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    T* xr = logits + r * v;
    uint4* xv = reinterpret_cast<uint4*>(xr);
    const int64_t t = static_cast<int64_t>(targets[r]);
    const bool valid = t != ignore && t >= 0 && t < v;
    const A xt = valid ? to_acc(xr[t]) : A(0);  // read before any thread overwrites
    A m = -INFINITY, s = 0;
    for (int64_t j = threadIdx.x; j < nvec; j += blockDim.x) {
      const uint4 u = xv[j];
      if constexpr (kShared) row_copy[j] = u;
      const T* e = reinterpret_cast<const T*>(&u);
      A f[kV], mx = m;
#pragma unroll
      for (int k = 0; k < kV; ++k) {
        f[k] = to_acc(e[k]);
        mx = max(mx, f[k]);
      }
      A add = 0;
#pragma unroll
      for (int k = 0; k < kV; ++k) add += fast_exp(f[k] - mx);
      s = (m == A(-INFINITY) ? A(0) : s * fast_exp(m - mx)) + add;
      m = mx;
    }
    const A bm = block_max(m, scratch);
    s = m == A(-INFINITY) ? A(0) : s * fast_exp(m - bm);
    s = block_sum(s, scratch);  // every thread has finished reading the row past this point
    const A lse = bm + log(s);
    if (threadIdx.x == 0) {
      row_loss[r] = valid ? lse - xt : A(0);
      if (lse_out != nullptr) lse_out[r] = lse;
    }
    if constexpr (kGrad) {
      for (int64_t j = threadIdx.x; j < nvec; j += blockDim.x) {
        uint4 u;
        if constexpr (kShared) {
          u = row_copy[j];
        } else {
          u = xv[j];
        }
        T* e = reinterpret_cast<T*>(&u);
#pragma unroll
        for (int k = 0; k < kV; ++k) {
          A g = 0;
          if (valid) {
            g = grad_scale * fast_exp(to_acc(e[k]) - lse);
            if (j * kV + k == t) g -= grad_scale;
          }
          e[k] = from_acc<T>(g);
        }
        xv[j] = u;
      }
    }
  }
}

// out[0] = sum(row_loss) / count (0 when count is 0), summed in a fixed order by one block.
template <typename T>
__global__ void __launch_bounds__(kMaxRowThreads)
    mean_loss_kernel(const acc_t<T>* __restrict__ row_loss, int64_t rows, int64_t count,
                     T* __restrict__ out) {
  using A = acc_t<T>;
  __shared__ A scratch[32];
  A s = 0;
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) s += row_loss[r];
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) out[0] = from_acc<T>(count > 0 ? s / A(count) : A(0));
}

// gx = g[0] / count * (softmax(x) - onehot(t)) from the saved lse; zero rows where ignored.
template <typename T, typename I>
__global__ void __launch_bounds__(kMaxRowThreads)
    ce_backward_kernel(const T* __restrict__ logits, const acc_t<T>* __restrict__ lse,
                       const I* __restrict__ targets, const T* __restrict__ g, int64_t count,
                       int64_t ignore, T* __restrict__ gx, int64_t rows, int64_t v) {
  using A = acc_t<T>;
  const A w = count > 0 ? to_acc(g[0]) / A(count) : A(0);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = logits + r * v;
    T* gr = gx + r * v;
    const int64_t t = static_cast<int64_t>(targets[r]);
    const bool valid = t != ignore && t >= 0 && t < v;
    const A l = lse[r];
    for (int64_t j = threadIdx.x; j < v; j += blockDim.x) {
      A gj = 0;
      if (valid) {
        gj = w * exp(to_acc(xr[j]) - l);
        if (j == t) gj -= w;
      }
      gr[j] = from_acc<T>(gj);
    }
  }
}

// x[i] *= g[0] (in place).
template <typename T>
__global__ void scale_by_kernel(T* __restrict__ x, const T* __restrict__ g, int64_t n) {
  using A = acc_t<T>;
  const A s = to_acc(g[0]);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[i] = from_acc<T>(to_acc(x[i]) * s);
}

#define KILN_CE_DISPATCH_TARGET(dtype, op, I, ...)                                \
  do {                                                                            \
    if ((dtype) == DType::kI32) {                                                 \
      using I = int32_t;                                                          \
      __VA_ARGS__;                                                                \
    } else if ((dtype) == DType::kI64) {                                          \
      using I = int64_t;                                                          \
      __VA_ARGS__;                                                                \
    } else {                                                                      \
      KILN_CHECK(false) << op << ": targets must be i32 or i64, got " << (dtype); \
    }                                                                             \
  } while (0)

// ---- host helpers ----

// Checks every target (one sync) and returns the number of rows that are not ignored.
int64_t check_targets(const char* op, const Tensor& targets, int64_t v, int64_t ignore) {
  const int64_t rows = targets.numel();
  Tensor tc = raw::contiguous(targets);
  Tensor info = Tensor::empty({2}, DType::kI64, targets.device());
  KILN_CUDA_CHECK(cudaMemsetAsync(info.raw(), 0xff, sizeof(unsigned long long), compute_stream()));
  KILN_CE_DISPATCH_TARGET(targets.dtype(), op, I, {
    check_targets_kernel<I><<<1, 1024, 0, compute_stream()>>>(
        tc.data<I>(), rows, v, ignore, static_cast<unsigned long long*>(info.raw()));
    KILN_CUDA_CHECK_LAUNCH();
  });
  unsigned long long host[2] = {kNone, 0};
  KILN_CUDA_CHECK(
      cudaMemcpyAsync(host, info.raw(), sizeof(host), cudaMemcpyDeviceToHost, compute_stream()));
  KILN_CUDA_CHECK(cudaStreamSynchronize(compute_stream()));
  if (host[0] != kNone) {
    const int64_t r = static_cast<int64_t>(host[0]);
    const int64_t t = tc.narrow(0, r, 1).to_ints()[0];
    KILN_CHECK(false) << op << ": target " << t << " at row " << r
                      << " is out of range for V = " << v << " classes (and is not ignore_index "
                      << ignore << ")";
  }
  return static_cast<int64_t>(host[1]);
}

// The largest power of two (at most 256) dividing the address: what the GEMM may assume.
uint32_t alignment_of(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  uint32_t al = 256;
  while (al > 1 && a % al != 0) al /= 2;
  return al;
}

struct LtMatmulDesc {
  cublasLtMatmulDesc_t d = nullptr;
  ~LtMatmulDesc() {
    if (d != nullptr) cublasLtMatmulDescDestroy(d);
  }
};
struct LtLayout {
  cublasLtMatrixLayout_t l = nullptr;
  ~LtLayout() {
    if (l != nullptr) cublasLtMatrixLayoutDestroy(l);
  }
};
struct LtPreference {
  cublasLtMatmulPreference_t p = nullptr;
  ~LtPreference() {
    if (p != nullptr) cublasLtMatmulPreferenceDestroy(p);
  }
};

// Row-major D (m, n) = op(A) op(B) + beta * D with op(A) (m, k) and op(B) (k, n); lda, ldb, ldd
// are the row strides of the stored matrices (A stored (k, m) when trans_a, B stored (n, k) when
// trans_b). A and B have dtype ab, D has dtype dd; f32 accumulation (f64 for f64), no TF32.
// Row-major D is column-major D^T = op(B)^T op(A)^T, which is what cuBLASLt is asked for.
void gemm(const void* a, bool trans_a, int64_t lda, const void* b, bool trans_b, int64_t ldb,
          void* d, int64_t ldd, int64_t m, int64_t n, int64_t k, DType ab, DType dd, double beta) {
  if (m == 0 || n == 0) return;
  const bool f64 = ab == DType::kF64;
  LtMatmulDesc op;
  KILN_CUBLAS_CHECK(cublasLtMatmulDescCreate(&op.d, f64 ? CUBLAS_COMPUTE_64F : CUBLAS_COMPUTE_32F,
                                             f64 ? CUDA_R_64F : CUDA_R_32F));
  const cublasOperation_t op_first = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;  // first operand: B
  const cublasOperation_t op_second = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  KILN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op.d, CUBLASLT_MATMUL_DESC_TRANSA, &op_first,
                                                   sizeof(op_first)));
  KILN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op.d, CUBLASLT_MATMUL_DESC_TRANSB, &op_second,
                                                   sizeof(op_second)));
  LtLayout lb, la, ld;
  KILN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lb.l, cuda_data_type(ab, "linear_cross_entropy"),
                                               trans_b ? k : n, trans_b ? n : k, ldb));
  KILN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&la.l, cuda_data_type(ab, "linear_cross_entropy"),
                                               trans_a ? m : k, trans_a ? k : m, lda));
  KILN_CUBLAS_CHECK(
      cublasLtMatrixLayoutCreate(&ld.l, cuda_data_type(dd, "linear_cross_entropy"), n, m, ldd));
  LtPreference pref;
  KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref.p));
  const uint64_t ws = lt_workspace_size();
  KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref.p, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
  const uint32_t al_first = alignment_of(b), al_second = alignment_of(a), al_d = alignment_of(d);
  KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_first, sizeof(al_first)));
  KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_second, sizeof(al_second)));
  KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_d, sizeof(al_d)));
  KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_d, sizeof(al_d)));
  cublasLtMatmulHeuristicResult_t heur{};
  int found = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(lt_handle(), op.d, lb.l, la.l, ld.l,
                                                           ld.l, pref.p, 1, &heur, &found);
  KILN_CHECK(st == CUBLAS_STATUS_SUCCESS && found > 0)
      << "linear_cross_entropy: cuBLASLt has no algorithm for a " << m << "x" << n << "x" << k
      << " GEMM (" << ab << " -> " << dd << ", trans_a " << trans_a << ", trans_b " << trans_b
      << "; status " << static_cast<int>(st) << ")";
  const float alpha_f = 1.0f, beta_f = static_cast<float>(beta);
  const double alpha_d = 1.0;
  const void* alpha = f64 ? static_cast<const void*>(&alpha_d) : &alpha_f;
  const void* beta_p = f64 ? static_cast<const void*>(&beta) : &beta_f;
  KILN_CUBLAS_CHECK(cublasLtMatmul(lt_handle(), op.d, alpha, b, lb.l, a, la.l, beta_p, d, ld.l, d,
                                   ld.l, &heur.algo, lt_workspace(), lt_workspace_size(),
                                   compute_stream()));
}

template <typename T>
char* elem_ptr(const Tensor& t, int64_t i) {
  return static_cast<char*>(t.raw()) + i * static_cast<int64_t>(sizeof(T));
}

// Raises kernel's dynamic shared memory limit to `bytes` when the device allows that much per
// block (next to the kernel's static shared memory); false when it does not. The limit is a
// per-device property of the kernel shared by every host thread, so it is only ever raised, and
// the largest set per (kernel, device) is kept process-wide: every chunk of a step asks the same.
template <typename K>
bool allow_shared_bytes(K kernel, size_t bytes) {
  struct Limits {
    size_t raised = 0;          // the largest limit set
    size_t refused = SIZE_MAX;  // the smallest request the device cannot hold
  };
  static std::mutex mu;
  static auto* limits = new std::map<std::pair<const void*, int>, Limits>();  // never destroyed
  const int device = current_device();
  const void* k = reinterpret_cast<const void*>(kernel);
  std::lock_guard<std::mutex> lock(mu);
  Limits& lim = (*limits)[{k, device}];
  if (bytes <= lim.raised) return true;
  if (bytes >= lim.refused) return false;
  int optin = 0;
  KILN_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  cudaFuncAttributes attr{};
  KILN_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
  if (bytes + attr.sharedSizeBytes > static_cast<size_t>(optin)) {
    lim.refused = bytes;
    return false;
  }
  KILN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(bytes)));
  lim.raised = bytes;
  return true;
}

// The vector or shared-memory row kernel over one chunk of 16-bit logits (rows, V) in buf, as
// ce_rows_wanted() asks and the shape allows; false (nothing ran) where the scalar kernel must.
template <typename T, typename I>
bool launch_vec_rows(const Tensor& buf, const I* tp, int64_t rows, int64_t v, int64_t ignore,
                     acc_t<T>* row_loss, acc_t<T> scale, bool grad) {
  if constexpr (sizeof(T) != 2) {
    return false;
  } else {
    const CeRows want = ce_rows_wanted();
    if (want == CeRows::kScalar || v % 8 != 0 || reinterpret_cast<uintptr_t>(buf.raw()) % 16 != 0)
      return false;
    const dim3 grid(row_blocks(rows)), block(row_threads(v / 8, 512));
    T* p = buf.data<T>();
    const size_t bytes = static_cast<size_t>(v) * sizeof(T);
    if (grad && want == CeRows::kShared &&
        allow_shared_bytes(ce_rows_vec_kernel<T, I, true, true>, bytes)) {
      ce_rows_vec_kernel<T, I, true, true><<<grid, block, bytes, compute_stream()>>>(
          p, tp, rows, v, ignore, row_loss, nullptr, scale);
      g_last_ce_rows = CeRows::kShared;
    } else if (grad) {
      ce_rows_vec_kernel<T, I, true>
          <<<grid, block, 0, compute_stream()>>>(p, tp, rows, v, ignore, row_loss, nullptr, scale);
      g_last_ce_rows = CeRows::kVector;
    } else {
      ce_rows_vec_kernel<T, I, false>
          <<<grid, block, 0, compute_stream()>>>(p, tp, rows, v, ignore, row_loss, nullptr, scale);
      g_last_ce_rows = CeRows::kVector;
    }
    KILN_CUDA_CHECK_LAUNCH();
    return true;
  }
}

}  // namespace

void set_ce_rows(CeRows rows) { g_ce_rows_forced.store(static_cast<int>(rows)); }
CeRows last_ce_rows() { return g_last_ce_rows; }

// ---- cross_entropy ----

// logits (N, V), targets (N) i32/i64 on the current device. Returns the mean loss as a 0-dim
// f32 tensor (f64 for f64 logits); *lse = (N) log-sum-exp in f32 (f64 for f64), *count = rows not
// ignored.
Tensor cross_entropy_forward(const Tensor& logits, const Tensor& targets, int64_t ignore,
                             Tensor* lse, int64_t* count) {
  const char* op = "cross_entropy";
  check_on_current_device(op, "logits", logits);
  const int64_t n = logits.size(0), v = logits.size(1);
  *count = check_targets(op, targets, v, ignore);
  const DType ad = logits.dtype() == DType::kF64 ? DType::kF64 : DType::kF32;
  Tensor x = raw::contiguous(logits), tc = raw::contiguous(targets);
  *lse = Tensor::empty({n}, ad, logits.device());
  Tensor row_loss = Tensor::empty({n}, ad, logits.device());
  Tensor loss = Tensor::empty({}, ad, logits.device());  // f32 (f64) whatever the logits' dtype
  KILN_CUDA_DISPATCH_FLOAT(logits.dtype(), op, T, {
    using A = acc_t<T>;
    if (n > 0 && v > 0) {
      KILN_CE_DISPATCH_TARGET(targets.dtype(), op, I, {
        ce_rows_kernel<T, I, false><<<row_blocks(n), row_threads(v), 0, compute_stream()>>>(
            x.data<T>(), tc.data<I>(), n, v, ignore, row_loss.data<A>(), lse->data<A>(), A(0));
        KILN_CUDA_CHECK_LAUNCH();
      });
    } else if (n > 0) {  // V == 0 with every row ignored (checked): zero losses
      KILN_CUDA_CHECK(cudaMemsetAsync(row_loss.raw(), 0, row_loss.nbytes(), compute_stream()));
    }
    mean_loss_kernel<A>
        <<<1, 1024, 0, compute_stream()>>>(row_loss.data<A>(), n, *count, loss.data<A>());
    KILN_CUDA_CHECK_LAUNCH();
  });
  return loss;
}

// The gradient of cross_entropy_forward's loss given g (0-dim, on the device; never read back).
Tensor cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                              int64_t ignore, int64_t count, const Tensor& g) {
  const char* op = "cross_entropy";
  check_on_current_device(op, "grad", g);
  const int64_t n = logits.size(0), v = logits.size(1);
  Tensor x = raw::contiguous(logits), tc = raw::contiguous(targets);
  Tensor gc = raw::convert(g, logits.dtype());
  Tensor gx = Tensor::empty(logits.shape(), logits.dtype(), logits.device());
  if (n == 0 || v == 0) return gx;
  KILN_CUDA_DISPATCH_FLOAT(logits.dtype(), op, T, {
    using A = acc_t<T>;
    KILN_CE_DISPATCH_TARGET(targets.dtype(), op, I, {
      ce_backward_kernel<T, I><<<row_blocks(n), row_threads(v), 0, compute_stream()>>>(
          x.data<T>(), lse.data<A>(), tc.data<I>(), gc.data<T>(), count, ignore, gx.data<T>(), n,
          v);
      KILN_CUDA_CHECK_LAUNCH();
    });
  });
  return gx;
}

// ---- linear_cross_entropy ----

// x (N, C), w (V, C), targets (N) on the current device, x and w one floating dtype. Returns the
// mean loss (0-dim, f32; f64 for f64). When want_dx / want_dw, also the gradients of that loss (for
// an upstream gradient of 1) in *dx (N, C) and *dw (V, C), x's dtype (*dw in the f32 (f64) it was
// accumulated in when dw_acc_dtype). chunk_rows <= 0 picks a chunk of about 256 MiB of logits.
Tensor linear_cross_entropy_forward(const Tensor& x_in, const Tensor& w_in, const Tensor& targets,
                                    int64_t ignore, int64_t chunk_rows, bool want_dx, bool want_dw,
                                    Tensor* dx, Tensor* dw, bool dw_acc_dtype) {
  const char* op = "linear_cross_entropy";
  check_on_current_device(op, "x", x_in);
  const int64_t n = x_in.size(0), c = x_in.size(1), v = w_in.size(0);
  const DType dt = x_in.dtype();
  const DType ad = dt == DType::kF64 ? DType::kF64 : DType::kF32;
  const Device dev = x_in.device();
  const int64_t count = check_targets(op, targets, v, ignore);
  Tensor x = raw::contiguous(x_in), w = raw::contiguous(w_in), tc = raw::contiguous(targets);
  const int64_t esz = static_cast<int64_t>(dtype_size(dt));
  if (chunk_rows <= 0)
    chunk_rows = std::max<int64_t>(1, (int64_t{1} << 28) / std::max<int64_t>(v * esz, 1));
  chunk_rows = std::min<int64_t>(chunk_rows, std::max<int64_t>(n, 1));
  Tensor loss = Tensor::empty({}, ad, dev);  // f32 (f64) whatever x's dtype
  Tensor row_loss = Tensor::empty({n}, ad, dev);
  Tensor dw_acc;  // (V, C) in the accumulation dtype
  if (want_dx) *dx = Tensor::empty({n, c}, dt, dev);
  if (want_dw) dw_acc = Tensor::empty({v, c}, ad, dev);
  if (want_dw && (n == 0 || c == 0 || v == 0))
    KILN_CUDA_CHECK(cudaMemsetAsync(dw_acc.raw(), 0, dw_acc.nbytes(), compute_stream()));
  if (want_dx && v == 0 && dx->numel() > 0)
    KILN_CUDA_CHECK(cudaMemsetAsync(dx->raw(), 0, dx->nbytes(), compute_stream()));
  const bool grad = want_dx || want_dw;
  KILN_CUDA_DISPATCH_FLOAT(dt, op, T, {
    using A = acc_t<T>;
    const A scale = count > 0 ? A(1) / A(count) : A(0);
    if (v == 0 && n > 0)
      KILN_CUDA_CHECK(cudaMemsetAsync(row_loss.raw(), 0, row_loss.nbytes(), compute_stream()));
    Tensor buf = n > 0 && v > 0 ? Tensor::empty({chunk_rows, v}, dt, dev) : Tensor();
    for (int64_t r0 = 0; v > 0 && r0 < n; r0 += chunk_rows) {
      const int64_t rows = std::min(chunk_rows, n - r0);
      const char* xr = elem_ptr<T>(x, r0 * c);
      // logits (rows, V) = x[r0:r0+rows] (rows, C) @ w^T
      if (c > 0) {
        gemm(xr, false, c, w.raw(), true, c, buf.raw(), v, rows, v, c, dt, dt, 0.0);
      } else {
        KILN_CUDA_CHECK(cudaMemsetAsync(buf.raw(), 0, rows * v * esz, compute_stream()));
      }
      KILN_CE_DISPATCH_TARGET(targets.dtype(), op, I, {
        const I* tp = tc.data<I>() + r0;
        if (!launch_vec_rows<T, I>(buf, tp, rows, v, ignore, row_loss.data<A>() + r0, scale,
                                   grad)) {
          g_last_ce_rows = CeRows::kScalar;
          if (grad) {
            ce_rows_kernel<T, I, true><<<row_blocks(rows), row_threads(v), 0, compute_stream()>>>(
                buf.data<T>(), tp, rows, v, ignore, row_loss.data<A>() + r0, nullptr, scale);
          } else {
            ce_rows_kernel<T, I, false><<<row_blocks(rows), row_threads(v), 0, compute_stream()>>>(
                buf.data<T>(), tp, rows, v, ignore, row_loss.data<A>() + r0, nullptr, scale);
          }
          KILN_CUDA_CHECK_LAUNCH();
        }
      });
      if (c == 0) continue;
      // dx[r0:r0+rows] (rows, C) = dlogits (rows, V) @ w (V, C)
      if (want_dx)
        gemm(buf.raw(), false, v, w.raw(), false, c, elem_ptr<T>(*dx, r0 * c), c, rows, c, v, dt,
             dt, 0.0);
      // dW (V, C) += dlogits^T (V, rows) @ x[r0:r0+rows] (rows, C)
      if (want_dw)
        gemm(buf.raw(), true, v, xr, false, c, dw_acc.raw(), c, v, c, rows, dt, ad,
             r0 == 0 ? 0.0 : 1.0);
    }
    mean_loss_kernel<A>
        <<<1, 1024, 0, compute_stream()>>>(row_loss.data<A>(), n, count, loss.data<A>());
    KILN_CUDA_CHECK_LAUNCH();
  });
  if (want_dw) *dw = dw_acc_dtype ? dw_acc : raw::convert(dw_acc, dt);
  return loss;
}

// dst (f32, contiguous) = src * g[0] (overwrite) or += src * g[0]; src f32 of dst's size.
__global__ void scale_into_kernel(float* __restrict__ dst, const float* __restrict__ src,
                                  const float* __restrict__ g, int64_t n4, int64_t n,
                                  bool overwrite) {
  const float s = g[0];
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t i = i0; i < n4; i += stride) {
    const float4 a = reinterpret_cast<const float4*>(src)[i];
    float4 d = overwrite ? make_float4(0.f, 0.f, 0.f, 0.f) : reinterpret_cast<float4*>(dst)[i];
    d.x += a.x * s;
    d.y += a.y * s;
    d.z += a.z * s;
    d.w += a.w * s;
    reinterpret_cast<float4*>(dst)[i] = d;
  }
  for (int64_t i = 4 * n4 + i0; i < n; i += stride)
    dst[i] = (overwrite ? 0.f : dst[i]) + src[i] * s;
}

// The classifier's f32 weight gradient into the weight's f32 .grad: dst = [dst +] src * g[0]
// (g 0-dim on the device; never read back), 16 bytes at a time where both are 16-byte aligned.
// REQUIRES: dst, src f32, contiguous, one size.
void scale_into_f32(const Tensor& dst, const Tensor& src, const Tensor& g, bool overwrite) {
  check_on_current_device("linear_cross_entropy", "grad", g);
  KILN_CHECK(dst.dtype() == DType::kF32 && src.dtype() == DType::kF32 && dst.is_contiguous() &&
             src.is_contiguous() && dst.numel() == src.numel())
      << "internal: scale_into_f32 " << dst.str() << " <- " << src.str();
  Tensor gf = raw::convert(g, DType::kF32);
  const int64_t n = dst.numel();
  if (n == 0) return;
  const int64_t n4 = dst.aligned_to(16) && src.aligned_to(16) ? n / 4 : 0;
  const unsigned blocks = static_cast<unsigned>(
      std::min<int64_t>(std::max<int64_t>((n4 + 255) / 256, 1), int64_t{sm_count()} * 8));
  scale_into_kernel<<<blocks, 256, 0, compute_stream()>>>(dst.data<float>(), src.data<float>(),
                                                          gf.data<float>(), n4, n, overwrite);
  KILN_CUDA_CHECK_LAUNCH();
}

// t *= g[0] in place (g 0-dim on the device, converted to t's dtype; never read back).
void scale_by_device_scalar(const Tensor& t, const Tensor& g) {
  check_on_current_device("linear_cross_entropy", "grad", g);
  KILN_CHECK(t.is_contiguous()) << "internal: scale_by_device_scalar needs a contiguous tensor";
  Tensor gc = raw::convert(g, t.dtype());
  const int64_t n = t.numel();
  if (n == 0) return;
  KILN_CUDA_DISPATCH_FLOAT(t.dtype(), "linear_cross_entropy", T, {
    scale_by_kernel<T><<<blocks_for(n), 256, 0, compute_stream()>>>(t.data<T>(), gc.data<T>(), n);
    KILN_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace kiln::cuda
