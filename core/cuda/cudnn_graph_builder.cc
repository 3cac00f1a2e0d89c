// The cuDNN graph builder of core/cuda/cudnn_graph_builder.h: descriptors made, set and finalised
// one by one (the first failure kept), then the heuristics' engine configs and knob variants
// turned into execution plans.
#include "core/cuda/cudnn_graph_builder.h"

#if KILN_WITH_CUDNN
#include "absl/strings/str_cat.h"

namespace kiln::cuda::cudnn {
namespace {
constexpr int kMaxVariantAttempts = 48;  // knob variants tried per graph
}  // namespace

std::string cudnn_error(cudnnStatus_t st, const char* what) {
  char last[1024] = {0};
  cudnnGetLastErrorString(last, sizeof(last));
  return absl::StrCat(what, ": ", cudnnGetErrorString(st),
                      last[0] ? absl::StrCat(" (", last, ")") : std::string());
}

cudnnBackendDescriptor_t GraphBuilder::tensor(int64_t uid, cudnnDataType_t dt, const Dims& dims,
                                              const Dims& strides, bool is_virtual, bool by_value) {
  cudnnBackendDescriptor_t t = make(CUDNN_BACKEND_TENSOR_DESCRIPTOR, "tensor");
  const int64_t alignment = 16;
  const bool virt = is_virtual;
  set(t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt, "tensor data type");
  set(t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, static_cast<int64_t>(dims.size()),
      dims.data(), "tensor dims");
  set(t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, static_cast<int64_t>(strides.size()),
      strides.data(), "tensor strides");
  set(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid, "tensor uid");
  set(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &alignment, "tensor alignment");
  set(t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &virt, "tensor is_virtual");
  if (by_value) {
    const bool bv = true;
    set(t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &bv, "tensor is_by_value");
  }
  finalize(t, "tensor finalize");
  return t;
}

// A virtual (graph-internal) tensor with a fresh uid.
cudnnBackendDescriptor_t GraphBuilder::virt(cudnnDataType_t dt, const Dims& dims,
                                            const Dims& strides) {
  return tensor(next_uid_++, dt, dims, strides, /*is_virtual=*/true);
}

// A by-value f32 scalar (its host value goes in the variant pack).
cudnnBackendDescriptor_t GraphBuilder::scalar(int64_t uid) {
  return tensor(uid, CUDNN_DATA_FLOAT, {1, 1, 1, 1}, {1, 1, 1, 1}, false, /*by_value=*/true);
}

// y = mode(x[, b][, t]). axis >= 0 only for GEN_INDEX.
void GraphBuilder::pointwise(cudnnPointwiseMode_t mode, cudnnDataType_t prec,
                             cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t b,
                             cudnnBackendDescriptor_t y, cudnnBackendDescriptor_t t, int64_t axis) {
  cudnnBackendDescriptor_t pw = make(CUDNN_BACKEND_POINTWISE_DESCRIPTOR, "pointwise");
  set(pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode, "pointwise mode");
  set(pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec, "pointwise prec");
  if (axis >= 0) set(pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis, "pointwise axis");
  finalize(pw, "pointwise finalize");
  cudnnBackendDescriptor_t op = make(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, "pw op");
  set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, pw, "pw op desc");
  set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, x, "pw op x");
  if (b != nullptr) set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, b, "pw op b");
  if (t != nullptr) set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, t, "pw op t");
  set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, y, "pw op y");
  add_op(op, "pointwise op finalize");
}

// y = reduce(x) over the dims where y has extent 1 (or fewer heads, for the GQA fold).
void GraphBuilder::reduction(cudnnReduceTensorOp_t red_op, cudnnBackendDescriptor_t x,
                             cudnnBackendDescriptor_t y) {
  cudnnBackendDescriptor_t red = make(CUDNN_BACKEND_REDUCTION_DESCRIPTOR, "reduction");
  const cudnnDataType_t f32 = CUDNN_DATA_FLOAT;
  set(red, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &red_op,
      "reduction operator");
  set(red, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f32, "reduction type");
  finalize(red, "reduction finalize");
  cudnnBackendDescriptor_t op = make(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR, "red op");
  set_desc(op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, x, "red op x");
  set_desc(op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, y, "red op y");
  set_desc(op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, red, "red op desc");
  add_op(op, "reduction op finalize");
}

// c = a b (batched over the two leading dims, broadcasting kv heads over query heads).
void GraphBuilder::matmul(cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t b,
                          cudnnBackendDescriptor_t c) {
  cudnnBackendDescriptor_t mm = make(CUDNN_BACKEND_MATMUL_DESCRIPTOR, "matmul");
  const cudnnDataType_t f32 = CUDNN_DATA_FLOAT;
  set(mm, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f32, "matmul comp type");
  finalize(mm, "matmul finalize");
  cudnnBackendDescriptor_t op = make(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR, "mm op");
  set_desc(op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, a, "mm op a");
  set_desc(op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, b, "mm op b");
  set_desc(op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, c, "mm op c");
  set_desc(op, CUDNN_ATTR_OPERATION_MATMUL_DESC, mm, "mm op desc");
  add_op(op, "matmul op finalize");
}

