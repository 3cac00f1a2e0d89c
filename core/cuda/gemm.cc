// The cuBLASLt GEMM wrapper: row-major problems mapped onto cuBLASLt's column-major ones
// (D^T = op(B)^T op(A)^T, so B is cuBLASLt's "A"), plan cache keyed by the full problem, epilogue
// set-up, checked calls, and (for large 16-bit GEMMs outside deterministic mode) the algorithm
// picked by timing the heuristic's top 8 on the plan's first call.
#include "core/cuda/gemm.h"

#include <cublasLt.h>
#include <cublas_v2.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "core/check.h"
#include "core/cuda/runtime.h"

namespace kiln::cuda {
namespace {

bool is_fp8(DType t) { return t == DType::kF8E4M3 || t == DType::kF8E5M2; }

cublasLtEpilogue_t lt_epilogue(const GemmParams& p) {
  switch (p.epilogue) {
    case GemmEpilogue::kNone:
      return CUBLASLT_EPILOGUE_DEFAULT;
    case GemmEpilogue::kBias:
      return CUBLASLT_EPILOGUE_BIAS;
    case GemmEpilogue::kGeluAux:
      return p.bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
    case GemmEpilogue::kDGelu:
      return CUBLASLT_EPILOGUE_DGELU;
    case GemmEpilogue::kDGeluBGrad:
      return CUBLASLT_EPILOGUE_DGELU_BGRAD;
    case GemmEpilogue::kBiasGradA:
      // cuBLASLt's B is our A (row-major <-> column-major swap).
      return CUBLASLT_EPILOGUE_BGRADB;
  }
  return CUBLASLT_EPILOGUE_DEFAULT;
}

bool uses_aux(const GemmParams& p) {
  return p.epilogue == GemmEpilogue::kGeluAux || p.epilogue == GemmEpilogue::kDGelu ||
         p.epilogue == GemmEpilogue::kDGeluBGrad;
}

// Largest power of two (<= 256) dividing the address: what the heuristic may assume.
uint32_t alignment(const void* p) {
  const uintptr_t v = reinterpret_cast<uintptr_t>(p);
  uint32_t a = 256;
  while (a > 1 && v % a != 0) a >>= 1;
  return a;
}

using Key = std::tuple<int, int, int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                       int64_t, int64_t, int64_t, int, int, int, int64_t, uint64_t, bool, bool,
                       int64_t, uint32_t>;

struct KeyHash {
  size_t operator()(const Key& k) const {
    size_t h = 0;
    auto mix = [&h](uint64_t v) {
      h ^= std::hash<uint64_t>()(v) + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    };
    std::apply([&](const auto&... f) { (mix(static_cast<uint64_t>(f)), ...); }, k);
    return h;
  }
};

DType b_dtype(const GemmParams& p) { return p.b_dtype.value_or(p.ab_dtype); }

Key make_key(const GemmParams& p, int device, bool tf32) {
  // Alignments of every pointer the heuristic sees, packed 8 bits each.
  uint64_t al = 0;
  for (const void* q : {p.a, p.b, static_cast<const void*>(p.d), p.bias,
                        static_cast<const void*>(p.aux), static_cast<const void*>(p.bias_grad)}) {
    uint32_t a = q ? alignment(q) : 0;
    int lg = 0;
    while (a > 1) {
      a >>= 1;
      ++lg;
    }
    al = (al << 8) | static_cast<uint64_t>(q ? lg + 1 : 0);
  }
  const int dtypes = static_cast<int>(p.ab_dtype) | (static_cast<int>(b_dtype(p)) << 8);
  return Key(device, dtypes, static_cast<int>(p.d_dtype), p.m, p.n, p.k, p.lda, p.ldb, p.ldd,
             p.stride_a, p.stride_b, p.stride_d, p.batch,
             static_cast<int>(p.trans_a) | (static_cast<int>(p.trans_b) << 1),
             static_cast<int>(p.epilogue) | (p.bias ? 16 : 0) | (p.fast_accum ? 32 : 0),
             p.beta != 0.0 ? 1 : 0, p.ld_aux, al, tf32, p.a_scale != nullptr, p.c ? p.ldc : -1,
             p.c ? alignment(p.c) : 0);
}

std::string describe(const GemmParams& p) {
  std::ostringstream os;
  os << "gemm " << p.ab_dtype;
  if (p.b_dtype) os << " x " << *p.b_dtype;
  os << "->" << p.d_dtype << " m=" << p.m << " n=" << p.n << " k=" << p.k << " batch=" << p.batch
     << " trans_a=" << p.trans_a << " trans_b=" << p.trans_b << " lda=" << p.lda << " ldb=" << p.ldb
     << " ldd=" << p.ldd << " epilogue=" << static_cast<int>(p.epilogue);
  if (p.c) os << " ldc=" << p.ldc << " (separate C)";
  return os.str();
}

#define KILN_LT_CHECK(expr, p)                                                              \
  do {                                                                                      \
    cublasStatus_t kiln_st_ = (expr);                                                       \
    KILN_CHECK(kiln_st_ == CUBLAS_STATUS_SUCCESS)                                           \
        << "cuBLASLt error " << static_cast<int>(kiln_st_) << " ("                          \
        << cublasLtGetStatusString(kiln_st_) << ") in " << #expr << " for " << describe(p); \
  } while (0)

struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr, ld = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool has_algo = false;
  bool f64_scale = false;
  std::mutex mu;  // pointer attributes are set on the shared descriptor per call

