// CUDA kernel benchmarks against measured ceilings of the GPU they run on:
//  - AdamW (fused multi-tensor, GPT-2 124M parameter shapes, f32 master weights and moments,
//    f32 and bf16 gradients; one element a thread and KILN_ADAMW_VEC's four) as achieved bytes/s
//    against the device-to-device copy bandwidth;
//  - GEMMs at GPT-2 124M shapes (batch 32 x sequence 1024 = 32768 tokens, bf16, cuBLASLt through
//    kiln's matmul / linear / linear_gelu ops) as TFLOP/s against a large square bf16 GEMM;
//  - the deterministic reduction (sum over the token dim of a (32768, 768) tensor, a bias
//    gradient) against the copy bandwidth.
//  - LayerNorm / RMSNorm forward and forward + backward (C = 768 and 1600) against the copy
//    bandwidth.
//  - rotary_embedding at the llama-1b shapes (B 8, T 2048, D 64; q 32 heads, k 4 heads, bf16):
//    the forward from the projection's (B, T, H, D) layout and the backward (the inverse rotation)
//    of a contiguous (B, H, T, D) gradient, kernel v1 against v2 (core/ops/rope_cuda.h), as
//    bytes read + written per second against the copy bandwidth.
//  - the MLP's hidden gradient (matmul_dgelu) at GPT-2 124M and 1.5B shapes: the plain GEMM alone,
//    then each DGeluPath with b1's gradient, as TFLOP/s of the GEMM.
//  - fp8 at GPT-2 1.5B shapes (8 x 1024 tokens, C 1600): dY's e5m2 cast (row-wise + transposed)
//    then sum_to for the bias gradient, against the cast with the column sums fused
//    (KILN_FP8_FUSED_DBIAS's path), as bytes (2 read, 2 written per element) per second; and the
//    MLP forward + backward as fp8_linear -> gelu -> fp8_linear against fp8_mlp_gelu.
// Each row is the median of `reps` timed runs (CUDA events on the compute stream) after warm-up.
// Usage: kernel_bench [reps] [section]: section (adamw, gemm, norm, ce, reduce, dgelu, rope, fp8)
// runs only that one after the ceilings.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/cuda/runtime.h"
#include "core/ops/activation.h"
#include "core/ops/cross_entropy.h"
#include "core/ops/cuda_base_ops.h"
#include "core/ops/elementwise.h"
#include "core/ops/fp8.h"
#include "core/ops/layernorm.h"
#include "core/ops/matmul.h"
#include "core/ops/reduce.h"
#include "core/ops/rmsnorm.h"
#include "core/ops/rope_cuda.h"
#include "core/random.h"
#include "optim/optimizer.h"
#include "optim/optimizer_cuda.h"

namespace {

using namespace kiln;

const Device kGpu = Device::cuda(0);

// Median milliseconds of fn over reps runs, after 3 warm-up runs.
double time_ms(const std::function<void()>& fn, int reps) {
  for (int i = 0; i < 3; ++i) fn();
  cudaEvent_t a, b;
  KILN_CUDA_CHECK(cudaEventCreate(&a));
  KILN_CUDA_CHECK(cudaEventCreate(&b));
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    KILN_CUDA_CHECK(cudaEventRecord(a, cuda::compute_stream()));
    fn();
    KILN_CUDA_CHECK(cudaEventRecord(b, cuda::compute_stream()));
    KILN_CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    KILN_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms);
  }
  KILN_CUDA_CHECK(cudaEventDestroy(a));
  KILN_CUDA_CHECK(cudaEventDestroy(b));
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

Tensor rnd(const Shape& s, DType dt, uint64_t seed, double std = 1.0) {
  Generator g(seed);
  return randn(s, g, dt, kGpu, 0.0, std);
}