// y = x seen through y's dims and strides (a transpose, for the engines a layout change).
void GraphBuilder::reshape(cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y) {
  cudnnBackendDescriptor_t op = make(CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR, "reshape op");
  set_desc(op, CUDNN_ATTR_OPERATION_RESHAPE_XDESC, x, "reshape x");
  set_desc(op, CUDNN_ATTR_OPERATION_RESHAPE_YDESC, y, "reshape y");
  add_op(op, "reshape op finalize");
}

// Finalises the graph, asks the heuristics for engine configs and keeps the first that
// finalises as an execution plan (skipping non-deterministic engines when asked); with tuning,
// up to kMaxCandidates plans.
absl::StatusOr<std::shared_ptr<Plan> > GraphBuilder::build(bool deterministic, bool backward,
                                                           size_t want) {
  if (!status_.ok()) return status_;
  cudnnBackendDescriptor_t graph = make(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, "op graph");
  set(graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle_, "graph handle");
  set(graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
      static_cast<int64_t>(ops_.size()), ops_.data(), "graph ops");
  finalize(graph, "operation graph finalize");
  if (!status_.ok()) return status_;
  std::string tried;
  for (cudnnBackendHeurMode_t mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
    std::vector<Config> found = plans_from_heuristics(graph, mode, deterministic, want, &tried);
    if (found.empty()) continue;
    if (found.size() < want) add_knob_variants(graph, found[0].cfg, want, &found);
    auto p = std::make_shared<Plan>();
    for (const Config& c : found) {
      Candidate cand{c.plan, 0};
      int64_t n = 0;
      cudnnStatus_t st = cudnnBackendGetAttribute(c.plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE,
                                                  CUDNN_TYPE_INT64, 1, &n, &cand.workspace);
      if (st != CUDNN_STATUS_SUCCESS)
        return absl::InternalError(cudnn_error(st, "plan workspace size"));
      // A tuning candidate asking for much more workspace than the first is left out: every
      // call allocates the largest candidate's.
      if (!p->candidates.empty() &&
          cand.workspace > std::max<int64_t>(4 * p->candidates[0].workspace, int64_t{64} << 20))
        continue;
      p->candidates.push_back(cand);
    }
    p->picked = p->candidates.size() > 1 ? -1 : 0;
    p->backward = backward;
    p->descs = std::move(descs_);
    return p;
  }
  return absl::UnimplementedError(
      absl::StrCat("cuDNN has no engine for this attention graph; tried: ", tried));
}

// Up to `want` of the heuristics' configs that finalise as plans, in the heuristics' order.
std::vector<GraphBuilder::Config> GraphBuilder::plans_from_heuristics(
    cudnnBackendDescriptor_t graph, cudnnBackendHeurMode_t mode, bool deterministic, size_t want,
    std::string* tried) {
  std::vector<Config> out;
  cudnnBackendDescriptor_t heur = make(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, "heuristics");
  set_desc(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, graph, "heur graph");
  set(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode, "heur mode");
  finalize(heur, "heuristics finalize");
  if (!status_.ok()) {
    absl::StrAppend(tried, " [heuristics mode ", static_cast<int>(mode), ": ", status_.message(),
                    "]");
    status_ = absl::OkStatus();
    return out;
  }
  int64_t count = 0;
  cudnnStatus_t st = cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                              CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count, nullptr);
  if (st != CUDNN_STATUS_SUCCESS || count == 0) {
    absl::StrAppend(tried, " [mode ", static_cast<int>(mode), ": no engine configs]");
    return out;
  }
  std::vector<cudnnBackendDescriptor_t> cfgs(count);
  for (auto& c : cfgs) c = make(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, "engine config");
  if (!status_.ok()) return out;
  int64_t got = 0;
  st = cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                count, &got, cfgs.data());
  if (st != CUDNN_STATUS_SUCCESS) {
    absl::StrAppend(tried, " [mode ", static_cast<int>(mode), ": ", cudnn_error(st, "heur results"),
                    "]");
    return out;
  }
  if (got == 0) {  // cuDNN drops configs that fail its support checks (the log says why)
    absl::StrAppend(tried, " [mode ", static_cast<int>(mode), ": none of ", count,
                    " configs supports this graph; CUDNN_LOGLEVEL_DBG=2 shows why]");
    return out;
  }
  for (int64_t i = 0; i < got; ++i) {
    if (deterministic && !is_deterministic(cfgs[i])) {
      absl::StrAppend(tried, " [mode ", static_cast<int>(mode), " config ", i,
                      ": non-deterministic]");
      continue;
    }
    cudnnBackendDescriptor_t plan = plan_for(cfgs[i]);
    if (plan != nullptr) {
      out.push_back({cfgs[i], plan});
      if (out.size() >= want) break;
      continue;
    }
    absl::StrAppend(tried, " [mode ", static_cast<int>(mode), " config ", i, ": ",
                    status_.message(), "]");
    status_ = absl::OkStatus();
  }
  return out;
}

