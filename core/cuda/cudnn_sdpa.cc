// cuDNN fused attention through the backend graph API. The graphs follow the pattern cuDNN's
// flash-attention engines recognise (cuDNN 9 developer guide, "Fused Flash Attention"):
//
// forward:   S = Q K^T (f32) ; S *= scale ; S = select(row >= col, S, -inf)
//            M = max_row(S) ; E = exp(S - M) ; L = sum_row(E) ; Stats = M + log(L)
//            P = E / L (io dtype) ; O = P V
// backward:  Dsum = sum_row(dO * O) (f32, workspace) ; S = Q K^T * scale - Stats ; causal mask
//            P = exp(S) ; dV = P^T dO ; dP = dO V^T ; dS = P (dP - Dsum) scale
//            dK = dS^T Q ; dQ = dS K (through an f32 accumulator in the workspace, or
//            directly in deterministic mode)
//
// With grouped-query heads the dK/dV matmuls produce one (io dtype) result per query head and an
// ADD reduction over the head dimension folds them to (B, Hkv, T, D). K and V enter transposed
// ((B, H, D, T) views with swapped strides), as the engines expect. Plans are cached per shape,
// strides, dtype, device and determinism; failures are cached too so a rejected shape is not
// rebuilt on every call. With KILN_SDPA_TUNE=1 a graph keeps several plans (the heuristics'
// configs and knob variants of the first) and its first call times them (see the header).
#include "core/cuda/cudnn_sdpa.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "core/check.h"
#include "core/cuda/runtime.h"
#include "core/env_switch.h"

#if KILN_WITH_CUDNN
#include <cudnn_graph.h>

#include "core/cuda/cudnn_graph_builder.h"
#endif

namespace kiln::cuda {

#if !KILN_WITH_CUDNN

bool cudnn_sdpa_available() { return false; }
void force_sdpa_tune(int) {}
SdpaTuneResult last_sdpa_tune(bool) { return {}; }
void force_sdpa_candidate(int) {}
int last_sdpa_candidate(bool) { return -1; }
absl::Status sdpa_forward(const Tensor&, const Tensor&, const Tensor&, double, const Tensor&,
                          const Tensor&) {
  return absl::UnavailableError("kiln was built without cuDNN");
}
absl::Status sdpa_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                           const Tensor&, const Tensor&, double, bool, const Tensor&, const Tensor&,
                           const Tensor&) {
  return absl::UnavailableError("kiln was built without cuDNN");
}
int64_t sdpa_plans_built() { return 0; }

#else  // KILN_WITH_CUDNN

