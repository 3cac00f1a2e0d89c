// Pipeline schedules on the CPU with equal work per stage: each stage's forward, input-gradient
// and weight-gradient passes take a fixed time t (a sleep, standing for a device kernel, so that
// stages sharing this machine's cores do not slow each other; --spin busy-waits instead), and
// PipelineExecutor runs the real action lists with real MPI messages between the stages. Prints
// the measured step time (median of the timed steps, the slowest rank) next to the theory of
// parallel/pipeline/schedule.h for each schedule. Run: mpirun -np P pipeline_bench [--m M]
// [--t_ms T] [--steps N] [--spin].
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/pipeline/executor.h"

namespace kiln::parallel::pipeline {
namespace {

bool g_spin = false;

void work_for(double ms) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double, std::milli>(ms);
  if (!g_spin) {
    std::this_thread::sleep_until(end);
    return;
  }
  while (std::chrono::steady_clock::now() < end) {
  }
}

// Forward f, input gradient bi, weight gradient w per chunk (the backward of a schedule that does
// not split it takes bi + w in one pass). The last virtual stage returns a 0-dim "loss".
class TimedWork final : public StageWork {
 public:
  TimedWork(double f, double bi, double w, bool split, bool last_stage, int v)
      : f_(f), bi_(bi), w_(w), split_(split), last_stage_(last_stage), v_(v) {}
  Tensor forward(int chunk, const MicroBatch&, const Tensor&) override {
    work_for(f_);
    return last_stage_ && chunk == v_ - 1 ? Tensor::zeros({}) : Tensor::zeros({256});
  }
  Tensor activation_buffer(const MicroBatch&) override { return Tensor::zeros({256}); }
  Tensor backward_input(int, int, const Tensor& input, const Tensor&, const Tensor&) override {
    work_for(split_ ? bi_ : bi_ + w_);
    return input.defined() ? Tensor::zeros({256}) : Tensor();
  }
  void backward_weight(int, int) override { work_for(w_); }
  bool weights_in_input_pass() const override { return !split_; }

 private:
  double f_, bi_, w_;
  bool split_, last_stage_;
  int v_;
};

double step_ms(Communicator& comm, const ScheduleSpec& spec, double t, int steps) {
  const int v = spec.virtual_stages;
  // Equal work per stage whatever v: a chunk holds 1 / v of the stage's layers.
  TimedWork work(t / v, t / v, t / v, splits_backward(spec.kind), comm.rank() == comm.size() - 1,
                 v);
  PipelineExecutor exec(spec, comm, work);
  NoGradSync sync;
  std::vector<double> times;
  for (int s = 0; s < steps + 1; ++s) {  // the first step is a warm-up
    comm.barrier();
    const auto t0 = std::chrono::steady_clock::now();
    exec.run(
        [] {
          return MicroBatch{Tensor::zeros({1, 1}), Tensor::zeros({1, 1})};
        },
        spec.micro_batches, 1.0, sync);
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    const double slowest = comm.all_reduce_scalar(ms, ReduceOp::kMax);
    if (s > 0) times.push_back(slowest);
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

int main_impl(int argc, char** argv) {
  int m = 8, steps = 5;
  double t = 10;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--m") && i + 1 < argc) m = std::atoi(argv[++i]);
    if (!std::strcmp(argv[i], "--t_ms") && i + 1 < argc) t = std::atof(argv[++i]);
    if (!std::strcmp(argv[i], "--steps") && i + 1 < argc) steps = std::atoi(argv[++i]);
    if (!std::strcmp(argv[i], "--spin")) g_spin = true;
  }
  std::unique_ptr<Communicator> comm = make_cpu_world();
  const int p = comm->size();
  if (comm->rank() == 0)
    std::printf("pipeline_bench: p=%d m=%d, f = bi = w = %.1f ms per stage (%s)\n", p, m, t,
                g_spin ? "spin" : "sleep");
  for (auto [kind, v] :
       std::vector<std::pair<ScheduleKind, int>>{{ScheduleKind::kGPipe, 1},
                                                 {ScheduleKind::k1F1B, 1},
                                                 {ScheduleKind::kInterleaved1F1B, 2},
                                                 {ScheduleKind::kZBH1, 1}}) {
    const ScheduleSpec spec{kind, p, m, v, false};
    const double got = step_ms(*comm, spec, t, steps);
    const double theory = theory_makespan(spec, t / v, t / v, t / v);
    if (comm->rank() == 0)
      std::printf("%-18s v=%d  measured %8.1f ms  theory %8.1f ms  (%+.1f%%)  bubble %.3f\n",
                  schedule_name(kind).c_str(), v, got, theory, 100 * (got / theory - 1),
                  1 - 3.0 * m * t / got);
  }
  return 0;
}

}  // namespace
}  // namespace kiln::parallel::pipeline

int main(int argc, char** argv) { return kiln::parallel::pipeline::main_impl(argc, argv); }