// cfg finalised as an execution plan, or nullptr (status_ says why).
cudnnBackendDescriptor_t GraphBuilder::plan_for(cudnnBackendDescriptor_t cfg) {
  cudnnBackendDescriptor_t plan = make(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, "plan");
  set(plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle_, "plan handle");
  set_desc(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, cfg, "plan config");
  finalize(plan, "plan finalize");
  return status_.ok() ? plan : nullptr;
}

// Appends to *out, until it holds `want`, plans of cfg's engine with one knob moved off cfg's
// choice (each knob in turn, each value its info allows); variants cuDNN rejects are skipped.
void GraphBuilder::add_knob_variants(cudnnBackendDescriptor_t graph, cudnnBackendDescriptor_t cfg,
                                     size_t want, std::vector<Config>* out) {
  cudnnBackendDescriptor_t engine = make(CUDNN_BACKEND_ENGINE_DESCRIPTOR, "engine");
  std::vector<cudnnBackendDescriptor_t> infos, chosen;
  for (int i = 0; i < CUDNN_KNOB_TYPE_COUNTS; ++i) {
    infos.push_back(make(CUDNN_BACKEND_KNOB_INFO_DESCRIPTOR, "knob info"));
    chosen.push_back(make(CUDNN_BACKEND_KNOB_CHOICE_DESCRIPTOR, "knob choice"));
  }
  if (!status_.ok()) return;
  int64_t n = 0, index = 0, n_info = 0, n_chosen = 0;
  auto get = [](cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name,
                cudnnBackendAttributeType_t type, int64_t count, int64_t* got, void* value) {
    return cudnnBackendGetAttribute(d, name, type, count, got, value) == CUDNN_STATUS_SUCCESS;
  };
  const auto kDesc = CUDNN_TYPE_BACKEND_DESCRIPTOR;
  if (!get(cfg, CUDNN_ATTR_ENGINECFG_ENGINE, kDesc, 1, &n, &engine) ||
      !get(engine, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &n, &index) ||
      !get(engine, CUDNN_ATTR_ENGINE_KNOB_INFO, kDesc, CUDNN_KNOB_TYPE_COUNTS, &n_info,
           infos.data()))
    return;
  if (!get(cfg, CUDNN_ATTR_ENGINECFG_KNOB_CHOICES, kDesc, CUDNN_KNOB_TYPE_COUNTS, &n_chosen,
           chosen.data()))
    n_chosen = 0;
  Knobs base;
  for (int64_t i = 0; i < n_chosen; ++i) {
    cudnnBackendKnobType_t type;
    int64_t value = 0;
    if (get(chosen[i], CUDNN_ATTR_KNOB_CHOICE_KNOB_TYPE, CUDNN_TYPE_KNOB_TYPE, 1, &n, &type) &&
        get(chosen[i], CUDNN_ATTR_KNOB_CHOICE_KNOB_VALUE, CUDNN_TYPE_INT64, 1, &n, &value))
      base.emplace_back(type, value);
  }
  int attempts = 0;  // each builds descriptors kept until exit: bounded
  for (int64_t i = 0; i < n_info && out->size() < want && attempts < kMaxVariantAttempts; ++i) {
    cudnnBackendKnobType_t type;
    int64_t lo = 0, hi = -1, stride = 0;
    if (!get(infos[i], CUDNN_ATTR_KNOB_INFO_TYPE, CUDNN_TYPE_KNOB_TYPE, 1, &n, &type) ||
        !get(infos[i], CUDNN_ATTR_KNOB_INFO_MINIMUM_VALUE, CUDNN_TYPE_INT64, 1, &n, &lo) ||
        !get(infos[i], CUDNN_ATTR_KNOB_INFO_MAXIMUM_VALUE, CUDNN_TYPE_INT64, 1, &n, &hi) ||
        !get(infos[i], CUDNN_ATTR_KNOB_INFO_STRIDE, CUDNN_TYPE_INT64, 1, &n, &stride) ||
        stride <= 0)
      continue;
    Knobs knobs = base;
    auto it = std::find_if(knobs.begin(), knobs.end(), [&](auto& k) { return k.first == type; });
    if (it == knobs.end()) it = knobs.insert(knobs.end(), {type, lo});
    const int64_t current = it->second;
    for (int64_t v = lo; v <= hi && out->size() < want && attempts < kMaxVariantAttempts;
         v += stride) {
      if (v == current) continue;
      ++attempts;
      it->second = v;
      cudnnBackendDescriptor_t c = variant(graph, index, knobs);
      cudnnBackendDescriptor_t plan = c != nullptr ? plan_for(c) : nullptr;
      if (plan != nullptr) out->push_back({c, plan});
      status_ = absl::OkStatus();
    }
  }
}