namespace {

using cudnn::Candidate;
using cudnn::cudnn_error;
using cudnn::Desc;
using cudnn::Dims;
using cudnn::GraphBuilder;
using cudnn::Plan;

// Tensor unique ids of the non-virtual tensors (virtual ones count up from kFirstVirtual).
enum Uid : int64_t {
  kQ = 1,
  kKT,
  kVT,
  kV,
  kO,
  kStats,
  kScale,
  kNegInf,
  kOne,
  kDO,
  kDQ,
  kDK,
  kDV,
  kDsum,     // backward workspace: sum_row(dO * O), f32 (B, Hq, T, 1)
  kDqAccum,  // backward workspace: f32 dQ accumulator (B, Hq, T, D)
  kFirstVirtual = 100,
};

EnvSwitch g_tune("KILN_SDPA_TUNE", true);
constexpr size_t kMaxCandidates = 16;
std::atomic<int> g_forced_candidate{-1};
std::atomic<int> g_last_candidate[2] = {-1, -1};
std::mutex g_tune_mu;
SdpaTuneResult g_last_tune[2];  // under g_tune_mu

constexpr int64_t kAlign = 256;
int64_t align_up(int64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// ---- shapes ----

struct AttnShape {
  int64_t b, hq, hkv, t, d;
  cudnnDataType_t io;
  Dims q_dims() const { return {b, hq, t, d}; }
  Dims kv_dims() const { return {b, hkv, t, d}; }
  Dims kvt_dims() const { return {b, hkv, d, t}; }
  Dims s_dims() const { return {b, hq, t, t}; }
  Dims s_strides() const { return {hq * t * t, t * t, t, 1}; }
  Dims st_strides() const { return {hq * t * t, t * t, 1, t}; }  // (B, H, Tk, Tq) of S^T
  Dims row_dims() const { return {b, hq, t, 1}; }
  Dims row_strides() const { return {hq * t, t, 1, 1}; }
  static Dims packed(const Dims& dims) {
    return {dims[1] * dims[2] * dims[3], dims[2] * dims[3], dims[3], 1};
  }
};

// (b, h, t, 1) strides of a (B, H, T, D) tensor with unit stride in D.
Dims bhtd_strides(const Tensor& x) { return {x.strides()[0], x.strides()[1], x.strides()[2], 1}; }
// The same memory seen as (B, H, D, T).
Dims transposed(const Dims& s) { return {s[0], s[1], s[3], s[2]}; }

// Adds select(row >= col, s, -inf) and returns the masked scores.
cudnnBackendDescriptor_t causal_mask(GraphBuilder& g, const AttnShape& a,
                                     cudnnBackendDescriptor_t s, cudnnBackendDescriptor_t neg_inf) {
  const Dims dims = a.s_dims(), strides = a.s_strides();
  cudnnBackendDescriptor_t row = g.virt(CUDNN_DATA_INT32, dims, strides);
  cudnnBackendDescriptor_t col = g.virt(CUDNN_DATA_INT32, dims, strides);
  cudnnBackendDescriptor_t keep = g.virt(CUDNN_DATA_BOOLEAN, dims, strides);
  cudnnBackendDescriptor_t out = g.virt(CUDNN_DATA_FLOAT, dims, strides);
  g.pointwise(CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_FLOAT, s, nullptr, row, nullptr, 2);
  g.pointwise(CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_FLOAT, s, nullptr, col, nullptr, 3);
  g.pointwise(CUDNN_POINTWISE_CMP_GE, CUDNN_DATA_BOOLEAN, row, col, keep);
  g.pointwise(CUDNN_POINTWISE_BINARY_SELECT, CUDNN_DATA_FLOAT, s, neg_inf, out, keep);
  return out;
}

void build_forward(GraphBuilder& g, const AttnShape& a, const Dims& qs, const Dims& ks,
                   const Dims& vs, const Dims& os) {
  const cudnnDataType_t f32 = CUDNN_DATA_FLOAT;
  auto q = g.tensor(kQ, a.io, a.q_dims(), qs, false);
  auto kt = g.tensor(kKT, a.io, a.kvt_dims(), transposed(ks), false);
  auto v = g.tensor(kV, a.io, a.kv_dims(), vs, false);
  auto o = g.tensor(kO, a.io, a.q_dims(), os, false);
  auto stats = g.tensor(kStats, f32, a.row_dims(), a.row_strides(), false);
  auto scale = g.scalar(kScale);
  auto neg_inf = g.scalar(kNegInf);
  const Dims sd = a.s_dims(), ss = a.s_strides(), rd = a.row_dims(), rs = a.row_strides();

  auto s = g.virt(f32, sd, ss);
  g.matmul(q, kt, s);
  auto scaled = g.virt(f32, sd, ss);
  g.pointwise(CUDNN_POINTWISE_MUL, f32, s, scale, scaled);
  auto masked = causal_mask(g, a, scaled, neg_inf);
  auto mx = g.virt(f32, rd, rs);
  g.reduction(CUDNN_REDUCE_TENSOR_MAX, masked, mx);
  auto sub = g.virt(f32, sd, ss);
  g.pointwise(CUDNN_POINTWISE_SUB, f32, masked, mx, sub);
  auto e = g.virt(f32, sd, ss);
  g.pointwise(CUDNN_POINTWISE_EXP, f32, sub, nullptr, e);
  auto sum = g.virt(f32, rd, rs);
  g.reduction(CUDNN_REDUCE_TENSOR_ADD, e, sum);
  auto log_sum = g.virt(f32, rd, rs);
  g.pointwise(CUDNN_POINTWISE_LOG, f32, sum, nullptr, log_sum);
  g.pointwise(CUDNN_POINTWISE_ADD, f32, mx, log_sum, stats);
  auto p = g.virt(a.io, sd, ss);  // the second matmul takes P in the io dtype
  g.pointwise(CUDNN_POINTWISE_DIV, f32, e, sum, p);
  g.matmul(p, v, o);
}

// dX for X in {K, V}: one matmul per query head, folded over each group when Hq > Hkv.
void grad_kv(GraphBuilder& g, const AttnShape& a, cudnnBackendDescriptor_t lhs_t,
             cudnnBackendDescriptor_t rhs, cudnnBackendDescriptor_t out) {
  if (a.hq == a.hkv) {
    g.matmul(lhs_t, rhs, out);
    return;
  }
  auto full = g.virt(a.io, a.q_dims(), AttnShape::packed(a.q_dims()));
  g.matmul(lhs_t, rhs, full);
  g.reduction(CUDNN_REDUCE_TENSOR_ADD, full, out);
}

void build_backward(GraphBuilder& g, const AttnShape& a, const Dims& qs, const Dims& ks,
                    const Dims& vs, const Dims& os, const Dims& dos, const Dims& dqs,
                    const Dims& dks, const Dims& dvs, bool deterministic) {
  const cudnnDataType_t f32 = CUDNN_DATA_FLOAT;
  const Dims packed_q = AttnShape::packed(a.q_dims());
  auto q = g.tensor(kQ, a.io, a.q_dims(), qs, false);
  auto kt = g.tensor(kKT, a.io, a.kvt_dims(), transposed(ks), false);
  auto vt = g.tensor(kVT, a.io, a.kvt_dims(), transposed(vs), false);
  auto o = g.tensor(kO, a.io, a.q_dims(), os, false);
  auto d_o = g.tensor(kDO, a.io, a.q_dims(), dos, false);
  auto stats = g.tensor(kStats, f32, a.row_dims(), a.row_strides(), false);
  auto scale = g.scalar(kScale);
  auto neg_inf = g.scalar(kNegInf);
  auto one = g.scalar(kOne);
  auto dq = g.tensor(kDQ, a.io, a.q_dims(), dqs, false);
  auto dk = g.tensor(kDK, a.io, a.kv_dims(), dks, false);
  auto dv = g.tensor(kDV, a.io, a.kv_dims(), dvs, false);
  const Dims sd = a.s_dims(), ss = a.s_strides(), rd = a.row_dims(), rs = a.row_strides();

  // Dsum = sum_row(dO * O), kept in the workspace.
  auto dot = g.virt(f32, a.q_dims(), packed_q);
  g.pointwise(CUDNN_POINTWISE_MUL, f32, d_o, o, dot);
  auto dot_sum = g.virt(f32, rd, rs);
  g.reduction(CUDNN_REDUCE_TENSOR_ADD, dot, dot_sum);
  auto dsum = g.tensor(kDsum, f32, rd, rs, false);
  g.pointwise(CUDNN_POINTWISE_MUL, f32, dot_sum, one, dsum);

  // P = exp(scale Q K^T - Stats), masked.
  auto s = g.virt(f32, sd, ss);
  g.matmul(q, kt, s);
  auto scaled = g.virt(f32, sd, ss);
  g.pointwise(CUDNN_POINTWISE_MUL, f32, s, scale, scaled);
  auto centred = g.virt(f32, sd, ss);
  g.pointwise(CUDNN_POINTWISE_SUB, f32, scaled, stats, centred);
  auto masked = causal_mask(g, a, centred, neg_inf);
  auto p = g.virt(f32, sd, ss);
  g.pointwise(CUDNN_POINTWISE_EXP, f32, masked, nullptr, p);

  // dV = P^T dO.
  auto p_t = g.virt(a.io, sd, a.st_strides());
  g.reshape(p, p_t);
  grad_kv(g, a, p_t, d_o, dv);

  // dS = P (dO V^T - Dsum) scale.
  auto dp = g.virt(f32, sd, ss);
  g.matmul(d_o, vt, dp);
  auto dp_centred = g.virt(f32, sd, ss);
  g.pointwise(CUDNN_POINTWISE_SUB, f32, dp, dsum, dp_centred);
  auto ds_unscaled = g.virt(f32, sd, ss);
  g.pointwise(CUDNN_POINTWISE_MUL, f32, dp_centred, p, ds_unscaled);
  auto ds = g.virt(f32, sd, ss);
  g.pointwise(CUDNN_POINTWISE_MUL, f32, ds_unscaled, scale, ds);

  // dK = dS^T Q.
  auto ds_t = g.virt(a.io, sd, a.st_strides());
  g.reshape(ds, ds_t);
  grad_kv(g, a, ds_t, q, dk);

  // dQ = dS K.
  auto k = g.virt(a.io, a.kv_dims(), ks);
  g.reshape(kt, k);
  if (deterministic) {
    g.matmul(ds, k, dq);
  } else {
    auto accum = g.tensor(kDqAccum, f32, a.q_dims(), packed_q, false);
    g.matmul(ds, k, accum);
    g.pointwise(CUDNN_POINTWISE_IDENTITY, f32, accum, nullptr, dq);
  }
}

// ---- handles, cache, execution ----

struct Runtime {
  std::mutex mu;
  std::map<int, cudnnHandle_t> handles;
  std::map<std::vector<int64_t>, absl::StatusOr<std::shared_ptr<Plan> > > plans;
  int64_t built = 0;
};
Runtime& rt() {
  static Runtime* r = new Runtime();  // leaked: lives until exit, like the CUDA context
  return *r;
}

absl::StatusOr<cudnnHandle_t> handle_locked(int device) {
  auto it = rt().handles.find(device);
  if (it != rt().handles.end()) return it->second;
  cudnnHandle_t h = nullptr;
  cudnnStatus_t st = cudnnCreate(&h);
  if (st != CUDNN_STATUS_SUCCESS) return absl::UnavailableError(cudnn_error(st, "cudnnCreate"));
  rt().handles[device] = h;
  return h;
}

absl::StatusOr<cudnnDataType_t> io_type(DType t) {
  if (t == DType::kBF16) return CUDNN_DATA_BFLOAT16;
  if (t == DType::kF16) return CUDNN_DATA_HALF;
  return absl::InvalidArgumentError(
      absl::StrCat("cuDNN attention serves bf16 and f16 only, got ", dtype_name(t)));
}

void append_strides(std::vector<int64_t>* key, const Tensor& x) {
  for (int i = 0; i < 3; ++i) key->push_back(x.strides()[i]);
}

// Returns the cached plan for key, building it with build_fn on first use.
template <typename BuildFn>
absl::StatusOr<std::shared_ptr<Plan> > cached_plan(const std::vector<int64_t>& key, int device,
                                                   bool deterministic, BuildFn build_fn) {
  std::lock_guard<std::mutex> lock(rt().mu);
  auto it = rt().plans.find(key);
  if (it != rt().plans.end()) return it->second;
  DeviceGuard guard(device);  // handles and plans belong to the current device
  absl::StatusOr<cudnnHandle_t> h = handle_locked(device);
  if (!h.ok()) return h.status();
  GraphBuilder g(*h, kFirstVirtual);
  build_fn(g);
  // Never tuned in deterministic mode (the pick depends on timings). `deterministic` asks for
  // deterministic engines, which the forward does not need.
  const bool tune = g_tune.on() && !deterministic && !::kiln::cuda::deterministic();
  absl::StatusOr<std::shared_ptr<Plan> > plan =
      g.build(deterministic, key[0] == 1, tune ? kMaxCandidates : 1);
  if (!plan.ok() && std::getenv("KILN_CUDNN_VERBOSE") != nullptr)
    std::fprintf(stderr, "kiln cuDNN attention: %s\n", plan.status().ToString().c_str());
  if (plan.ok()) ++rt().built;
  rt().plans.emplace(key, plan);
  return plan;
}

cudnnHandle_t handle_for(int device) {
  std::lock_guard<std::mutex> lock(rt().mu);
  return *handle_locked(device);  // created by cached_plan already
}

// Queues one run of plan on the device's compute stream; the first failing cuDNN call's status.
cudnnStatus_t try_execute(int device, cudnnBackendDescriptor_t plan,
                          const std::vector<int64_t>& uids, const std::vector<void*>& ptrs,
                          void* workspace) {
  DeviceGuard guard(device);
  cudnnHandle_t h = handle_for(device);
  cudnnStatus_t st = cudnnSetStream(h, compute_stream(device));
  if (st != CUDNN_STATUS_SUCCESS) return st;
  cudnnBackendDescriptor_t vp = nullptr;
  st = cudnnBackendCreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &vp);
  if (st != CUDNN_STATUS_SUCCESS) return st;
  Desc owner(vp);
  const int64_t n = static_cast<int64_t>(uids.size());
  for (cudnnStatus_t s : {cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS,
                                                   CUDNN_TYPE_INT64, n, uids.data()),
                          cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS,
                                                   CUDNN_TYPE_VOID_PTR, n, ptrs.data()),
                          cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_WORKSPACE,
                                                   CUDNN_TYPE_VOID_PTR, 1, &workspace)})
    if (s != CUDNN_STATUS_SUCCESS) return s;
  st = cudnnBackendFinalize(vp);
  return st != CUDNN_STATUS_SUCCESS ? st : cudnnBackendExecute(h, plan, vp);
}

