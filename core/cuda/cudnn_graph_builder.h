// cuDNN backend-graph plumbing for kiln's fused attention (core/cuda/cudnn_sdpa.cc): descriptor
// ownership, the execution plans a graph is kept as (one, or several candidates to time), and a
// builder that makes a graph's tensors and operations descriptor by descriptor and turns it into
// plans through the heuristics and, for tuning, knob variants of the first engine. Internal to
// core/cuda; compiled only with cuDNN (KILN_WITH_CUDNN).
#pragma once

#if KILN_WITH_CUDNN
#include <cudnn_graph.h>

#include <algorithm>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kiln::cuda::cudnn {

using Dims = std::vector<int64_t>;

// "what: <cuDNN's error string> (<its last error message>)".
std::string cudnn_error(cudnnStatus_t st, const char* what);

// Owns one backend descriptor.
class Desc {
 public:
  Desc() = default;
  explicit Desc(cudnnBackendDescriptor_t d) : d_(d) {}
  Desc(Desc&& o) noexcept : d_(o.d_) { o.d_ = nullptr; }
  Desc& operator=(Desc&&) = delete;
  Desc(const Desc&) = delete;
  ~Desc() {
    if (d_ != nullptr) cudnnBackendDestroyDescriptor(d_);
  }
  cudnnBackendDescriptor_t get() const { return d_; }

 private:
  cudnnBackendDescriptor_t d_ = nullptr;
};

// One finalised execution plan and the workspace it asks for.
struct Candidate {
  cudnnBackendDescriptor_t plan = nullptr;
  int64_t workspace = 0;  // bytes
};

// A graph's execution plans with everything they were built from: one, or with tuning up to
// several (candidate 0 is the heuristics' first choice).
struct Plan {
  std::deque<Desc> descs;  // tensors, ops, graph, engine configs, plans (kept alive together)
  std::vector<Candidate> candidates;
  bool backward = false;
  std::mutex mu;
  int picked = 0;  // under mu; -1 until the candidates are timed
  int64_t max_workspace() const {
    int64_t w = 0;
    for (const Candidate& c : candidates) w = std::max(w, c.workspace);
    return w;
  }
};

// Builds one operation graph descriptor by descriptor. The first failing call is remembered
// and every later call is skipped; status() reports it. Virtual tensors take uids from
// first_virtual_uid up.
class GraphBuilder {
 public:
  GraphBuilder(cudnnHandle_t handle, int64_t first_virtual_uid)
      : handle_(handle), next_uid_(first_virtual_uid) {}
  const absl::Status& status() const { return status_; }
  cudnnBackendDescriptor_t tensor(int64_t uid, cudnnDataType_t dt, const Dims& dims,
                                  const Dims& strides, bool is_virtual, bool by_value = false);
  // A virtual (graph-internal) tensor with a fresh uid.
  cudnnBackendDescriptor_t virt(cudnnDataType_t dt, const Dims& dims, const Dims& strides);
  // A by-value f32 scalar (its host value goes in the variant pack).
  cudnnBackendDescriptor_t scalar(int64_t uid);
  // y = mode(x[, b][, t]). axis >= 0 only for GEN_INDEX.
  void pointwise(cudnnPointwiseMode_t mode, cudnnDataType_t prec, cudnnBackendDescriptor_t x,
                 cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t y,
                 cudnnBackendDescriptor_t t = nullptr, int64_t axis = -1);
  // y = reduce(x) over the dims where y has extent 1 (or fewer heads, for the GQA fold).
  void reduction(cudnnReduceTensorOp_t red_op, cudnnBackendDescriptor_t x,
                 cudnnBackendDescriptor_t y);
  // c = a b (batched over the two leading dims, broadcasting kv heads over query heads).
  void matmul(cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t c);
  // y = x seen through y's dims and strides (a transpose, for the engines a layout change).
  void reshape(cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y);
  // Finalises the graph, asks the heuristics for engine configs and keeps up to `want` that
  // finalise as execution plans (skipping non-deterministic engines when asked): the heuristics'
  // configs in their order, then knob variants of the first. Candidate 0 is the heuristics'
  // first choice.
  absl::StatusOr<std::shared_ptr<Plan> > build(bool deterministic, bool backward, size_t want);

 private:
  struct Config {
    cudnnBackendDescriptor_t cfg, plan;
  };
  using Knobs = std::vector<std::pair<cudnnBackendKnobType_t, int64_t> >;
  // Up to `want` of the heuristics' configs that finalise as plans, in the heuristics' order.
  std::vector<Config> plans_from_heuristics(cudnnBackendDescriptor_t graph,
                                            cudnnBackendHeurMode_t mode, bool deterministic,
                                            size_t want, std::string* tried);
  // cfg finalised as an execution plan, or nullptr (status_ says why).
  cudnnBackendDescriptor_t plan_for(cudnnBackendDescriptor_t cfg);
  // Appends to *out, until it holds `want`, plans of cfg's engine with one knob moved off cfg's
  // choice (each knob in turn, each value its info allows); variants cuDNN rejects are skipped.
  void add_knob_variants(cudnnBackendDescriptor_t graph, cudnnBackendDescriptor_t cfg, size_t want,
                         std::vector<Config>* out);
  // An engine config of engine `index` on graph with the given knob choices, or nullptr.
  cudnnBackendDescriptor_t variant(cudnnBackendDescriptor_t graph, int64_t index,
                                   const Knobs& knobs);
  // False when the config's engine carries CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC.
  bool is_deterministic(cudnnBackendDescriptor_t cfg);
  cudnnBackendDescriptor_t make(cudnnBackendDescriptorType_t type, const char* what);
  void set(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name,
           cudnnBackendAttributeType_t type, int64_t count, const void* value, const char* what);
  void set_desc(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name,
                cudnnBackendDescriptor_t value, const char* what);
  void finalize(cudnnBackendDescriptor_t d, const char* what);
  void add_op(cudnnBackendDescriptor_t op, const char* what);
  cudnnHandle_t handle_;
  absl::Status status_;
  std::deque<Desc> descs_;
  std::vector<cudnnBackendDescriptor_t> ops_;
  int64_t next_uid_;
};

}  // namespace kiln::cuda::cudnn

#endif  // KILN_WITH_CUDNN