// GPT-2 124M parameter shapes (tied embedding counted once).
std::vector<Shape> gpt2_shapes() {
  const int64_t c = 768, v = 50257, t = 1024;
  std::vector<Shape> s = {{v, c}, {t, c}};
  for (int l = 0; l < 12; ++l) {
    for (Shape sh : {Shape{c}, Shape{c}, Shape{3 * c, c}, Shape{3 * c}, Shape{c, c}, Shape{c},
                     Shape{c}, Shape{c}, Shape{4 * c, c}, Shape{4 * c}, Shape{c, 4 * c}, Shape{c}})
      s.push_back(sh);
  }
  s.push_back({c});
  s.push_back({c});
  return s;
}

void row(const std::string& name, const std::string& shape, double ms, double rate,
         const char* unit, double ceiling) {
  std::printf("%-34s %-26s %9.3f %10.1f %-7s %6.1f%%\n", name.c_str(), shape.c_str(), ms, rate,
              unit, 100.0 * rate / ceiling);
}

// rotary_embedding's CUDA kernels, v1 and v2, at the llama-1b shapes (bf16, theta 10000).
void bench_rope(int reps, double copy_bw) {
  const int64_t b = 8, t = 2048, d = 64;
  for (const int64_t h : {int64_t{32}, int64_t{4}}) {
    const std::string shape = std::to_string(b) + "x" + std::to_string(h) + "x" +
                              std::to_string(t) + "x" + std::to_string(d);
    const std::string which = h == 32 ? "q" : "k";
    Tensor x = rnd({b, t, h, d}, DType::kBF16, 40).transpose(1, 2);  // (B, H, T, D) view
    Tensor g = rnd({b, h, t, d}, DType::kBF16, 41);                  // contiguous
    const double bytes = 2.0 * static_cast<double>(x.nbytes());      // read x, write out
    for (const auto& [impl, name] :
         {std::pair{cuda::RopeImpl::kV1, "v1"}, std::pair{cuda::RopeImpl::kV2, "v2"}}) {
      double ms = time_ms([&] { (void)cuda::rope_forward(x, 10000.0, 0, false, impl); }, reps);
      row("rope " + which + " fwd (B,T,H,D) " + name, shape, ms, bytes / (ms * 1e-3) / 1e9, "GB/s",
          copy_bw);
      ms = time_ms([&] { (void)cuda::rope_forward(g, 10000.0, 0, true, impl); }, reps);
      row("rope " + which + " bwd contiguous " + name, shape, ms, bytes / (ms * 1e-3) / 1e9, "GB/s",
          copy_bw);
    }
  }
}

// fp8 at GPT-2 1.5B shapes: dY's cast with and without the fused column sums, and the MLP as the
// composed fp8 ops against fp8_mlp_gelu (forward + backward). Needs compute capability 8.9+.
void bench_fp8(int reps, double copy_bw) {
  if (cuda::compute_capability() < 89) return;
  const int64_t tok = 8 * 1024, c = 1600, h = 4 * c;
  for (const int64_t n : {c, 3 * c}) {
    Tensor dy = rnd({tok, n}, DType::kBF16, 50);
    const std::string shape = std::to_string(tok) + "x" + std::to_string(n);
    const double bytes = 4.0 * static_cast<double>(dy.numel());
    double ms = time_ms(
        [&] {
          (void)fp8_quantize(dy, DType::kF8E5M2, true, true);
          (void)sum_to(dy, {n});
        },
        reps);
    row("fp8 e5m2 cast_t + sum_to", shape, ms, bytes / (ms * 1e-3) / 1e9, "GB/s", copy_bw);
    ms = time_ms(
        [&] {
          Tensor db;
          (void)fp8_quantize(dy, DType::kF8E5M2, true, true, &db);
        },
        reps);
    row("fp8 e5m2 cast_t with dbias", shape, ms, bytes / (ms * 1e-3) / 1e9, "GB/s", copy_bw);
  }
  EnableGradGuard grad;
  std::vector<Tensor> p = {rnd({8, 1024, c}, DType::kBF16, 51), rnd({h, c}, DType::kBF16, 52, 0.02),
                           rnd({h}, DType::kBF16, 53, 0.02), rnd({c, h}, DType::kBF16, 54, 0.02),
                           rnd({c}, DType::kBF16, 55, 0.02)};
  for (Tensor& t : p) t = t.detach().set_requires_grad(true);
  const Tensor gy = rnd({8, 1024, c}, DType::kBF16, 56);
  const double flop = 3 * 2 * 2.0 * tok * c * h;  // two GEMMs, forward + dX + dW
  for (int fused : {0, 1}) {
    const double ms = time_ms(
        [&] {
          Tensor y = fused ? fp8_mlp_gelu(p[0], p[1], p[2], p[3], p[4])
                           : fp8_linear(gelu(fp8_linear(p[0], p[1], p[2])), p[3], p[4]);
          (void)kiln::grad({y}, {gy}, p);
        },
        reps);
    row(fused ? "fp8_mlp_gelu fwd+bwd" : "fp8 linear-gelu-linear fwd+bwd",
        std::to_string(tok) + "x1600 H 6400", ms, flop / (ms * 1e-3) / 1e12, "TFLOP/s",
        1979.0);  // the H100 / H200 SXM dense fp8 peak
  }
}

