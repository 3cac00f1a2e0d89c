// delay_stream (core/cuda/runtime.h): one thread spinning on the global timer, for the tests that
// make a side stream's work land late on purpose.
#include "core/cuda/runtime.h"

namespace kiln::cuda {
namespace {

__device__ __forceinline__ uint64_t global_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__global__ void delay_kernel(uint64_t ns) {
  const uint64_t start = global_ns();
  while (global_ns() - start < ns) __nanosleep(1000);
}

}  // namespace

void delay_stream(cudaStream_t stream, int64_t microseconds) {
  if (microseconds <= 0) return;
  delay_kernel<<<1, 1, 0, stream>>>(static_cast<uint64_t>(microseconds) * 1000);
  KILN_CUDA_CHECK_LAUNCH();
}

}  // namespace kiln::cuda
