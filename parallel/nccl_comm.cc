// NCCL communicator for GPU tensors. Collectives run on the device's communication stream after it
// waits for the compute stream; Work::wait() makes the compute stream wait for the collective (no
// host block). A watchdog thread polls every outstanding collective's completion event and, past
// the timeout, aborts the NCCL communicator and exits with a clear message, so a dead or hung peer
// never hangs the job. The unique id travels through a bootstrap (MPI) communicator.
#include <nccl.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "core/backend.h"
#include "core/check.h"
#include "core/cuda/runtime.h"
#include "parallel/communicator.h"

namespace kiln::parallel {
namespace {

#define KILN_NCCL_CHECK(expr)                                               \
  do {                                                                      \
    ncclResult_t kiln_r_ = (expr);                                          \
    KILN_CHECK(kiln_r_ == ncclSuccess)                                      \
        << "NCCL error " << ncclGetErrorString(kiln_r_) << " in " << #expr; \
  } while (0)

ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::kF32:
      return ncclFloat32;
    case DType::kF64:
      return ncclFloat64;
    case DType::kBF16:
      return ncclBfloat16;
    case DType::kF16:
      return ncclFloat16;
    case DType::kI32:
      return ncclInt32;
    case DType::kI64:
      return ncclInt64;
    case DType::kF8E4M3:
      return ncclUint8;
    case DType::kF8E5M2:
      return ncclUint8;
    case DType::kU16:
      return ncclFloat16;  // raw 16-bit payload: broadcast / gather only
  }
  return ncclUint8;
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return ncclSum;
    case ReduceOp::kAvg:
      return ncclAvg;
    case ReduceOp::kMax:
      return ncclMax;
  }
  return ncclSum;
}

struct Pending {
  cudaEvent_t done;
  std::chrono::steady_clock::time_point start;
  std::string what;
};

class NcclCommunicator;

class NcclWork final : public Work {
 public:
  explicit NcclWork(cudaEvent_t ev) : ev_(ev) {}
  void wait() override { KILN_CUDA_CHECK(cudaStreamWaitEvent(cuda::compute_stream(), ev_, 0)); }

