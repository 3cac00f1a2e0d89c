// Strided iteration for CUDA kernels: N operands of one shape with their own element strides
// (0 = broadcast), dims coalesced on the host so the common cases collapse to one or two dims,
// and the linear-index -> per-operand offsets map on the device (32-bit math when it fits).
// Include from .cu files only.
#pragma once

#include <array>
#include <cstdint>

#include "core/check.h"
#include "core/tensor.h"

namespace kiln::cuda {

constexpr int kMaxDims = 10;

template <int N>
struct StridedIter {
  int ndim = 0;
  int64_t size[kMaxDims] = {};
  int64_t stride[N][kMaxDims] = {};

  // Element offsets of linear (row-major) index `lin` for each operand.
  template <typename I>
  __device__ __forceinline__ void offsets(I lin, I (&off)[N]) const {
#pragma unroll
    for (int k = 0; k < N; ++k) off[k] = 0;
    for (int d = ndim - 1; d >= 0; --d) {
      const I sz = static_cast<I>(size[d]);
      const I i = lin % sz;
      lin /= sz;
#pragma unroll
      for (int k = 0; k < N; ++k) off[k] += i * static_cast<I>(stride[k][d]);
    }
  }
};

// Builds the iterator for `shape` and the operands' strides (each the length of shape), dropping
// size-1 dims and merging dims that are contiguous with each other in every operand.
template <int N>
StridedIter<N> make_strided_iter(const Shape& shape, const std::array<Shape, N>& strides) {
  StridedIter<N> it;
  // Walk from the innermost dim outwards, building coalesced dims in reverse.
  int64_t sz[64];
  int64_t st[N][64];
  int nd = 0;
  for (int64_t d = static_cast<int64_t>(shape.size()) - 1; d >= 0; --d) {
    if (shape[d] == 1) continue;
    bool merge = nd > 0;
    for (int k = 0; k < N && merge; ++k) merge = strides[k][d] == st[k][nd - 1] * sz[nd - 1];
    if (merge) {
      sz[nd - 1] *= shape[d];
      continue;
    }
    KILN_CHECK(nd < 64) << "internal: too many dims";
    sz[nd] = shape[d];
    for (int k = 0; k < N; ++k) st[k][nd] = strides[k][d];
    ++nd;
  }
  KILN_CHECK(nd <= kMaxDims) << "CUDA kernels support at most " << kMaxDims
                             << " non-mergeable dims, got " << nd << " for shape "
                             << shape_str(shape);
  it.ndim = nd;
  for (int i = 0; i < nd; ++i) {  // store outermost first
    it.size[i] = sz[nd - 1 - i];
    for (int k = 0; k < N; ++k) it.stride[k][i] = st[k][nd - 1 - i];
  }
  return it;
}

// Whether every offset of every operand (and the element count) fits 32-bit index math.
template <int N>
bool fits_int32(const StridedIter<N>& it, int64_t numel) {
  if (numel >= (int64_t{1} << 31)) return false;
  for (int k = 0; k < N; ++k) {
    int64_t m = 0;
    for (int d = 0; d < it.ndim; ++d) {
      const int64_t s = it.stride[k][d];
      if (s < 0) return false;
      m += (it.size[d] - 1) * s;
    }
    if (m >= (int64_t{1} << 31)) return false;
  }
  return true;
}

// Strides of t seen at out_shape under broadcasting (0 where t has size 1 or lacks the dim).
inline Shape broadcast_strides(const Tensor& t, const Shape& out_shape) {
  const int64_t nd = static_cast<int64_t>(out_shape.size()), off = nd - t.dim();
  Shape s(nd, 0);
  for (int64_t i = 0; i < t.dim(); ++i) s[off + i] = t.size(i) == 1 ? 0 : t.strides()[i];
  return s;
}

}  // namespace kiln::cuda