// Times every candidate of p with run (one warm-up, then kReps runs between two events) and
// picks the fastest; a candidate whose runs fail is skipped. Synchronises the compute stream.
template <typename Run>
void tune(int device, Plan& p, Run run) {
  constexpr int kReps = 3;
  DeviceGuard guard(device);
  cudaStream_t stream = compute_stream(device);
  cudaEvent_t e0, e1;
  KILN_CUDA_CHECK(cudaEventCreate(&e0));
  KILN_CUDA_CHECK(cudaEventCreate(&e1));
  SdpaTuneResult r;
  r.candidates = static_cast<int>(p.candidates.size());
  for (int i = 0; i < r.candidates; ++i) {
    if (run(p.candidates[i]) != CUDNN_STATUS_SUCCESS) continue;  // warm-up
    KILN_CUDA_CHECK(cudaEventRecord(e0, stream));
    bool ok = true;
    for (int rep = 0; rep < kReps; ++rep) ok = ok && run(p.candidates[i]) == CUDNN_STATUS_SUCCESS;
    KILN_CUDA_CHECK(cudaEventRecord(e1, stream));
    KILN_CUDA_CHECK(cudaEventSynchronize(e1));
    float ms = 0;
    KILN_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    ms /= kReps;
    if (!ok) continue;
    if (i == 0) r.first_ms = ms;
    if (r.picked < 0 || ms < r.best_ms) r.picked = i, r.best_ms = ms;
  }
  KILN_CUDA_CHECK(cudaEventDestroy(e0));
  KILN_CUDA_CHECK(cudaEventDestroy(e1));
  KILN_CHECK(r.picked >= 0) << "cuDNN attention: none of " << r.candidates
                            << " candidate plans ran";
  p.picked = r.picked;
  if (std::getenv("KILN_CUDNN_VERBOSE") != nullptr)
    std::fprintf(stderr,
                 "kiln cuDNN attention: %s plan timed over %d candidates: the heuristics' first "
                 "%.3f ms, picked #%d %.3f ms\n",
                 p.backward ? "backward" : "forward", r.candidates, r.first_ms, r.picked,
                 r.best_ms);
  std::lock_guard<std::mutex> lock(g_tune_mu);
  g_last_tune[p.backward] = r;
}

