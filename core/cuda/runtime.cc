// CUDA runtime plumbing: device selection, per-device compute/communication streams, cuBLASLt
// handles and workspaces, flags, and register_backend, which plugs copy/fill/sync and the caching
// allocator into core/backend.h when a GPU is visible.
#include "core/cuda/runtime.h"

#include <atomic>
#include <memory>
#include <mutex>
#include <vector>

#include "core/cuda/allocator.h"
#include "core/cuda/copy.h"
#include "core/env_switch.h"

namespace kiln::cuda {
namespace {

constexpr size_t kLtWorkspaceBytes = size_t{32} << 20;

struct DeviceState {
  std::once_flag once, side_once;
  cudaStream_t compute = nullptr;
  cudaStream_t comm = nullptr;
  cudaStream_t side = nullptr;  // side_stream(), created on first use
  cublasLtHandle_t lt = nullptr;
  void* workspace = nullptr;
  int cc = 0;   // compute capability, major * 10 + minor
  int sms = 0;  // multiprocessor count
};

std::atomic<bool> g_deterministic{false};
std::atomic<bool> g_allow_tf32{false};

int count_devices() {
  static const int n = [] {
    int c = 0;
    if (cudaGetDeviceCount(&c) != cudaSuccess) {
      (void)cudaGetLastError();  // no driver or no device: CUDA is simply absent
      return 0;
    }
    return c;
  }();
  return n;
}

DeviceState& state(int device) {
  static std::vector<std::unique_ptr<DeviceState>>* all = [] {
    auto* v = new std::vector<std::unique_ptr<DeviceState>>();  // never destroyed
    for (int i = 0; i < std::max(count_devices(), 1); ++i)
      v->push_back(std::make_unique<DeviceState>());
    return v;
  }();
  KILN_CHECK(device >= 0 && device < count_devices())
      << "CUDA device " << device << " does not exist (" << count_devices() << " visible)";
  DeviceState& s = *(*all)[device];
  std::call_once(s.once, [&] {
    DeviceGuard g(device);
    // KILN_COMPUTE_PRIORITY=1 (opt-in, not yet measured): the compute stream at the device's
    // greatest priority, so the block scheduler serves its kernels ahead of the side stream's
    // (KILN_OVERLAP_OPTIM's AdamW) and the comm stream's when both have blocks waiting.
    int least = 0, greatest = 0;
    KILN_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    const bool high = EnvSwitch::env_flag("KILN_COMPUTE_PRIORITY", false);
    KILN_CUDA_CHECK(
        cudaStreamCreateWithPriority(&s.compute, cudaStreamNonBlocking, high ? greatest : least));
    KILN_CUDA_CHECK(cudaStreamCreateWithFlags(&s.comm, cudaStreamNonBlocking));
    KILN_CUBLAS_CHECK(cublasLtCreate(&s.lt));
    KILN_CUDA_CHECK(cudaMalloc(&s.workspace, kLtWorkspaceBytes));
    cudaDeviceProp prop;
    KILN_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    s.cc = prop.major * 10 + prop.minor;
    s.sms = prop.multiProcessorCount;
  });
  return s;
}

void backend_synchronize() { synchronize(); }

}  // namespace

void register_backend(CudaBackend* b) {
  if (count_devices() <= 0) return;
  register_cuda_allocator(caching_allocator());
  b->copy = &copy_tensor;
  b->fill = &fill_tensor;
  b->device_count = &device_count;
  b->synchronize = &backend_synchronize;
}

int device_count() { return count_devices(); }

// Declared in launch/trainer_log.cc (the MFU peak table matches it).
std::string device_name(int index) {
  cudaDeviceProp prop;
  KILN_CUDA_CHECK(cudaGetDeviceProperties(&prop, index));
  return prop.name;
}

int current_device() {
  int d = 0;
  KILN_CUDA_CHECK(cudaGetDevice(&d));
  return d;
}

void set_device(int index) {
  KILN_CHECK(index >= 0 && index < count_devices())
      << "set_device: CUDA device " << index << " does not exist (" << count_devices()
      << " visible)";
  KILN_CUDA_CHECK(cudaSetDevice(index));
}

DeviceGuard::DeviceGuard(int device) {
  int cur = 0;
  KILN_CUDA_CHECK(cudaGetDevice(&cur));
  if (cur != device) {
    KILN_CUDA_CHECK(cudaSetDevice(device));
    prev_ = cur;
  }
}

DeviceGuard::~DeviceGuard() {
  if (prev_ >= 0) (void)cudaSetDevice(prev_);
}

cudaStream_t compute_stream(int device) { return state(device).compute; }
cudaStream_t comm_stream(int device) { return state(device).comm; }
cudaStream_t compute_stream() { return compute_stream(current_device()); }

cudaStream_t side_stream(int device) {
  DeviceState& s = state(device);
  std::call_once(s.side_once, [&] {
    DeviceGuard g(device);
    // KILN_SIDE_PRIORITY=1: the side stream at the device's greatest priority, so the block
    // scheduler serves KILN_OVERLAP_OPTIM's AdamW (which the next forward waits for, group by
    // group) ahead of the compute stream's blocks when both have blocks waiting.
    int least = 0, greatest = 0;
    KILN_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    const bool high = EnvSwitch::env_flag("KILN_SIDE_PRIORITY", false);
    KILN_CUDA_CHECK(
        cudaStreamCreateWithPriority(&s.side, cudaStreamNonBlocking, high ? greatest : least));
  });
  return s.side;
}
cudaStream_t comm_stream() { return comm_stream(current_device()); }

void synchronize() {
  DeviceState& s = state(current_device());
  KILN_CUDA_CHECK(cudaStreamSynchronize(s.compute));
  KILN_CUDA_CHECK(cudaStreamSynchronize(s.comm));
}

cublasLtHandle_t lt_handle() { return state(current_device()).lt; }
void* lt_workspace() { return state(current_device()).workspace; }
size_t lt_workspace_size() { return kLtWorkspaceBytes; }

void set_deterministic(bool d) { g_deterministic.store(d); }
bool deterministic() { return g_deterministic.load(); }

void set_allow_tf32(bool allow) { g_allow_tf32.store(allow); }
bool allow_tf32() { return g_allow_tf32.load(); }

int compute_capability() { return state(current_device()).cc; }
int sm_count() { return state(current_device()).sms; }

namespace {
// One reusable event per (thread, device) for stream hand-offs.
cudaEvent_t handoff_event() {
  thread_local std::vector<cudaEvent_t> events;
  const int d = current_device();
  if (d >= static_cast<int>(events.size())) events.resize(d + 1, nullptr);
  if (events[d] == nullptr)
    KILN_CUDA_CHECK(cudaEventCreateWithFlags(&events[d], cudaEventDisableTiming));
  return events[d];
}
}  // namespace

void stream_wait_compute(cudaStream_t stream) {
  cudaEvent_t e = handoff_event();
  KILN_CUDA_CHECK(cudaEventRecord(e, compute_stream()));
  KILN_CUDA_CHECK(cudaStreamWaitEvent(stream, e, 0));
}

void compute_wait_stream(cudaStream_t stream) {
  cudaEvent_t e = handoff_event();
  KILN_CUDA_CHECK(cudaEventRecord(e, stream));
  KILN_CUDA_CHECK(cudaStreamWaitEvent(compute_stream(), e, 0));
}

}  // namespace kiln::cuda