// An engine config of engine `index` on graph with the given knob choices, or nullptr.
cudnnBackendDescriptor_t GraphBuilder::variant(cudnnBackendDescriptor_t graph, int64_t index,
                                               const Knobs& knobs) {
  cudnnBackendDescriptor_t engine = make(CUDNN_BACKEND_ENGINE_DESCRIPTOR, "engine");
  set_desc(engine, CUDNN_ATTR_ENGINE_OPERATION_GRAPH, graph, "engine graph");
  set(engine, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &index, "engine index");
  finalize(engine, "engine finalize");
  std::vector<cudnnBackendDescriptor_t> choices;
  for (const auto& [type, value] : knobs) {
    cudnnBackendDescriptor_t k = make(CUDNN_BACKEND_KNOB_CHOICE_DESCRIPTOR, "knob choice");
    set(k, CUDNN_ATTR_KNOB_CHOICE_KNOB_TYPE, CUDNN_TYPE_KNOB_TYPE, 1, &type, "knob type");
    set(k, CUDNN_ATTR_KNOB_CHOICE_KNOB_VALUE, CUDNN_TYPE_INT64, 1, &value, "knob value");
    finalize(k, "knob choice finalize");
    choices.push_back(k);
  }
  cudnnBackendDescriptor_t cfg = make(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, "engine config");
  set_desc(cfg, CUDNN_ATTR_ENGINECFG_ENGINE, engine, "config engine");
  if (!choices.empty())
    set(cfg, CUDNN_ATTR_ENGINECFG_KNOB_CHOICES, CUDNN_TYPE_BACKEND_DESCRIPTOR,
        static_cast<int64_t>(choices.size()), choices.data(), "config knobs");
  finalize(cfg, "engine config finalize");
  return status_.ok() ? cfg : nullptr;
}

// False when the config's engine carries CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC.
bool GraphBuilder::is_deterministic(cudnnBackendDescriptor_t cfg) {
  cudnnBackendDescriptor_t engine = make(CUDNN_BACKEND_ENGINE_DESCRIPTOR, "engine");
  if (!status_.ok()) return false;
  int64_t n = 0;
  if (cudnnBackendGetAttribute(cfg, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                               &n, &engine) != CUDNN_STATUS_SUCCESS)
    return false;
  cudnnBackendNumericalNote_t notes[CUDNN_NUMERICAL_NOTE_TYPE_COUNT];
  if (cudnnBackendGetAttribute(engine, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                               CUDNN_NUMERICAL_NOTE_TYPE_COUNT, &n, notes) != CUDNN_STATUS_SUCCESS)
    return false;
  for (int64_t i = 0; i < n; ++i)
    if (notes[i] == CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC) return false;
  return true;
}

cudnnBackendDescriptor_t GraphBuilder::make(cudnnBackendDescriptorType_t type, const char* what) {
  if (!status_.ok()) return nullptr;
  cudnnBackendDescriptor_t d = nullptr;
  cudnnStatus_t st = cudnnBackendCreateDescriptor(type, &d);
  if (st != CUDNN_STATUS_SUCCESS) {
    status_ = absl::InternalError(cudnn_error(st, what));
    return nullptr;
  }
  descs_.emplace_back(d);
  return d;
}

void GraphBuilder::set(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name,
                       cudnnBackendAttributeType_t type, int64_t count, const void* value,
                       const char* what) {
  if (!status_.ok()) return;
  cudnnStatus_t st = cudnnBackendSetAttribute(d, name, type, count, value);
  if (st != CUDNN_STATUS_SUCCESS) status_ = absl::InvalidArgumentError(cudnn_error(st, what));
}

void GraphBuilder::set_desc(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name,
                            cudnnBackendDescriptor_t value, const char* what) {
  set(d, name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &value, what);
}

void GraphBuilder::finalize(cudnnBackendDescriptor_t d, const char* what) {
  if (!status_.ok()) return;
  cudnnStatus_t st = cudnnBackendFinalize(d);
  if (st != CUDNN_STATUS_SUCCESS) status_ = absl::InvalidArgumentError(cudnn_error(st, what));
}

void GraphBuilder::add_op(cudnnBackendDescriptor_t op, const char* what) {
  finalize(op, what);
  if (status_.ok()) ops_.push_back(op);
}

}  // namespace kiln::cuda::cudnn

#endif  // KILN_WITH_CUDNN