  ~Plan() {
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (lc) cublasLtMatrixLayoutDestroy(lc);
    if (ld) cublasLtMatrixLayoutDestroy(ld);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

template <typename T>
void set_desc(const GemmParams& p, cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr,
              const T& v) {
  KILN_LT_CHECK(cublasLtMatmulDescSetAttribute(d, attr, &v, sizeof(v)), p);
}

cublasLtMatrixLayout_t make_layout(const GemmParams& p, cudaDataType_t t, int64_t rows,
                                   int64_t cols, int64_t ld, int64_t stride) {
  cublasLtMatrixLayout_t l = nullptr;
  KILN_LT_CHECK(cublasLtMatrixLayoutCreate(&l, t, static_cast<uint64_t>(rows),
                                           static_cast<uint64_t>(cols), ld),
                p);
  if (p.batch > 1) {
    const int32_t count = static_cast<int32_t>(p.batch);
    KILN_LT_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count,
                                                   sizeof(count)),
                  p);
    KILN_LT_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                                   &stride, sizeof(stride)),
                  p);
  }
  return l;
}

// Sets the per-call pointers on the descriptor.
void set_pointers(const GemmParams& p, Plan& plan) {
  if (p.epilogue == GemmEpilogue::kBias || (p.epilogue == GemmEpilogue::kGeluAux && p.bias))
    set_desc(p, plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, p.bias);
  if (p.epilogue == GemmEpilogue::kDGeluBGrad || p.epilogue == GemmEpilogue::kBiasGradA)
    set_desc(p, plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
             static_cast<const void*>(p.bias_grad));
  if (uses_aux(p))
    set_desc(p, plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER,
             static_cast<const void*>(p.aux));
  if (p.a_scale) {  // cuBLASLt's A is our B and the reverse
    set_desc(p, plan.desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER,
             static_cast<const void*>(p.b_scale));
    set_desc(p, plan.desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER,
             static_cast<const void*>(p.a_scale));
  }
}

// The preference every plan of p asks the heuristic with: the workspace and p's alignments.
cublasLtMatmulPreference_t make_preference(const GemmParams& p) {
  cublasLtMatmulPreference_t pref = nullptr;
  KILN_LT_CHECK(cublasLtMatmulPreferenceCreate(&pref), p);
  const uint64_t ws = lt_workspace_size();
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                       sizeof(ws));
  const uint32_t al_a = alignment(p.b), al_b = alignment(p.a), al_d = alignment(p.d);
  const uint32_t al_c = p.c ? alignment(p.c) : al_d;
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a,
                                       sizeof(al_a));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b,
                                       sizeof(al_b));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c,
                                       sizeof(al_c));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_d,
                                       sizeof(al_d));
  return pref;
}