 private:
  cudaEvent_t ev_;
};

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, int rank, int size, int device)
      : comm_(comm), rank_(rank), size_(size), device_(device) {
    watchdog_ = std::thread([this] { watch(); });
  }
  ~NcclCommunicator() override {
    stop_ = true;
    watchdog_.join();
    cudaStreamSynchronize(cuda::comm_stream());
    ncclCommDestroy(comm_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "nccl"; }
  Device device() const override { return Device::cuda(device_); }

  std::unique_ptr<Work> all_reduce_async(const Tensor& t, ReduceOp op) override {
    check(t, "all_reduce");
    begin();
    KILN_NCCL_CHECK(ncclAllReduce(t.raw(), t.raw(), t.numel(), nccl_type(t.dtype()), nccl_op(op),
                                  comm_, cuda::comm_stream()));
    return end("all_reduce");
  }
  std::unique_ptr<Work> reduce_scatter_async(const Tensor& in, const Tensor& out,
                                             ReduceOp op) override {
    check(in, "reduce_scatter");
    check(out, "reduce_scatter");
    KILN_CHECK_EQ(in.numel(), out.numel() * size_);
    begin();
    KILN_NCCL_CHECK(ncclReduceScatter(in.raw(), out.raw(), out.numel(), nccl_type(in.dtype()),
                                      nccl_op(op), comm_, cuda::comm_stream()));
    return end("reduce_scatter");
  }
  std::unique_ptr<Work> all_gather_async(const Tensor& in, const Tensor& out) override {
    check(in, "all_gather");
    check(out, "all_gather");
    KILN_CHECK_EQ(in.numel() * size_, out.numel());
    begin();
    KILN_NCCL_CHECK(ncclAllGather(in.raw(), out.raw(), in.numel(), nccl_type(in.dtype()), comm_,
                                  cuda::comm_stream()));
    return end("all_gather");
  }
  void broadcast(const Tensor& t, int root) override {
    check(t, "broadcast");
    begin();
    KILN_NCCL_CHECK(ncclBroadcast(t.raw(), t.raw(), t.numel(), nccl_type(t.dtype()), root, comm_,
                                  cuda::comm_stream()));
    end("broadcast")->wait();
  }
  void send(const Tensor& t, int peer) override {
    check(t, "send");
    begin();
    KILN_NCCL_CHECK(
        ncclSend(t.raw(), t.numel(), nccl_type(t.dtype()), peer, comm_, cuda::comm_stream()));
    end("send")->wait();
  }
  void recv(const Tensor& t, int peer) override {
    check(t, "recv");
    begin();
    KILN_NCCL_CHECK(
        ncclRecv(t.raw(), t.numel(), nccl_type(t.dtype()), peer, comm_, cuda::comm_stream()));
    end("recv")->wait();
  }
  void barrier() override {
    Tensor one = Tensor::full({1}, 1.0, DType::kF32, Device::cuda(device_));
    all_reduce(one);
    cuda::synchronize();
  }
  std::unique_ptr<Communicator> split(int color, int key) override {
    ncclComm_t sub;
    KILN_NCCL_CHECK(ncclCommSplit(comm_, color, key, &sub, nullptr));
    int r = 0, n = 1;
    KILN_NCCL_CHECK(ncclCommUserRank(sub, &r));
    KILN_NCCL_CHECK(ncclCommCount(sub, &n));
    return std::make_unique<NcclCommunicator>(sub, r, n, device_);
  }

 private:
  void check(const Tensor& t, const char* op) {
    KILN_CHECK(t.device().is_cuda())
        << "NCCL " << op << ": tensor " << t.str() << " must be on a GPU";
    KILN_CHECK(t.is_contiguous()) << "NCCL " << op << ": tensor " << t.str()
                                  << " must be contiguous";
  }
  // The communication stream waits for everything queued on the compute stream so far.
  void begin() {
    cudaEvent_t ev = event();
    KILN_CUDA_CHECK(cudaEventRecord(ev, cuda::compute_stream()));
    KILN_CUDA_CHECK(cudaStreamWaitEvent(cuda::comm_stream(), ev, 0));
  }
  std::unique_ptr<Work> end(const char* what) {
    cudaEvent_t ev = event();
    KILN_CUDA_CHECK(cudaEventRecord(ev, cuda::comm_stream()));
    {
      std::lock_guard<std::mutex> lock(mu_);
      pending_.push_back({ev, std::chrono::steady_clock::now(), what});
    }
    return std::make_unique<NcclWork>(ev);
  }
  // Events are recycled from a ring large enough that none is reused while still pending.
  cudaEvent_t event() {
    std::lock_guard<std::mutex> lock(mu_);
    if (events_.size() < 4096) {
      cudaEvent_t e;
      KILN_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
      events_.push_back(e);
      return e;
    }
    cudaEvent_t e = events_[next_event_++ % events_.size()];
    return e;
  }
  void watch() {
    cudaSetDevice(device_);
    while (!stop_) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      std::lock_guard<std::mutex> lock(mu_);
      while (!pending_.empty()) {
        Pending& p = pending_.front();
        cudaError_t q = cudaEventQuery(p.done);
        if (q == cudaSuccess) {
          pending_.pop_front();
          continue;
        }
        if (q != cudaErrorNotReady) {
          std::fprintf(stderr, "kiln: rank %d: CUDA error while waiting for NCCL %s: %s\n", rank_,
                       p.what.c_str(), cudaGetErrorString(q));
          ncclCommAbort(comm_);
          std::_Exit(1);
        }
        const double waited =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - p.start).count();
        if (waited > collective_timeout()) {
          ncclCommAbort(comm_);
          collective_timed_out(absl::StrCat("NCCL ", p.what), rank_, size_);
        }
        break;
      }
    }
  }

  ncclComm_t comm_;
  int rank_, size_, device_;
  std::mutex mu_;
  std::deque<Pending> pending_;
  std::vector<cudaEvent_t> events_;
  size_t next_event_ = 0;
  std::atomic<bool> stop_{false};
  std::thread watchdog_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> make_nccl(Communicator& bootstrap, int device) {
  cuda::set_device(device);
  ncclUniqueId id;
  std::memset(&id, 0, sizeof(id));
  if (bootstrap.rank() == 0) KILN_NCCL_CHECK(ncclGetUniqueId(&id));
  static_assert(sizeof(ncclUniqueId) % 4 == 0);
  Tensor buf = Tensor::empty({static_cast<int64_t>(sizeof(id) / 4)}, DType::kI32);
  std::memcpy(buf.raw(), &id, sizeof(id));
  bootstrap.broadcast(buf, 0);
  std::memcpy(&id, buf.raw(), sizeof(id));
  ncclComm_t comm;
  ncclResult_t r = ncclCommInitRank(&comm, bootstrap.size(), id, bootstrap.rank());
  if (r != ncclSuccess)
    return absl::UnavailableError(
        absl::StrCat("NCCL init failed on rank ", bootstrap.rank(), ": ", ncclGetErrorString(r)));
  return std::unique_ptr<Communicator>(
      std::make_unique<NcclCommunicator>(comm, bootstrap.rank(), bootstrap.size(), device));
}

}  // namespace kiln::parallel
