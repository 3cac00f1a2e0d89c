// The second pass of kiln's deterministic column sums (dgelu_bgrad in core/ops/matmul.cu, the
// fused bias gradient of fp8's transposing cast in core/ops/fp8.cu): the first kernel leaves one
// f32 partial per (chunk of rows, column); this one adds a column's partials in chunk order and
// rounds once to the storage type. Include from .cu files only.
#pragma once

#include <cstdint>

#include "core/cuda/dtype.cuh"

namespace kiln::cuda {

// out[col] = sum over chunks (in order) of partial[chunk][col]. One thread per column.
template <typename S>
__global__ void sum_chunks_kernel(const float* __restrict__ partial, S* __restrict__ out,
                                  int64_t chunks, int64_t hid) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= hid) return;
  float s = 0;
  for (int64_t k = 0; k < chunks; ++k) s += partial[k * hid + col];
  Elem<S>::store(out, col, s);
}

}  // namespace kiln::cuda
