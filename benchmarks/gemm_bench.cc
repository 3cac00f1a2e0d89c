// GEMM overhead: kiln's matmul op (argument checks, output allocation through the caching
// allocator, its own split of the GEMM over kiln's thread pool) against calling OpenBLAS's
// cblas_sgemm directly on preallocated buffers with OpenBLAS's own threading, same shapes and
// thread count. Interleaved repetitions, median time each; prints the overhead in percent. Usage:
// gemm_bench [reps]
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "core/autograd.h"
#include "core/ops/matmul.h"
#include "core/parallel.h"
#include "core/random.h"

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Case {
  const char* name;
  int m, k, n;
};

}  // namespace

int main(int argc, char** argv) {
  using namespace kiln;
  const int reps = argc > 1 ? std::atoi(argv[1]) : 21;
  const Case cases[] = {
      {"square 1024x1024x1024", 1024, 1024, 1024},
      {"gpt2-small mlp fc (B*T=1024, C=768 -> 3072)", 1024, 768, 3072},
      {"gpt2-small mlp proj (B*T=1024, 3072 -> 768)", 1024, 3072, 768},
      {"gpt2-small qkv (B*T=1024, 768 -> 2304)", 1024, 768, 2304},
  };
  std::printf("%-46s %12s %12s %10s %9s\n", "shape (M x K x N)", "openblas ms", "kiln ms",
              "GFLOP/s", "overhead");
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
    for (int i = 0; i < 3; ++i) {  // warm up caches, threads and the allocator
      direct();
      op();
    }
    std::vector<double> td, tk;
    for (int r = 0; r < reps; ++r) {
      double t0 = now_s();
      direct();
      double t1 = now_s();
      Tensor y = op();
      double t2 = now_s();
      td.push_back(t1 - t0);
      tk.push_back(t2 - t1);
    }
    const double d = median(td), k = median(tk);
    const double gflops = 2.0 * c.m * c.n * c.k / d / 1e9;
    std::printf("%-46s %12.3f %12.3f %10.1f %8.2f%%\n", c.name, d * 1e3, k * 1e3, gflops,
                (k / d - 1.0) * 100.0);
  }
  return 0;
}
