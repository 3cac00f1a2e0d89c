// GEMM overhead: kiln's matmul op (argument checks, output allocation through the caching
// allocator, its own split of the GEMM over kiln's thread pool) against calling OpenBLAS's
// cblas_sgemm directly on preallocated buffers with OpenBLAS's own threading, same shapes and
// thread count. Fastest repetition of each side over alternating phases, and the median over
// rounds of the paired ratio; prints both overheads in percent.
// Usage: gemm_bench [reps per phase] [rounds]
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

#include "core/autograd.h"
#include "core/ops/matmul.h"
#include "core/random.h"
#include "core/thread_pool.h"

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// The fastest repetition: on a shared machine the slower ones measure other processes, and the
// minimum of each phase is the most repeatable estimate of what the code itself costs.
double fastest(const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

struct Case {
  const char* name;
  int m, k, n;
};

}  // namespace

int main(int argc, char** argv) {
  using namespace kiln;
  const int reps = argc > 1 ? std::atoi(argv[1]) : 9;
  const int rounds = argc > 2 ? std::atoi(argv[2]) : 11;
  const Case cases[] = {
      {"square 1024x1024x1024", 1024, 1024, 1024},
      {"gpt2-small mlp fc (B*T=1024, C=768 -> 3072)", 1024, 768, 3072},
      {"gpt2-small mlp proj (B*T=1024, 3072 -> 768)", 1024, 3072, 768},
      {"gpt2-small qkv (B*T=1024, 768 -> 2304)", 1024, 768, 2304},
  };
  // overhead: fastest kiln over fastest OpenBLAS; paired: the median over rounds of the same
  // ratio within one round (the two phases of a round run seconds apart).
  std::printf("%-46s %12s %12s %10s %9s %9s\n", "shape (M x K x N)", "openblas ms", "kiln ms",
              "GFLOP/s", "overhead", "paired");
  NoGradGuard ng;
  for (const Case& c : cases) {
    Generator g(1);
    Tensor a = randn({c.m, c.k}, g), b = randn({c.k, c.n}, g);
    std::vector<float> out(static_cast<size_t>(c.m) * c.n);
    // OpenBLAS called directly uses its own thread pool (all cores); kiln keeps OpenBLAS
    // single-threaded and splits the GEMM over its own pool of the same size.
    auto direct = [&] {
      openblas_set_num_threads(num_threads());
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, c.m, c.n, c.k, 1.0f, a.data<float>(),
                  c.k, b.data<float>(), c.n, 0.0f, out.data(), c.n);
    };
    auto op = [&] {
      openblas_set_num_threads(1);
      return matmul(a, b);
    };
    // Phases, not interleaved: OpenBLAS's workers spin (sched_yield) for a while after a threaded
    // call and would steal the cores from kiln's pool. Each phase warms up first. The two phases
    // alternate for several rounds and each side keeps its fastest repetition over all rounds, so
    // a slow stretch of a shared machine (other tenants, frequency changes) cannot fall on one
    // side only.
    std::vector<double> td, tk, ratios;
    for (int round = 0; round < rounds; ++round) {
      const size_t d0 = td.size(), k0 = tk.size();
      for (int i = 0; i < 3; ++i) direct();
      for (int r = 0; r < reps; ++r) {
        const double t0 = now_s();
        direct();
        td.push_back(now_s() - t0);
      }
      openblas_set_num_threads(1);
      std::this_thread::sleep_for(std::chrono::milliseconds(500));  // let OpenBLAS's workers park
      for (int i = 0; i < 3; ++i) op();
      for (int r = 0; r < reps; ++r) {
        const double t0 = now_s();
        Tensor y = op();
        tk.push_back(now_s() - t0);
      }
      ratios.push_back(fastest({tk.begin() + k0, tk.end()}) / fastest({td.begin() + d0, td.end()}));
    }
    const double d = fastest(td), k = fastest(tk);
    const double gflops = 2.0 * c.m * c.n * c.k / d / 1e9;
    std::printf("%-46s %12.3f %12.3f %10.1f %8.2f%% %8.2f%%\n", c.name, d * 1e3, k * 1e3, gflops,
                (k / d - 1.0) * 100.0, (median(ratios) - 1.0) * 100.0);
  }
  return 0;
}
