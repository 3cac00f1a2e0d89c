// MPI communicator for CPU tensors. Collectives are issued non-blocking and waited on with a
// deadline (MPI_Test polling), so a dead or hung peer ends this rank with a clear message instead
// of a hang. 16-bit float tensors travel as f32 (reduced in f32) and are rounded back.
#include <mpi.h>

#include <chrono>
#include <cstdlib>
#include <thread>

#include "core/backend.h"
#include "core/check.h"
#include "parallel/communicator.h"

namespace kiln::parallel {
namespace {

#define KILN_MPI_CHECK(expr)                                                          \
  do {                                                                                \
    int kiln_rc_ = (expr);                                                            \
    if (kiln_rc_ != MPI_SUCCESS) {                                                    \
      char msg[MPI_MAX_ERROR_STRING];                                                 \
      int len = 0;                                                                    \
      MPI_Error_string(kiln_rc_, msg, &len);                                          \
      KILN_CHECK(false) << "MPI error in " << #expr << ": " << std::string(msg, len); \
    }                                                                                 \
  } while (0)

void ensure_mpi() {
  int init = 0;
  MPI_Initialized(&init);
  if (init) return;
  int provided = 0;
  KILN_MPI_CHECK(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided));
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  std::atexit([] {
    int fin = 0;
    MPI_Finalized(&fin);
    if (!fin) MPI_Finalize();
  });
}

MPI_Datatype mpi_type(DType t) {
  switch (t) {
    case DType::kF32:
      return MPI_FLOAT;
    case DType::kF64:
      return MPI_DOUBLE;
    case DType::kI32:
      return MPI_INT32_T;
    case DType::kI64:
      return MPI_INT64_T;
    case DType::kU16:
      return MPI_UINT16_T;
    default:
      KILN_CHECK(false) << "MPI: no MPI type for " << t;
  }
  return MPI_BYTE;
}

MPI_Op mpi_op(ReduceOp op) { return op == ReduceOp::kMax ? MPI_MAX : MPI_SUM; }

bool needs_staging(DType t) { return t == DType::kBF16 || t == DType::kF16; }

// Waits for `req` with the collective timeout; `finish` runs once it completes.
class MpiWork final : public Work {
 public:
  MpiWork(MPI_Request req, std::string what, int rank, int size, std::function<void()> finish)
      : req_(req), what_(std::move(what)), rank_(rank), size_(size), finish_(std::move(finish)) {}
  ~MpiWork() override {
    if (!done_) wait();
  }
  void wait() override {
    if (done_) return;
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::duration<double>(collective_timeout());
    int flag = 0;
    for (int spins = 0;; ++spins) {
      KILN_MPI_CHECK(MPI_Test(&req_, &flag, MPI_STATUS_IGNORE));
      if (flag) break;
      if (std::chrono::steady_clock::now() > deadline) collective_timed_out(what_, rank_, size_);
      if (spins > 1000) std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    done_ = true;
    if (finish_) finish_();
  }

 private:
  MPI_Request req_;
  std::string what_;
  int rank_, size_;
  std::function<void()> finish_;
  bool done_ = false;
};

class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(MPI_Comm comm) : comm_(comm) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "mpi"; }

