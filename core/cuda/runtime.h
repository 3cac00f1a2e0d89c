// CUDA runtime plumbing shared by every CUDA kernel in kiln: error checks, the per-device compute
// and communication streams, events, cuBLASLt handles and workspace, and the caching stream-ordered
// allocator (registered as the CUDA Allocator of core/allocator.h). Only compiled when nvcc is
// found (KILN_WITH_CUDA); include it from .cu/.cc files that are CUDA-only.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "core/backend.h"
#include "core/check.h"
#include "core/tensor.h"

#define KILN_CUDA_CHECK(expr)                                                                    \
  do {                                                                                           \
    cudaError_t kiln_err_ = (expr);                                                              \
    KILN_CHECK(kiln_err_ == cudaSuccess) << "CUDA error " << cudaGetErrorName(kiln_err_) << ": " \
                                         << cudaGetErrorString(kiln_err_) << " in " << #expr;    \
  } while (0)

#define KILN_CUBLAS_CHECK(expr)                                              \
  do {                                                                       \
    cublasStatus_t kiln_st_ = (expr);                                        \
    KILN_CHECK(kiln_st_ == CUBLAS_STATUS_SUCCESS)                            \
        << "cuBLAS error " << static_cast<int>(kiln_st_) << " in " << #expr; \
  } while (0)

// Checks the last kernel launch (launch-configuration errors; asynchronous faults surface later).
#define KILN_CUDA_CHECK_LAUNCH() KILN_CUDA_CHECK(cudaGetLastError())

namespace kiln::cuda {

// Fills *b (core/backend.h) and registers the CUDA allocator when a GPU is present; leaves them
// empty otherwise. Called once, from cuda_backend() on first use.
void register_backend(CudaBackend* b);

int device_count();
int current_device();
void set_device(int index);

// The stream all compute kernels of the current device run on, and the stream collectives use.
cudaStream_t compute_stream();
cudaStream_t comm_stream();
void synchronize();  // waits for the compute and communication streams of the current device

// A cuBLASLt handle and a workspace (32 MiB) for the current device.
cublasLtHandle_t lt_handle();
void* lt_workspace();
size_t lt_workspace_size();
// cuBLAS / cuBLASLt's type for t (f32, f64, bf16, f16, fp8); an error naming op for any other.
cudaDataType_t cuda_data_type(DType t, const char* op);

// Launch geometry helper: blocks of `threads` covering n elements (capped for grid-stride loops).
inline unsigned int blocks_for(int64_t n, int threads = 256) {
  int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned int>(b < 1 ? 1 : (b > 65535 * 8 ? 65535 * 8 : b));
}

// Deterministic mode: kernels with a faster non-deterministic variant (atomics) use the
// deterministic one. Set from TrainConfig.training.deterministic.
void set_deterministic(bool d);
bool deterministic();

// ---- additions beyond the first interface (nothing above changes) ----

// The compute / communication stream of a given device (created on first use).
cudaStream_t compute_stream(int device);
cudaStream_t comm_stream(int device);
// The device a tensor lives on. REQUIRES: t is a CUDA tensor.
inline int device_of(const Tensor& t) { return t.device().index; }

// Makes `device` current for the guard's lifetime (no-op when it already is).
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = -1;
};

// fp32 GEMMs may use TF32 tensor cores (CUBLAS_COMPUTE_32F_FAST_TF32) when allowed. Off by default.
void set_allow_tf32(bool allow);
bool allow_tf32();

// Compute capability of the current device as major * 10 + minor (90 for H100).
int compute_capability();
int sm_count();

// Makes `stream` wait for all work enqueued so far on the compute stream (and the reverse):
// the hand-off between compute and communication.
void stream_wait_compute(cudaStream_t stream);
void compute_wait_stream(cudaStream_t stream);

// A third stream per device (non-blocking, created on first use) for work that overlaps the
// compute stream's: the optimizer step of KILN_OVERLAP_OPTIM (core/nn/precast.h). synchronize()
// does not wait for it; whoever puts work there orders it with events.
cudaStream_t side_stream(int device);
// Tests: one kernel on `stream` that spins for `microseconds` (delay.cu), so that work queued
// behind it lands late and a missing event wait shows up as wrong values.
void delay_stream(cudaStream_t stream, int64_t microseconds);

}  // namespace kiln::cuda