// The hidden gradient (gy @ w2) * gelu'(pre) and b1's gradient by each cuda::DGeluPath, at GPT-2
// 124M (32768 tokens, C 768, H 3072) and 1.5B (8192 tokens, C 1600, H 6400) shapes.
void bench_dgelu(int reps, double gemm_peak) {
  struct Shape3 {
    int64_t rows, c, hid;
  };
  for (const Shape3& s : {Shape3{32768, 768, 3072}, Shape3{8192, 1600, 6400}}) {
    Tensor gy = rnd({s.rows, s.c}, DType::kBF16, 40),
           w2 = rnd({s.c, s.hid}, DType::kBF16, 41, 0.02);
    Tensor pre = rnd({s.rows, s.hid}, DType::kBF16, 42);
    const double flop = 2.0 * s.rows * s.c * s.hid;
    const std::string shape =
        std::to_string(s.rows) + "x" + std::to_string(s.c) + "x" + std::to_string(s.hid);
    auto report = [&](const char* what, double ms) {
      row(what, shape, ms, flop / (ms * 1e-3) / 1e12, "TFLOP/s", gemm_peak);
    };
    report("dH = dY @ W2 alone", time_ms([&] { (void)cuda::matmul(gy, w2, false, false); }, reps));
    const std::pair<const char*, cuda::DGeluPath> paths[] = {
        {"dgelu: GEMM + kiln kernel", cuda::DGeluPath::kKernel},
        {"dgelu: DGELU epilogue + sum_to", cuda::DGeluPath::kEpilogue},
        {"dgelu: DGELU_BGRAD epilogue", cuda::DGeluPath::kEpilogueBGrad},
    };
    for (const auto& [name, path] : paths) {
      report(name, time_ms(
                       [&] {
                         Tensor gb1;
                         (void)cuda::matmul_dgelu(gy, w2, pre, &gb1, path);
                       },
                       reps));
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::atoi(argv[1]) : 20;
  const std::string only = argc > 2 ? argv[2] : "";
  auto want = [&](const char* section) { return only.empty() || only == section; };
  if (!cuda_available()) {
    std::fprintf(stderr, "kernel_bench: no CUDA device\n");
    return 1;
  }
  NoGradGuard ng;
  cudaDeviceProp prop;
  KILN_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("kernel_bench on %s (sm_%d%d, %d SMs), median of %d runs\n\n", prop.name, prop.major,
              prop.minor, prop.multiProcessorCount, reps);

  // ---- ceilings ----
  const int64_t copy_bytes = int64_t{1} << 30;
  Tensor src = Tensor::zeros({copy_bytes / 4}, DType::kF32, kGpu);
  Tensor dst = Tensor::empty({copy_bytes / 4}, DType::kF32, kGpu);
  const double copy_ms = time_ms(
      [&] {
        KILN_CUDA_CHECK(cudaMemcpyAsync(dst.raw(), src.raw(), copy_bytes, cudaMemcpyDeviceToDevice,
                                        cuda::compute_stream()));
      },
      reps);
  const double copy_bw = 2.0 * copy_bytes / (copy_ms * 1e-3) / 1e9;  // read + write, GB/s
  src = Tensor();
  dst = Tensor();

  const int64_t sq = 8192;
  Tensor qa = rnd({sq, sq}, DType::kBF16, 1), qb = rnd({sq, sq}, DType::kBF16, 2);
  const double sq_ms = time_ms([&] { (void)matmul(qa, qb, false, true); }, reps);
  const double gemm_peak = 2.0 * sq * sq * sq / (sq_ms * 1e-3) / 1e12;
  qa = Tensor();
  qb = Tensor();

  std::printf("%-34s %-26s %9s %10s %-7s %7s\n", "kernel", "shape", "ms", "rate", "unit",
              "of ceil");
  row("ceiling: D2D copy (read+write)", "1 GiB", copy_ms, copy_bw, "GB/s", copy_bw);
  row("ceiling: bf16 GEMM", "8192^3", sq_ms, gemm_peak, "TFLOP/s", gemm_peak);

  // ---- AdamW over GPT-2 124M ----
  for (DType gd : {DType::kF32, DType::kBF16}) {
    if (!want("adamw")) break;
    std::vector<nn::Parameter> params;
    int64_t n = 0;
    int i = 0;
    for (const Shape& s : gpt2_shapes()) {
      Tensor p = rnd(s, DType::kF32, 100 + i, 0.02).detach();
      p.set_requires_grad(true);
      p.set_grad(rnd(s, gd, 1000 + i, 1e-3).detach());
      params.push_back({"p" + std::to_string(i++), p, s.size() > 1});
      n += p.numel();
    }
    optim::AdamW opt(params, optim::AdamWOptions{});
    // p, m, v read and written (24 B), the gradient read (4 or 2 B).
    const double bytes = static_cast<double>(n) * (24 + dtype_size(gd));
    for (const int vec : {0, 1}) {  // KILN_ADAMW_VEC off / on
      optim::cuda::set_adamw_vectorized_override(vec);
      const double ms = time_ms([&] { opt.step(1e-4); }, reps);
      row(std::string("AdamW fused") + (vec ? " vec4" : "") + ", grads " + dtype_name(gd),
          std::to_string(params.size()) + " tensors, " + std::to_string(n / 1000000) + "M", ms,
          bytes / (ms * 1e-3) / 1e9, "GB/s", copy_bw);
    }
    optim::cuda::set_adamw_vectorized_override(-1);
    const double norm_ms = time_ms([&] { (void)optim::grad_norm(params); }, reps);
    row(std::string("grad_norm, grads ") + dtype_name(gd), std::to_string(n / 1000000) + "M",
        norm_ms, static_cast<double>(n) * dtype_size(gd) / (norm_ms * 1e-3) / 1e9, "GB/s", copy_bw);
  }

  // ---- GEMMs at GPT-2 124M shapes (B*T = 32768 tokens, C = 768) ----
  const int64_t tok = 32 * 1024, c = 768, v = 50257;
  struct Gemm {
    const char* name;
    int64_t m, k, n;
  };
  const Gemm fwd[] = {
      {"qkv  x @ W^T", tok, c, 3 * c}, {"attn proj", tok, c, c}, {"mlp fc", tok, c, 4 * c},
      {"mlp proj", tok, 4 * c, c},     {"lm head", tok, c, v},
  };
  for (const Gemm& g : fwd) {
    if (!want("gemm")) break;
    Tensor x = rnd({g.m, g.k}, DType::kBF16, 7), w = rnd({g.n, g.k}, DType::kBF16, 8, 0.02);
    Tensor b = rnd({g.n}, DType::kBF16, 9);
    Tensor dy = rnd({g.m, g.n}, DType::kBF16, 10);
    const double flop = 2.0 * g.m * g.k * g.n;
    const std::string shape =
        std::to_string(g.m) + "x" + std::to_string(g.k) + "x" + std::to_string(g.n);
    double ms = time_ms([&] { (void)matmul(x, w, false, true); }, reps);
    row(std::string(g.name) + " fwd", shape, ms, flop / (ms * 1e-3) / 1e12, "TFLOP/s", gemm_peak);
    ms = time_ms([&] { (void)linear(x, w, b); }, reps);
    row(std::string(g.name) + " fwd +bias", shape, ms, flop / (ms * 1e-3) / 1e12, "TFLOP/s",
        gemm_peak);
    if (g.n == 4 * c) {
      ms = time_ms([&] { (void)linear_gelu(x, w, b); }, reps);
      row(std::string(g.name) + " fwd +bias+gelu", shape, ms, flop / (ms * 1e-3) / 1e12, "TFLOP/s",
          gemm_peak);
    }
    ms = time_ms([&] { (void)matmul(dy, w, false, false); }, reps);  // dX = dY @ W
    row(std::string(g.name) + " dX", shape, ms, flop / (ms * 1e-3) / 1e12, "TFLOP/s", gemm_peak);
    ms = time_ms([&] { (void)matmul(dy, x, true, false); }, reps);  // dW = dY^T @ X
    row(std::string(g.name) + " dW", shape, ms, flop / (ms * 1e-3) / 1e12, "TFLOP/s", gemm_peak);
  }

  // ---- LayerNorm / RMSNorm (plain and fused with the residual add), forward and backward, bf16,
  // at GPT-2 124M (C = 768) and 1.5B (C = 1600) widths. KILN_NORM_KERNEL=general runs the
  // block-per-row kernels (what every shape ran before the warp-per-row kernels). Backward through
  // kiln::grad: the gradients as the op returns them, with no copy into a leaf's .grad.
  for (const int64_t nc : {int64_t{768}, int64_t{1600}, int64_t{2048}}) {
    if (!want("norm")) break;
    const int64_t rows = tok;
    const std::string shape = std::to_string(rows) + "x" + std::to_string(nc);
    Tensor x = rnd({rows, nc}, DType::kBF16, 20), r = rnd({rows, nc}, DType::kBF16, 21);
    Tensor w = rnd({nc}, DType::kBF16, 22), b = rnd({nc}, DType::kBF16, 23);
    Tensor gy = rnd({rows, nc}, DType::kBF16, 24), gs = rnd({rows, nc}, DType::kBF16, 25);
    const double act = static_cast<double>(rows) * nc * 2;  // bytes of one (rows, C) bf16 tensor
    auto gbs = [&](double acts, double ms) { return acts * act / (ms * 1e-3) / 1e9; };
    double ms = time_ms([&] { (void)layer_norm(x, w, b); }, reps);
    row("layer_norm fwd (bf16)", shape, ms, gbs(2, ms), "GB/s", copy_bw);  // read x, write y
    ms = time_ms([&] { (void)add_layer_norm(x, r, w, b); }, reps);
    row("add+layer_norm fwd (bf16)", shape, ms, gbs(4, ms), "GB/s",
        copy_bw);  // read x, r; write sum, y
    ms = time_ms([&] { (void)rms_norm(x, w); }, reps);
    row("rms_norm fwd (bf16)", shape, ms, gbs(2, ms), "GB/s", copy_bw);
    Tensor xg = x.detach().set_requires_grad(true), rg = r.detach().set_requires_grad(true);
    Tensor wg = w.detach().set_requires_grad(true), bg = b.detach().set_requires_grad(true);
    ms = time_ms(
        [&] {
          EnableGradGuard eg;
          Tensor y = layer_norm(xg, wg, bg);
          (void)kiln::grad({y}, {gy}, {xg, wg, bg});
        },
        reps);
    // forward (read x, write y) + backward (read x, dy, write dx; dW/db partials are small)
    row("layer_norm fwd+bwd (bf16)", shape, ms, gbs(5, ms), "GB/s", copy_bw);
    ms = time_ms(
        [&] {
          EnableGradGuard eg;
          auto [s, y] = add_layer_norm(xg, rg, wg, bg);
          (void)kiln::grad({s, y}, {gs, gy}, {xg, rg, wg, bg});
        },
        reps);
    // forward (read x, r, write sum, y) + backward (read sum, dy, dsum, write dx)
    row("add+layer_norm fwd+bwd (bf16)", shape, ms, gbs(8, ms), "GB/s", copy_bw);
    ms = time_ms(
        [&] {
          EnableGradGuard eg;
          auto [s, y] = add_rms_norm(xg, rg, wg);
          (void)kiln::grad({s, y}, {gs, gy}, {xg, rg, wg});
        },
        reps);
    row("add+rms_norm fwd+bwd (bf16)", shape, ms, gbs(8, ms), "GB/s", copy_bw);
    ms = time_ms([&] { (void)add_rms_norm(x, r, w); }, reps);
    row("add+rms_norm fwd (bf16)", shape, ms, gbs(4, ms), "GB/s", copy_bw);
  }

  // ---- classifier + cross-entropy fused (GPT-2 head), forward + backward, bf16 ----
  if (want("ce")) {
    const int64_t vp = 50304;
    Tensor x = rnd({tok, c}, DType::kBF16, 30).set_requires_grad(true);
    Tensor w = rnd({vp, c}, DType::kBF16, 31, 0.02).set_requires_grad(true);
    Generator g(32);
    Tensor t = randint({tok}, g, v, DType::kI32, kGpu);
    const double ms = time_ms(
        [&] {
          EnableGradGuard eg;
          Tensor loss = linear_cross_entropy(x, w, t);
          loss.backward();
          x.zero_grad();
          w.zero_grad();
        },
        reps);
    const double flop = 3 * 2.0 * tok * c * vp;  // logits, dX, dW GEMMs
    row("linear_cross_entropy fwd+bwd", std::to_string(tok) + "x768 @ 50304", ms,
        flop / (ms * 1e-3) / 1e12, "TFLOP/s", gemm_peak);
  }

  // ---- a bias gradient: the deterministic column reduction ----
  if (want("reduce")) {
    for (int64_t n : {c, 3 * c, 4 * c}) {  // GPT-2 124M's bias widths: proj / fc2, qkv, fc1
      Tensor dy = rnd({tok, n}, DType::kBF16, 11);
      const double ms = time_ms([&] { (void)sum_to(dy, {n}); }, reps);
      row("sum_to (bias grad, bf16)", std::to_string(tok) + "x" + std::to_string(n), ms,
          static_cast<double>(dy.nbytes()) / (ms * 1e-3) / 1e9, "GB/s", copy_bw);
    }
    Tensor x = rnd({int64_t{1} << 28}, DType::kF32, 12);
    const double ms2 = time_ms([&] { (void)sum(x); }, reps);
    row("sum (f32, all)", "2^28", ms2, static_cast<double>(x.nbytes()) / (ms2 * 1e-3) / 1e9, "GB/s",
        copy_bw);
  }
  if (want("dgelu")) bench_dgelu(reps, gemm_peak);
  if (want("rope")) bench_rope(reps, copy_bw);
  if (want("fp8")) bench_fp8(reps, copy_bw);
  cuda::synchronize();
  return 0;
}