// Runs p's picked candidate (timing them all on the first call of a tuned plan), or the one a
// test forced. run(candidate) queues one execution.
template <typename Run>
void run_plan(int device, Plan& p, Run run) {
  int i;
  {
    std::lock_guard<std::mutex> lock(p.mu);
    if (p.picked < 0) tune(device, p, run);
    i = p.picked;
  }
  const int n = static_cast<int>(p.candidates.size()), forced = g_forced_candidate.load();
  if (forced >= 0) i = forced % n;
  g_last_candidate[p.backward].store(i);
  const cudnnStatus_t st = run(p.candidates[i]);
  KILN_CHECK(st == CUDNN_STATUS_SUCCESS) << "cuDNN attention: " << cudnn_error(st, "execute");
}

// A workspace of at least `bytes` from kiln's CUDA allocator (stream-ordered: freeing it after
// the launch is safe for work queued on the compute stream).
Tensor workspace_tensor(int64_t bytes, Device dev) {
  return Tensor::empty({std::max<int64_t>(1, (bytes + 3) / 4)}, DType::kF32, dev);
}

absl::Status check_common(const Tensor& q, const Tensor& k, const Tensor& v) {
  if (!cudnn_sdpa_available()) return absl::UnavailableError("cuDNN 9 is not available");
  absl::StatusOr<cudnnDataType_t> io = io_type(q.dtype());
  if (!io.ok()) return io.status();
  for (const Tensor* x : {&q, &k, &v})
    if (x->strides()[3] != 1) return absl::InvalidArgumentError("D must have unit stride");
  return absl::OkStatus();
}

