// Backend-independent parts: timeouts, the single-process communicator, scalar all-reduce.
#include "parallel/communicator.h"

#include <cstdio>
#include <cstdlib>

#include "core/backend.h"
#include "core/check.h"

namespace kiln::parallel {
namespace {

double g_timeout_s = 300.0;

class DoneWork final : public Work {
 public:
  void wait() override {}
};

class SingleCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "single"; }
  std::unique_ptr<Work> all_reduce_async(const Tensor&, ReduceOp) override {
    return std::make_unique<DoneWork>();
  }
  std::unique_ptr<Work> reduce_scatter_async(const Tensor& in, const Tensor& out,
                                             ReduceOp) override {
    KILN_CHECK_EQ(in.numel(), out.numel());
    raw::copy(out.reshape(in.shape()).detach(), in);
    return std::make_unique<DoneWork>();
  }
  std::unique_ptr<Work> all_gather_async(const Tensor& in, const Tensor& out) override {
    KILN_CHECK_EQ(in.numel(), out.numel());
    raw::copy(out.reshape(in.shape()).detach(), in);
    return std::make_unique<DoneWork>();
  }
  void broadcast(const Tensor&, int) override {}
  void send(const Tensor&, int) override { KILN_CHECK(false) << "send in a 1-rank world"; }
  void recv(const Tensor&, int) override { KILN_CHECK(false) << "recv in a 1-rank world"; }
  void barrier() override {}
  std::unique_ptr<Communicator> split(int, int) override {
    return std::make_unique<SingleCommunicator>();
  }
};

}  // namespace

std::unique_ptr<Work> Communicator::send_async(const Tensor& t, int peer) {
  send(t, peer);
  return std::make_unique<DoneWork>();
}

void set_collective_timeout(double s) { g_timeout_s = s; }
double collective_timeout() { return g_timeout_s; }

void collective_timed_out(const std::string& what, int rank, int size) {
  std::fprintf(
      stderr,
      "kiln: rank %d of %d: %s did not complete within %.0f s (parallel.timeout_s): another "
      "rank died or hung. Exiting so the launcher stops the job.\n",
      rank, size, what.c_str(), g_timeout_s);
  std::fflush(stderr);
  std::_Exit(1);
}

double Communicator::all_reduce_scalar(double v, ReduceOp op) {
  Tensor t = Tensor::from_vector({v}, {1}, DType::kF64, device());
  all_reduce(t, op);
  return t.item();
}

std::unique_ptr<Communicator> make_single() { return std::make_unique<SingleCommunicator>(); }

}  // namespace kiln::parallel