  std::unique_ptr<Work> all_reduce_async(const Tensor& t, ReduceOp op) override {
    check(t, "all_reduce");
    Tensor buf = stage(t);
    MPI_Request req;
    KILN_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, buf.raw(), static_cast<int>(buf.numel()),
                                  mpi_type(buf.dtype()), mpi_op(op), comm_, &req));
    return work(req, "all_reduce", [t, buf, op, n = size_] {
      if (op == ReduceOp::kAvg) mul_inplace(buf, 1.0 / n);
      if (!buf.same(t)) raw::copy(t, buf);
    });
  }

  std::unique_ptr<Work> reduce_scatter_async(const Tensor& in, const Tensor& out,
                                             ReduceOp op) override {
    check(in, "reduce_scatter");
    check(out, "reduce_scatter");
    KILN_CHECK_EQ(in.numel(), out.numel() * size_);
    Tensor si = stage(in), so = stage_out(out);
    MPI_Request req;
    KILN_MPI_CHECK(MPI_Ireduce_scatter_block(si.raw(), so.raw(), static_cast<int>(so.numel()),
                                             mpi_type(so.dtype()), mpi_op(op), comm_, &req));
    return work(req, "reduce_scatter", [out, so, si, op, n = size_] {
      if (op == ReduceOp::kAvg) mul_inplace(so, 1.0 / n);
      if (!so.same(out)) raw::copy(out, so);
    });
  }

  std::unique_ptr<Work> all_gather_async(const Tensor& in, const Tensor& out) override {
    check(in, "all_gather");
    check(out, "all_gather");
    KILN_CHECK_EQ(in.numel() * size_, out.numel());
    Tensor si = stage(in), so = stage_out(out);
    MPI_Request req;
    KILN_MPI_CHECK(MPI_Iallgather(si.raw(), static_cast<int>(si.numel()), mpi_type(si.dtype()),
                                  so.raw(), static_cast<int>(si.numel()), mpi_type(so.dtype()),
                                  comm_, &req));
    return work(req, "all_gather", [out, so, si] {
      if (!so.same(out)) raw::copy(out, so);
    });
  }

  void broadcast(const Tensor& t, int root) override {
    check(t, "broadcast");
    Tensor buf = stage(t);
    MPI_Request req;
    KILN_MPI_CHECK(MPI_Ibcast(buf.raw(), static_cast<int>(buf.numel()), mpi_type(buf.dtype()), root,
                              comm_, &req));
    work(req, "broadcast", [t, buf] {
      if (!buf.same(t)) raw::copy(t, buf);
    })->wait();
  }

  void send(const Tensor& t, int peer) override { send_async(t, peer)->wait(); }
  std::unique_ptr<Work> send_async(const Tensor& t, int peer) override {
    check(t, "send");
    Tensor buf = stage(t);
    MPI_Request req;
    KILN_MPI_CHECK(MPI_Isend(buf.raw(), static_cast<int>(buf.numel()), mpi_type(buf.dtype()), peer,
                             0, comm_, &req));
    return work(req, "send", [buf] {});  // holds the buffer until the send completes
  }

  void recv(const Tensor& t, int peer) override {
    check(t, "recv");
    Tensor buf = stage_out(t);
    MPI_Request req;
    KILN_MPI_CHECK(MPI_Irecv(buf.raw(), static_cast<int>(buf.numel()), mpi_type(buf.dtype()), peer,
                             0, comm_, &req));
    work(req, "recv", [t, buf] {
      if (!buf.same(t)) raw::copy(t, buf);
    })->wait();
  }

  void barrier() override {
    MPI_Request req;
    KILN_MPI_CHECK(MPI_Ibarrier(comm_, &req));
    work(req, "barrier", nullptr)->wait();
  }

  std::unique_ptr<Communicator> split(int color, int key) override {
    MPI_Comm sub;
    KILN_MPI_CHECK(MPI_Comm_split(comm_, color, key, &sub));
    return std::make_unique<MpiCommunicator>(sub);
  }

 private:
  void check(const Tensor& t, const char* op) {
    KILN_CHECK(t.device().is_cpu()) << "MPI " << op << ": tensor " << t.str()
                                    << " must be on the CPU (use NCCL for GPU tensors)";
    KILN_CHECK(t.is_contiguous()) << "MPI " << op << ": tensor " << t.str()
                                  << " must be contiguous";
  }
  // f32 copy of a 16-bit float tensor, else the tensor itself.
  Tensor stage(const Tensor& t) {
    return needs_staging(t.dtype()) ? raw::convert(t, DType::kF32) : t;
  }
  Tensor stage_out(const Tensor& t) {
    return needs_staging(t.dtype()) ? Tensor::empty(t.shape(), DType::kF32) : t;
  }
  static void mul_inplace(const Tensor& t, double s) {
    if (t.dtype() == DType::kF32) {
      float* p = t.data<float>();
      for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<float>(p[i] * s);
    } else if (t.dtype() == DType::kF64) {
      double* p = t.data<double>();
      for (int64_t i = 0; i < t.numel(); ++i) p[i] *= s;
    } else {
      KILN_CHECK(false) << "average of a non-float tensor " << t.str();
    }
  }
  std::unique_ptr<Work> work(MPI_Request req, const char* what, std::function<void()> finish) {
    return std::make_unique<MpiWork>(req, what, rank_, size_, std::move(finish));
  }

  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
};

}  // namespace

std::unique_ptr<Communicator> make_cpu_world() {
  ensure_mpi();
  int size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  return std::make_unique<MpiCommunicator>(MPI_COMM_WORLD);
}

}  // namespace kiln::parallel
