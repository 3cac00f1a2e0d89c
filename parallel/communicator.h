// Collective communication over a group of ranks: all_reduce, reduce_scatter, all_gather,
// broadcast, send/recv and barrier, synchronous and asynchronous (Work::wait), with
// sub-communicators per parallel dimension (split). Backends: MPI for CPU tensors (how every
// distributed test runs on a machine without GPUs), NCCL for GPU tensors, and a single-process one.
// Every wait is bounded by a timeout: a rank that died or hung makes the others exit with a clear
// message instead of hanging.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "core/tensor.h"

namespace kiln::parallel {

enum class ReduceOp { kSum, kAvg, kMax };

// An in-flight collective. wait() blocks until it is done (or the timeout ends the process).
class Work {
 public:
  virtual ~Work() = default;
  virtual void wait() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend() const = 0;
  // Where this communicator's tensors live (CPU for MPI and single, the GPU for NCCL).
  virtual Device device() const { return Device::cpu(); }

  // In place on a contiguous tensor.
  virtual std::unique_ptr<Work> all_reduce_async(const Tensor& t, ReduceOp op) = 0;
  // in: (size * n) elements, out: n elements; rank r receives the reduced r-th chunk.
  virtual std::unique_ptr<Work> reduce_scatter_async(const Tensor& in, const Tensor& out,
                                                     ReduceOp op) = 0;
  // in: n elements, out: size * n elements, rank r's in lands in chunk r.
  virtual std::unique_ptr<Work> all_gather_async(const Tensor& in, const Tensor& out) = 0;
  virtual void broadcast(const Tensor& t, int root) = 0;
  virtual void send(const Tensor& t, int peer) = 0;
  // Starts sending `t` to `peer` (pipeline stages: a send never waits for its receive, so the
  // sender goes on computing); wait() returns once `t` may be reused. The default sends at once.
  virtual std::unique_ptr<Work> send_async(const Tensor& t, int peer);
  virtual void recv(const Tensor& t, int peer) = 0;
  virtual void barrier() = 0;
  // Ranks with the same color form a new communicator, ordered by key.
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;

  void all_reduce(const Tensor& t, ReduceOp op = ReduceOp::kSum) {
    all_reduce_async(t, op)->wait();
  }
  void reduce_scatter(const Tensor& in, const Tensor& out, ReduceOp op = ReduceOp::kSum) {
    reduce_scatter_async(in, out, op)->wait();
  }
  void all_gather(const Tensor& in, const Tensor& out) { all_gather_async(in, out)->wait(); }
  // Convenience: all-reduce of one double (losses, norms, flags).
  double all_reduce_scalar(double v, ReduceOp op = ReduceOp::kSum);
};

// Seconds any collective may wait before the process exits with an error (default 300).
void set_collective_timeout(double seconds);
double collective_timeout();
// Called when a wait times out: prints which collective on which rank and exits(1), so the
// launcher (mpirun / srun) tears the job down. Tests may replace it.
[[noreturn]] void collective_timed_out(const std::string& what, int rank, int size);

// The world communicator for CPU tensors: MPI when launched under mpirun/srun with MPI built in,
// else a single-process one. Initialises MPI on first use.
std::unique_ptr<Communicator> make_cpu_world();
std::unique_ptr<Communicator> make_single();
// NCCL over the given CPU (MPI) world, one GPU per local rank; the unique id travels through
// `bootstrap`. Errors when kiln was built without CUDA.
absl::StatusOr<std::unique_ptr<Communicator>> make_nccl(Communicator& bootstrap, int device);

}  // namespace kiln::parallel