AttnShape shape_of(const Tensor& q, const Tensor& k) {
  return {q.size(0), q.size(1), k.size(1), q.size(2), q.size(3), *io_type(q.dtype())};
}

}  // namespace

bool cudnn_sdpa_available() {
  static const bool ok = [] {
    if (cudnnGetVersion() < 90000) return false;
    cudnnHandle_t h = nullptr;
    if (cudnnCreate(&h) != CUDNN_STATUS_SUCCESS) return false;
    cudnnDestroy(h);
    return true;
  }();
  return ok;
}

int64_t sdpa_plans_built() {
  std::lock_guard<std::mutex> lock(rt().mu);
  return rt().built;
}

void force_sdpa_tune(int on) { g_tune.force(on); }

SdpaTuneResult last_sdpa_tune(bool backward) {
  std::lock_guard<std::mutex> lock(g_tune_mu);
  return g_last_tune[backward];
}

void force_sdpa_candidate(int i) { g_forced_candidate.store(i); }
int last_sdpa_candidate(bool backward) { return g_last_candidate[backward].load(); }

absl::Status sdpa_forward(const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                          const Tensor& out, const Tensor& lse) {
  if (absl::Status st = check_common(q, k, v); !st.ok()) return st;
  const AttnShape a = shape_of(q, k);
  const int device = q.device().index;
  const bool det = deterministic();  // in the key: no plan tuning in deterministic mode
  std::vector<int64_t> key = {
      0, static_cast<int64_t>(q.dtype()), device, a.b, a.hq, a.hkv, a.t, a.d, det ? 1 : 0};
  if (out.strides()[3] != 1) return absl::InvalidArgumentError("out needs unit stride in D");
  for (const Tensor* x : {&q, &k, &v, &out}) append_strides(&key, *x);
  absl::StatusOr<std::shared_ptr<Plan> > plan =
      cached_plan(key, device, false, [&](GraphBuilder& g) {
        build_forward(g, a, bhtd_strides(q), bhtd_strides(k), bhtd_strides(v), bhtd_strides(out));
      });
  if (!plan.ok()) return plan.status();
  Tensor ws = workspace_tensor((*plan)->max_workspace(), q.device());
  float scale_f = static_cast<float>(scale);
  float neg_inf = cudnnGetVersion() < 91000 ? std::numeric_limits<float>::lowest()
                                            : -std::numeric_limits<float>::infinity();
  const std::vector<int64_t> uids = {kQ, kKT, kV, kO, kStats, kScale, kNegInf};
  const std::vector<void*> ptrs = {q.raw(),   k.raw(),  v.raw(), out.raw(),
                                   lse.raw(), &scale_f, &neg_inf};
  run_plan(device, **plan,
           [&](const Candidate& c) { return try_execute(device, c.plan, uids, ptrs, ws.raw()); });
  return absl::OkStatus();
}

