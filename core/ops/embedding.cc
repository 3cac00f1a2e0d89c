// embedding: id checks, forward gather, backward scatter-add, their CPU kernels and the dispatch
// to the CUDA kernels (core/ops/embedding.cu).
#include "core/ops/embedding.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/check.h"
#include "core/cpu/elem.h"
#include "core/env_switch.h"
#include "core/ops/device_dispatch.h"
#include "core/ops/op_util.h"
#include "core/thread_pool.h"

#if KILN_WITH_CUDA
namespace kiln::cuda {
// core/ops/embedding.cu. Both check every id (one device sync) and throw this op's error.
Tensor embedding_forward(const Tensor& weight, const Tensor& ids);
Tensor embedding_backward(const Tensor& g, const Tensor& ids, const Shape& w_shape, DType w_dtype);
void embedding_backward_into(const Tensor& g, const Tensor& ids, const Tensor& into,
                             bool overwrite);
}  // namespace kiln::cuda
#endif

namespace kiln {
namespace {

// KILN_EMB_DIRECT_GRAD (default on; 0 turns it off): see EmbeddingNode.
EnvSwitch g_direct("KILN_EMB_DIRECT_GRAD", /*default_on=*/true);

constexpr const char* kOp = "embedding";

bool is_id_dtype(DType t) { return t == DType::kI32 || t == DType::kI64 || t == DType::kU16; }

// The ids of a CPU tensor as int64, row-major. Throws on the first id outside [0, v).
std::vector<int64_t> read_ids(const Tensor& ids, int64_t v) {
  Tensor c = raw::contiguous(ids);
  const int64_t n = c.numel();
  std::vector<int64_t> out(n);
  switch (c.dtype()) {
    case DType::kI32:
      std::copy(c.data<int32_t>(), c.data<int32_t>() + n, out.begin());
      break;
    case DType::kI64:
      std::copy(c.data<int64_t>(), c.data<int64_t>() + n, out.begin());
      break;
    default:
      std::copy(c.data<uint16_t>(), c.data<uint16_t>() + n, out.begin());
      break;
  }
  for (int64_t i = 0; i < n; ++i) {
    KILN_CHECK(out[i] >= 0 && out[i] < v)
        << kOp << ": id " << out[i] << " at flat position " << i << " of ids " << ids.str()
        << " is out of range [0, V = " << v << ")";
  }
  return out;
}

// out (..., C): row p is weight row ids[p], copied in weight's own dtype.
Tensor embedding_cpu(const Tensor& weight, const Tensor& ids) {
  const int64_t v = weight.size(0), c = weight.size(1);
  std::vector<int64_t> id = read_ids(ids, v);
  Tensor w = raw::contiguous(weight);
  Shape out_shape = ids.shape();
  out_shape.push_back(c);
  Tensor out = Tensor::empty(out_shape, weight.dtype());
  const size_t row_bytes = static_cast<size_t>(c) * dtype_size(weight.dtype());
  const char* src = static_cast<const char*>(w.raw());
  char* dst = static_cast<char*>(out.raw());
  parallel_for(static_cast<int64_t>(id.size()), std::max<int64_t>(1, (1 << 16) / (row_bytes + 1)),
               [&](int64_t p0, int64_t p1) {
                 for (int64_t p = p0; p < p1; ++p)
                   std::memcpy(dst + p * row_bytes, src + id[p] * row_bytes, row_bytes);
               });
  return out;
}

// dW (V, C) = sum over positions p of e_{ids[p]} g[p]^T, positions added in order. Threads own
// disjoint channel ranges, so no two write the same element and the order never changes.
Tensor embedding_backward_cpu(const Tensor& g, const Tensor& ids, const Shape& w_shape,
                              DType w_dtype) {
  const int64_t v = w_shape[0], c = w_shape[1];
  std::vector<int64_t> id = read_ids(ids, v);
  Tensor gc = raw::to_compute(g);
  Tensor dw = Tensor::zeros(w_shape, gc.dtype());
  const int64_t n = static_cast<int64_t>(id.size());
  KILN_DISPATCH_FLOAT(gc.dtype(), T, {
    const T* pg = gc.data<T>();
    T* pd = dw.data<T>();
    parallel_for(c, 64, [&](int64_t c0, int64_t c1) {
      for (int64_t p = 0; p < n; ++p) {
        const T* gr = pg + p * c;
        T* dr = pd + id[p] * c;
        for (int64_t j = c0; j < c1; ++j) dr[j] += gr[j];
      }
    });
  });
  return raw::convert(dw, w_dtype);
}

class EmbeddingNode final : public Node {
 public:
  const char* name() const override { return "Embedding"; }
  Shape w_shape;
  DType w_dtype = DType::kF32;
  // saved: ids. next: weight.
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
#if KILN_WITH_CUDA
    if (saved[0].device().is_cuda()) {
      // The weight's f32 .grad (through the cast of an f32 parameter), when it offers itself
      // (autograd's accumulation_target): the row sums go straight into it, without a dense
      // 16-bit gradient converted and added afterwards (KILN_EMB_DIRECT_GRAD=0: never).
      bool overwrite = false;
      const Tensor into = g_direct.on() && next[0].fn
                              ? accumulation_target(next[0], w_shape, g[0].device(), &overwrite)
                              : Tensor();
      if (into.defined()) {
        cuda::embedding_backward_into(g[0], saved[0], into, overwrite);
        return {accumulated_marker()};
      }
      return {cuda::embedding_backward(g[0], saved[0], w_shape, w_dtype)};
    }
#endif
    return {embedding_backward_cpu(g[0], saved[0], w_shape, w_dtype)};
  }
};

void check_args(const Tensor& weight, const Tensor& ids) {
  ops::check_float_arg(kOp, "weight", weight);
  check_dim(kOp, "weight (V, C)", weight, 2);
  KILN_CHECK(ids.defined()) << kOp << ": ids is an undefined tensor";
  KILN_CHECK(is_id_dtype(ids.dtype()))
      << kOp << ": ids must be an integer tensor (i32, i64 or u16), got " << ids.str();
  KILN_CHECK(ids.device() == weight.device())
      << kOp << ": device mismatch, ids is " << ids.str() << " but weight is " << weight.str();
}

}  // namespace

Tensor embedding(const Tensor& weight, const Tensor& ids) {
  check_args(weight, ids);
  Tensor out;
  if (ops::on_cuda(kOp, "weight", weight)) {
#if KILN_WITH_CUDA
    out = cuda::embedding_forward(weight, ids);
#endif
  } else {
    out = embedding_cpu(weight, ids);
  }
  if (auto n = record<EmbeddingNode>({&weight})) {
    n->w_shape = weight.shape();
    n->w_dtype = weight.dtype();
    n->saved = {ids};
    set_history(out, n);
  }
  return out;
}

}  // namespace kiln