std::unique_ptr<Plan> make_plan(const GemmParams& p, bool tf32) {
  auto plan = std::make_unique<Plan>();
  const bool fp8 = is_fp8(p.ab_dtype);
  cublasComputeType_t ct = CUBLAS_COMPUTE_32F;
  cudaDataType_t st = CUDA_R_32F;
  if (p.ab_dtype == DType::kF64) {
    ct = CUBLAS_COMPUTE_64F;
    st = CUDA_R_64F;
    plan->f64_scale = true;
  } else if (p.ab_dtype == DType::kF32 && tf32) {
    ct = CUBLAS_COMPUTE_32F_FAST_TF32;
  }
  KILN_LT_CHECK(cublasLtMatmulDescCreate(&plan->desc, ct, st), p);
  // Column-major view: cuBLASLt computes D^T (n x m) = op(B)^T (n x k) @ op(A)^T (k x m).
  const cublasOperation_t ta = p.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t tb = p.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  set_desc(p, plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, ta);
  set_desc(p, plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, tb);
  const cublasLtEpilogue_t epi = lt_epilogue(p);
  set_desc(p, plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, epi);
  if (uses_aux(p)) {
    KILN_CHECK(p.ld_aux % 8 == 0 && p.ld_aux >= p.n)
        << "gemm: GELU aux row stride " << p.ld_aux << " must be a multiple of 8 and >= n";
    set_desc(p, plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, p.ld_aux);
  }
  if (fp8) {
    const int8_t fast = p.fast_accum ? 1 : 0;  // 0: the periodic promotion to fp32
    set_desc(p, plan->desc, CUBLASLT_MATMUL_DESC_FAST_ACCUM, fast);
  }
  set_pointers(p, *plan);
  const cudaDataType_t abt = cuda_data_type(p.ab_dtype, "gemm"),
                       dt = cuda_data_type(p.d_dtype, "gemm");
  const cudaDataType_t bt = cuda_data_type(b_dtype(p), "gemm");
  // Our B, stored k x n (n x k when trans_b), is cuBLASLt's A: column-major rows = stored cols.
  plan->la = make_layout(p, bt, p.trans_b ? p.k : p.n, p.trans_b ? p.n : p.k, p.ldb, p.stride_b);
  plan->lb = make_layout(p, abt, p.trans_a ? p.m : p.k, p.trans_a ? p.k : p.m, p.lda, p.stride_a);
  plan->lc = make_layout(p, dt, p.n, p.m, p.c ? p.ldc : p.ldd, p.stride_d);
  plan->ld = make_layout(p, dt, p.n, p.m, p.ldd, p.stride_d);

  cublasLtMatmulPreference_t pref = make_preference(p);
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t hs = cublasLtMatmulAlgoGetHeuristic(
      lt_handle(), plan->desc, plan->la, plan->lb, plan->lc, plan->ld, pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (hs == CUBLAS_STATUS_SUCCESS && found > 0 && result.state == CUBLAS_STATUS_SUCCESS) {
    plan->algo = result.algo;
    plan->has_algo = true;
  }
  // Otherwise: no algorithm (an unsupported epilogue / dtype combination, or a layout cuBLASLt
  // declines). gemm() reports false for fused and fp8 problems and runs plain ones through
  // legacy cuBLAS, which also reports any invalid problem.
  return plan;
}

// Runs p with plan's descriptors and `algo` (pointers already set); the launch status.
cublasStatus_t run_algo(const GemmParams& p, Plan& plan, const cublasLtMatmulAlgo_t& algo) {
  const float af = static_cast<float>(p.alpha), bf = static_cast<float>(p.beta);
  const double ad = p.alpha, bd = p.beta;
  const void* alpha = plan.f64_scale ? static_cast<const void*>(&ad) : &af;
  const void* beta = plan.f64_scale ? static_cast<const void*>(&bd) : &bf;
  const void* c = p.c ? p.c : p.d;
  return cublasLtMatmul(lt_handle(), plan.desc, alpha, p.b, plan.la, p.a, plan.lb, beta, c, plan.lc,
                        p.d, plan.ld, &algo, lt_workspace(), lt_workspace_size(), compute_stream());
}

// Whether a new plan for p is timed over the heuristic's top algorithms (KILN_GEMM_TUNE=0: never):
// 16-bit operands, at least 2^30 multiply-adds, D overwritten (beta = 0, or a separate C) and
// aliasing no input, and not in deterministic mode (the pick depends on timings, so it may differ
// between runs).
bool tune_wanted(const GemmParams& p) {
  static const bool off = [] {
    const char* e = std::getenv("KILN_GEMM_TUNE");
    return e != nullptr && std::string(e) == "0";
  }();
  if (off || deterministic() || (p.beta != 0.0 && p.c == nullptr)) return false;
  if (p.ab_dtype != DType::kBF16 && p.ab_dtype != DType::kF16) return false;
  if (p.d == p.a || p.d == p.b || (p.aux != nullptr && p.d == p.aux) || p.d == p.c) return false;
  return static_cast<double>(p.m) * p.n * p.k * p.batch >= static_cast<double>(1 << 30);
}

// Times up to tune_candidates() of the heuristic's algorithms on p's own operands (one warm-up and
// 3 timed runs each; D and any epilogue outputs are rewritten by the real call after) and keeps the
// fastest. Once per plan, on its first use; synchronises the compute stream.
// KILN_GEMM_TUNE_CANDIDATES (1-32, default 8): how many of the heuristic's algorithms are timed.
int tune_candidates() {
  static const int n = [] {
    const char* e = std::getenv("KILN_GEMM_TUNE_CANDIDATES");
    const int v = e == nullptr ? 8 : std::atoi(e);
    return v < 1 ? 8 : std::min(v, 32);
  }();
  return n;
}

void tune_plan(const GemmParams& p, Plan& plan) {
  constexpr int kMaxCandidates = 32, kReps = 3;
  cublasLtMatmulPreference_t pref = make_preference(p);
  cublasLtMatmulHeuristicResult_t res[kMaxCandidates] = {};
  int found = 0;
  const cublasStatus_t hs =
      cublasLtMatmulAlgoGetHeuristic(lt_handle(), plan.desc, plan.la, plan.lb, plan.lc, plan.ld,
                                     pref, tune_candidates(), res, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (hs != CUBLAS_STATUS_SUCCESS || found < 2) return;
  cudaEvent_t e0, e1;
  KILN_CUDA_CHECK(cudaEventCreate(&e0));
  KILN_CUDA_CHECK(cudaEventCreate(&e1));
  float best = -1;
  for (int i = 0; i < found; ++i) {
    if (res[i].state != CUBLAS_STATUS_SUCCESS) continue;
    if (run_algo(p, plan, res[i].algo) != CUBLAS_STATUS_SUCCESS) continue;  // warm-up
    KILN_CUDA_CHECK(cudaEventRecord(e0, compute_stream()));
    for (int r = 0; r < kReps; ++r) KILN_LT_CHECK(run_algo(p, plan, res[i].algo), p);
    KILN_CUDA_CHECK(cudaEventRecord(e1, compute_stream()));
    KILN_CUDA_CHECK(cudaEventSynchronize(e1));
    float ms = 0;
    KILN_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    if (best < 0 || ms < best) {
      best = ms;
      plan.algo = res[i].algo;
    }
  }
  KILN_CUDA_CHECK(cudaEventDestroy(e0));
  KILN_CUDA_CHECK(cudaEventDestroy(e1));
}

// Legacy cuBLAS for the rare plain GEMM cuBLASLt's heuristic declines (odd alignment / leading
// dimensions): one handle per device, created on first use, never destroyed.
cublasHandle_t legacy_handle(int device) {
  static std::mutex mu;
  static std::vector<cublasHandle_t>* handles = new std::vector<cublasHandle_t>();
  std::lock_guard<std::mutex> lock(mu);
  if (device >= static_cast<int>(handles->size())) handles->resize(device + 1, nullptr);
  cublasHandle_t& h = (*handles)[device];
  if (h == nullptr) KILN_CUBLAS_CHECK(cublasCreate(&h));
  return h;
}

void legacy_gemm(const GemmParams& p, bool tf32) {
  cublasHandle_t h = legacy_handle(current_device());
  KILN_CUBLAS_CHECK(cublasSetStream(h, compute_stream()));
  KILN_CUBLAS_CHECK(cublasSetMathMode(h, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
  const bool f64 = p.ab_dtype == DType::kF64;
  const float af = static_cast<float>(p.alpha), bf = static_cast<float>(p.beta);
  const double ad = p.alpha, bd = p.beta;
  const cudaDataType_t t = cuda_data_type(p.ab_dtype, "gemm");
  KILN_CHECK(p.m < (int64_t{1} << 31) && p.n < (int64_t{1} << 31) && p.k < (int64_t{1} << 31) &&
             p.batch < (int64_t{1} << 31))
      << "gemm: problem too large for the cuBLAS fallback: " << describe(p);
  KILN_LT_CHECK(
      cublasGemmStridedBatchedEx(
          h, p.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, p.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
          static_cast<int>(p.n), static_cast<int>(p.m), static_cast<int>(p.k),
          f64 ? static_cast<const void*>(&ad) : &af, p.b, t, static_cast<int>(p.ldb), p.stride_b,
          p.a, t, static_cast<int>(p.lda), p.stride_a, f64 ? static_cast<const void*>(&bd) : &bf,
          p.d, cuda_data_type(p.d_dtype, "gemm"), static_cast<int>(p.ldd), p.stride_d,
          static_cast<int>(p.batch),
          f64 ? CUBLAS_COMPUTE_64F : (tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F),
          CUBLAS_GEMM_DEFAULT),
      p);
}

std::mutex g_cache_mu;
int64_t g_tuned = 0;  // under g_cache_mu
std::atomic<int64_t> g_separate_c{0};
std::unordered_map<Key, std::unique_ptr<Plan>, KeyHash>* g_cache =
    new std::unordered_map<Key, std::unique_ptr<Plan>, KeyHash>();  // never destroyed

}  // namespace

cudaDataType_t cuda_data_type(DType t, const char* op) {
  switch (t) {
    case DType::kF32:
      return CUDA_R_32F;
    case DType::kF64:
      return CUDA_R_64F;
    case DType::kBF16:
      return CUDA_R_16BF;
    case DType::kF16:
      return CUDA_R_16F;
    case DType::kF8E4M3:
      return CUDA_R_8F_E4M3;
    case DType::kF8E5M2:
      return CUDA_R_8F_E5M2;
    default:
      break;
  }
  KILN_CHECK(false) << op << ": cuBLASLt has no type for dtype " << t;
  return CUDA_R_32F;
}

bool gemm(const GemmParams& p) {
  KILN_CHECK(p.m > 0 && p.n > 0 && p.k > 0 && p.batch > 0)
      << "gemm: empty problem reached cuBLASLt: " << describe(p);
  KILN_CHECK(p.epilogue == GemmEpilogue::kNone || p.batch == 1)
      << "gemm: epilogues are only wired for batch 1: " << describe(p);
  KILN_CHECK(is_fp8(p.ab_dtype) == (p.a_scale != nullptr && p.b_scale != nullptr))
      << "gemm: fp8 operands need both scales (and only fp8 takes them): " << describe(p);
  KILN_CHECK(!p.b_dtype || (is_fp8(p.ab_dtype) && is_fp8(*p.b_dtype) &&
                            !(p.ab_dtype == DType::kF8E5M2 && *p.b_dtype == DType::kF8E5M2)))
      << "gemm: a separate B dtype is for mixed fp8 (at most one e5m2) only: " << describe(p);
  KILN_CHECK(p.c == nullptr || (p.batch == 1 && p.ldc >= p.n))
      << "gemm: a separate C needs batch 1 and ldc >= n: " << describe(p);
  const bool tf32 = p.ab_dtype == DType::kF32 && allow_tf32();
  const int device = current_device();
  Plan* plan = nullptr;
  {
    std::lock_guard<std::mutex> lock(g_cache_mu);
    auto& slot = (*g_cache)[make_key(p, device, tf32)];
    if (!slot) {
      slot = make_plan(p, tf32);
      if (slot->has_algo && tune_wanted(p)) {
        set_pointers(p, *slot);
        tune_plan(p, *slot);
        ++g_tuned;
      }
    }
    plan = slot.get();
  }
  // Legacy cuBLAS computes C = D in place only: a separate C is refused (the caller adds).
  const bool lt_only = p.epilogue != GemmEpilogue::kNone || is_fp8(p.ab_dtype) || p.c != nullptr;
  if (!plan->has_algo) {
    if (lt_only) return false;
    legacy_gemm(p, tf32);  // a plain GEMM always runs
    return true;
  }
  std::lock_guard<std::mutex> lock(plan->mu);
  set_pointers(p, *plan);
  const cublasStatus_t st = run_algo(p, *plan, plan->algo);
  if (st == CUBLAS_STATUS_NOT_SUPPORTED || st == CUBLAS_STATUS_INVALID_VALUE) {
    // The heuristic's algorithm was refused at launch (nothing ran): never use this plan again.
    plan->has_algo = false;
    if (lt_only) return false;
    legacy_gemm(p, tf32);
    return true;
  }
  KILN_LT_CHECK(st, p);
  if (p.c != nullptr) g_separate_c.fetch_add(1, std::memory_order_relaxed);
  return true;
}

int64_t gemm_separate_c_count() { return g_separate_c.load(std::memory_order_relaxed); }

int64_t gemm_tuned_plan_count() {
  std::lock_guard<std::mutex> lock(g_cache_mu);
  return g_tuned;
}

int64_t gemm_plan_count() {
  std::lock_guard<std::mutex> lock(g_cache_mu);
  return static_cast<int64_t>(g_cache->size());
}

}  // namespace kiln::cuda