absl::Status sdpa_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                           const Tensor& dout, const Tensor& lse, double scale, bool deterministic,
                           const Tensor& dq, const Tensor& dk, const Tensor& dv) {
  if (absl::Status st = check_common(q, k, v); !st.ok()) return st;
  for (const Tensor* x : {&out, &dout, &dq, &dk, &dv})
    if (x->strides()[3] != 1)
      return absl::InvalidArgumentError("out, dout, dq, dk and dv need unit stride in D");
  const AttnShape a = shape_of(q, k);
  const int device = q.device().index;
  std::vector<int64_t> key = {1,
                              static_cast<int64_t>(q.dtype()),
                              device,
                              a.b,
                              a.hq,
                              a.hkv,
                              a.t,
                              a.d,
                              deterministic ? 1 : 0};
  for (const Tensor* x : {&q, &k, &v, &out, &dout, &dq, &dk, &dv}) append_strides(&key, *x);
  absl::StatusOr<std::shared_ptr<Plan> > plan =
      cached_plan(key, device, deterministic, [&](GraphBuilder& g) {
        build_backward(g, a, bhtd_strides(q), bhtd_strides(k), bhtd_strides(v), bhtd_strides(out),
                       bhtd_strides(dout), bhtd_strides(dq), bhtd_strides(dk), bhtd_strides(dv),
                       deterministic);
      });
  if (!plan.ok()) return plan.status();
  Plan& p = **plan;
  // Workspace: cuDNN's own (the largest candidate's), then Dsum (B, Hq, T) f32, then the dQ
  // accumulator (B, Hq, T, D) f32.
  const int64_t dsum_off = align_up(p.max_workspace());
  const int64_t accum_off = dsum_off + align_up(a.b * a.hq * a.t * 4);
  const int64_t accum_bytes = deterministic ? 0 : a.b * a.hq * a.t * a.d * 4;
  Tensor ws = workspace_tensor(accum_off + accum_bytes, q.device());
  char* base = static_cast<char*>(ws.raw());
  float scale_f = static_cast<float>(scale), one = 1.0f;
  float neg_inf = cudnnGetVersion() < 91000 ? std::numeric_limits<float>::lowest()
                                            : -std::numeric_limits<float>::infinity();
  std::vector<int64_t> uids = {kQ,      kKT,  kVT, kO,  kDO, kStats, kScale,
                               kNegInf, kOne, kDQ, kDK, kDV, kDsum};
  std::vector<void*> ptrs = {q.raw(),   k.raw(),  v.raw(),        out.raw(), dout.raw(),
                             lse.raw(), &scale_f, &neg_inf,       &one,      dq.raw(),
                             dk.raw(),  dv.raw(), base + dsum_off};
  if (!deterministic) {
    uids.push_back(kDqAccum);
    ptrs.push_back(base + accum_off);
  }
  run_plan(device, p, [&](const Candidate& c) {
    // cuDNN before 9.6 expected the caller to zero the dQ accumulator; later versions do it.
    if (!deterministic && cudnnGetVersion() < 90600)
      KILN_CUDA_CHECK(cudaMemsetAsync(base + accum_off, 0, accum_bytes, compute_stream(device)));
    return try_execute(device, c.plan, uids, ptrs, base);
  });
  return absl::OkStatus();
}

#endif  // KILN_WITH_CUDNN

}  // namespace kiln::cuda
