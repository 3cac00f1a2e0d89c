// 1F1B against ZB-H1 on a real model, paired step by step: under mpirun -np 2 each rank builds its
// pipeline stage of the GPT-2 of gpt2_pp2.textproto (4 blocks of width 512, micro-batches of
// 1 x 128 tokens, fp32) and runs the same flush of M micro-batches alternately through a 1F1B and
// a ZB-H1 executor (ModelStageWork, the split backward for ZB-H1), gradients cleared between
// steps, no optimizer. Load from other jobs drifts slowly, so the ratio of adjacent steps is
// steadier than the ratio of separate runs: prints the median step time of each and the median
// of the per-pair ratios ZB-H1 / 1F1B (slowest rank per step).
// Run: KILN_NUM_THREADS=1 mpirun -np 2 zb_pair_bench [--m M] [--pairs N].
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "benchmarks/pipeline/bench_model.h"
#include "core/autograd.h"
#include "core/check.h"
#include "launch/pipeline_stage.h"
#include "models/model.h"
#include "models/presets.h"
#include "parallel/communicator.h"
#include "parallel/pipeline/executor.h"

namespace kiln {
namespace {

using parallel::pipeline::PipelineExecutor;
using parallel::pipeline::ScheduleKind;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

models::ModelSpec bench_spec() { return bench::pipeline_bench_spec(); }

// One step of `exec` over `batches`, its time on the slowest rank (ms); clears the gradients.
double step_ms(PipelineExecutor& exec, const std::vector<parallel::MicroBatch>& batches,
               models::LanguageModel& stage, parallel::Communicator& comm) {
  parallel::NoGradSync sync;
  size_t k = 0;
  comm.barrier();
  const auto t0 = std::chrono::steady_clock::now();
  exec.run([&] { return batches[k++]; }, static_cast<int64_t>(batches.size()), 1.0, sync);
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  for (const nn::Parameter& p : stage.parameters()) Tensor(p.tensor).set_grad(Tensor());
  return comm.all_reduce_scalar(ms, parallel::ReduceOp::kMax);
}

int main_impl(int argc, char** argv) {
  int m = 8, pairs = 20;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--m")) m = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--pairs")) pairs = std::atoi(argv[i + 1]);
  }
  std::unique_ptr<parallel::Communicator> comm = parallel::make_cpu_world();
  const int p = comm->size(), s = comm->rank();
  KILN_CHECK_EQ(p, 2) << "run under mpirun -np 2";
  auto stage = models::build_stage(bench_spec(), 1337, {s == 0, s * 2, s * 2 + 2, s == p - 1});
  std::vector<parallel::MicroBatch> batches;
  for (int j = 0; j < m; ++j) {
    std::vector<int64_t> v(129);
    for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<int64_t>((i * 37 + j * 11) % 512);
    batches.push_back({Tensor::from_ints(std::vector<int64_t>(v.begin(), v.end() - 1), {1, 128}),
                       Tensor::from_ints(std::vector<int64_t>(v.begin() + 1, v.end()), {1, 128})});
  }
  launch::ModelStageWork one_work({stage.get()}, false), zb_work({stage.get()}, true);
  PipelineExecutor one({ScheduleKind::k1F1B, p, m, 1, true}, *comm, one_work);
  PipelineExecutor zb({ScheduleKind::kZBH1, p, m, 1, true}, *comm, zb_work);
  std::vector<double> t1, tz, ratio;
  for (int i = 0; i < pairs + 1; ++i) {  // the first pair warms up
    const double a = step_ms(one, batches, *stage, *comm);
    const double b = step_ms(zb, batches, *stage, *comm);
    if (i == 0) continue;
    t1.push_back(a);
    tz.push_back(b);
    ratio.push_back(b / a);
  }
  if (s == 0)
    std::printf(
        "m = %d, %d pairs: 1F1B %.1f ms, ZB-H1 %.1f ms (medians); ZB-H1 / 1F1B %.3f "
        "(median of pair ratios; ZB-H1 faster in %d of %d pairs)\n",
        m, pairs, median(t1), median(tz), median(ratio),
        static_cast<int>(std::count_if(ratio.begin(), ratio.end(), [](double r) { return r < 1; })),
        pairs);
  return 0;
}

}  // namespace
}  // namespace kiln

int main(int argc, char** argv) { return kiln::main_impl(argc, argv); }
