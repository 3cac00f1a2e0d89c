// CUDA kernels of gelu / silu / swiglu and their backward (core/ops/activation.cc). One elementwise
// kernel template over a functor; each thread handles 16-byte vectors (4 f32, 8 bf16 / f16, 2 f64)
// when every pointer is 16-byte aligned, and single elements otherwise; a grid-stride loop of
// 256-thread blocks covers the tensor, and the last numel % width elements go element by element.
// The math mirrors the CPU functions of activation.cc in the compute type (f32, f64 for f64).
// swiglu_packed runs the swiglu functors over rows of a packed gate | up input (packed_kernel).
#include "core/backend.h"
#include "core/ops/cuda_util.cuh"

namespace kiln::cuda {
namespace {

constexpr double kSqrt2OverPi = 0.7978845608028654;  // sqrt(2 / pi)
constexpr double kGeluCoef = 0.044715;

template <typename A>
__device__ __forceinline__ A sigmoid(A x) {
  return A(1) / (A(1) + exp(-x));
}
template <typename A>
__device__ __forceinline__ A gelu_f(A x) {
  const A t = tanh(A(kSqrt2OverPi) * (x + A(kGeluCoef) * x * x * x));
  return A(0.5) * x * (A(1) + t);
}
template <typename A>
__device__ __forceinline__ A gelu_grad(A x) {
  const A t = tanh(A(kSqrt2OverPi) * (x + A(kGeluCoef) * x * x * x));
  const A dinner = A(kSqrt2OverPi) * (A(1) + A(3 * kGeluCoef) * x * x);
  return A(0.5) * (A(1) + t) + A(0.5) * x * (A(1) - t * t) * dinner;
}
template <typename A>
__device__ __forceinline__ A silu_f(A x) {
  return x * sigmoid(x);
}
template <typename A>
__device__ __forceinline__ A silu_grad(A x) {
  const A s = sigmoid(x);
  return s * (A(1) + x * (A(1) - s));
}

// Functors: (a, b, c) inputs -> (o0, o1) outputs, in the compute type. Unused inputs read as 0.
struct GeluFwd {
  template <typename A>
  __device__ void operator()(A x, A, A, A& o0, A&) const {
    o0 = gelu_f(x);
  }
};
struct GeluBwd {  // a = x, b = gy
  template <typename A>
  __device__ void operator()(A x, A gy, A, A& o0, A&) const {
    o0 = gy * gelu_grad(x);
  }
};
struct SiluFwd {
  template <typename A>
  __device__ void operator()(A x, A, A, A& o0, A&) const {
    o0 = silu_f(x);
  }
};
struct SiluBwd {  // a = x, b = gy
  template <typename A>
  __device__ void operator()(A x, A gy, A, A& o0, A&) const {
    o0 = gy * silu_grad(x);
  }
};
struct SwigluFwd {  // a = gate, b = up
  template <typename A>
  __device__ void operator()(A v, A u, A, A& o0, A&) const {
    o0 = silu_f(v) * u;
  }
};
struct SwigluBwd {  // a = gate, b = up, c = gy -> o0 = d gate, o1 = d up
  template <typename A>
  __device__ void operator()(A v, A u, A gy, A& o0, A& o1) const {
    o0 = gy * u * silu_grad(v);
    o1 = gy * silu_f(v);
  }
};

template <typename T, typename F>
__device__ __forceinline__ void apply_one(F f, const T* a, const T* b, const T* c, T* o0, T* o1,
                                          int64_t i) {
  using A = acc_t<T>;
  A r0 = 0, r1 = 0;
  f(to_acc(a[i]), b != nullptr ? to_acc(b[i]) : A(0), c != nullptr ? to_acc(c[i]) : A(0), r0, r1);
  if (o0 != nullptr) o0[i] = from_acc<T>(r0);
  if (o1 != nullptr) o1[i] = from_acc<T>(r1);
}

// kVec elements per access; REQUIRES (kVec > 1): every non-null pointer 16-byte aligned.
template <typename T, int kVec, typename F>
__global__ void map_kernel(F f, const T* __restrict__ a, const T* __restrict__ b,
                           const T* __restrict__ c, T* __restrict__ o0, T* __restrict__ o1,
                           int64_t n) {
  using A = acc_t<T>;
  using V = Vec<T, kVec>;
  const int64_t nvec = n / kVec;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t k = tid; k < nvec; k += stride) {
    V va = reinterpret_cast<const V*>(a)[k], vb{}, vc{}, w0, w1;
    if (b != nullptr) vb = reinterpret_cast<const V*>(b)[k];
    if (c != nullptr) vc = reinterpret_cast<const V*>(c)[k];
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      A r0 = 0, r1 = 0;
      f(to_acc(va.v[e]), b != nullptr ? to_acc(vb.v[e]) : A(0),
        c != nullptr ? to_acc(vc.v[e]) : A(0), r0, r1);
      w0.v[e] = from_acc<T>(r0);
      w1.v[e] = from_acc<T>(r1);
    }
    if (o0 != nullptr) reinterpret_cast<V*>(o0)[k] = w0;
    if (o1 != nullptr) reinterpret_cast<V*>(o1)[k] = w1;
  }
  for (int64_t i = nvec * kVec + tid; i < n; i += stride) apply_one<T>(f, a, b, c, o0, o1, i);
}

// swiglu_packed: row r of a holds gate (w wide) then up (w wide); c (gy, may be null) has rows
// of stride sc; o0 rows of stride so and o1 (may be null) likewise. Each thread takes kVec
// consecutive elements of one half-row through the same functors as map_kernel, so each element
// is computed exactly as swiglu computes it on separate halves. REQUIRES (kVec > 1): kVec divides
// w and every non-null pointer is 16-byte aligned.
template <typename T, int kVec, typename F>
__global__ void packed_kernel(F f, const T* __restrict__ a, const T* __restrict__ c,
                              T* __restrict__ o0, T* __restrict__ o1, int64_t rows, int64_t w,
                              int64_t sc, int64_t so) {
  using A = acc_t<T>;
  using V = Vec<T, kVec>;
  const int64_t wv = w / kVec, n = rows * wv;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += stride) {
    const int64_t r = k / wv, j = (k - r * wv) * kVec;
    const T* g = a + r * 2 * w + j;
    V vg = *reinterpret_cast<const V*>(g), vu = *reinterpret_cast<const V*>(g + w), vc{}, w0, w1;
    if (c != nullptr) vc = *reinterpret_cast<const V*>(c + r * sc + j);
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      A r0 = 0, r1 = 0;
      f(to_acc(vg.v[e]), to_acc(vu.v[e]), c != nullptr ? to_acc(vc.v[e]) : A(0), r0, r1);
      w0.v[e] = from_acc<T>(r0);
      w1.v[e] = from_acc<T>(r1);
    }
    *reinterpret_cast<V*>(o0 + r * so + j) = w0;
    if (o1 != nullptr) *reinterpret_cast<V*>(o1 + r * so + j) = w1;
  }
}

// Runs packed_kernel over gu (.., 2F): with gy, d gu (.., 2F) = [o0 | o1]; without, y (.., F).
template <typename F>
Tensor run_packed(F f, const Tensor& gu, const Tensor& gy) {
  const char* op = "swiglu_packed";
  check_on_current_device(op, "gu", gu);
  Tensor ac = raw::contiguous(gu);
  Tensor cc = gy.defined() ? raw::convert(gy, gu.dtype()) : Tensor();
  const int64_t w = gu.size(-1) / 2, rows = w > 0 ? gu.numel() / (2 * w) : 0;
  Shape shape = gu.shape();
  shape.back() = gy.defined() ? 2 * w : w;
  Tensor out = Tensor::empty(shape, gu.dtype(), gu.device());
  if (rows == 0 || w == 0) return out;
  constexpr int kThreads = 256;
  KILN_CUDA_DISPATCH_FLOAT(gu.dtype(), op, T, {
    const T* pa = ac.data<T>();
    const T* pc = cc.defined() ? cc.data<T>() : nullptr;
    T* p0 = out.data<T>();
    T* p1 = gy.defined() ? p0 + w : nullptr;
    const int64_t so = gy.defined() ? 2 * w : w;
    constexpr int kVec = 16 / sizeof(T);
    if (w % kVec == 0 && vec_width<T>({pa, pa + w, pc, p0, p1}) > 1) {
      packed_kernel<T, kVec, F>
          <<<blocks_for(rows * (w / kVec), kThreads), kThreads, 0, compute_stream()>>>(
              f, pa, pc, p0, p1, rows, w, w, so);
    } else {
      packed_kernel<T, 1, F><<<blocks_for(rows * w, kThreads), kThreads, 0, compute_stream()>>>(
          f, pa, pc, p0, p1, rows, w, w, so);
    }
    KILN_CUDA_CHECK_LAUNCH();
  });
  return out;
}

template <typename T, int kVec, typename F>
void launch(F f, const T* a, const T* b, const T* c, T* o0, T* o1, int64_t n) {
  constexpr int kThreads = 256;
  map_kernel<T, kVec, F>
      <<<blocks_for((n + kVec - 1) / kVec, kThreads), kThreads, 0, compute_stream()>>>(f, a, b, c,
                                                                                       o0, o1, n);
  KILN_CUDA_CHECK_LAUNCH();
}

// Runs f over a (and b, c when defined, converted to a's dtype), writing o0 (and o1 when want1).
// Returns contiguous outputs of a's shape and dtype.
template <typename F>
void run(const char* op, F f, const Tensor& a, const Tensor& b, const Tensor& c, Tensor* o0,
         Tensor* o1) {
  check_on_current_device(op, "x", a);
  Tensor ac = raw::contiguous(a);
  Tensor bc = b.defined() ? raw::convert(b, a.dtype()) : Tensor();
  Tensor cc = c.defined() ? raw::convert(c, a.dtype()) : Tensor();
  if (o0 != nullptr) *o0 = Tensor::empty(a.shape(), a.dtype(), a.device());
  if (o1 != nullptr) *o1 = Tensor::empty(a.shape(), a.dtype(), a.device());
  const int64_t n = a.numel();
  if (n == 0) return;
  KILN_CUDA_DISPATCH_FLOAT(a.dtype(), op, T, {
    const T* pa = ac.data<T>();
    const T* pb = bc.defined() ? bc.data<T>() : nullptr;
    const T* pc = cc.defined() ? cc.data<T>() : nullptr;
    T* p0 = o0 != nullptr ? o0->data<T>() : nullptr;
    T* p1 = o1 != nullptr ? o1->data<T>() : nullptr;
    if (vec_width<T>({pa, pb, pc, p0, p1}) > 1) {
      launch<T, 16 / sizeof(T)>(f, pa, pb, pc, p0, p1, n);
    } else {
      launch<T, 1>(f, pa, pb, pc, p0, p1, n);
    }
  });
}

}  // namespace

Tensor act_gelu_forward(const Tensor& x) {
  Tensor y;
  run("gelu", GeluFwd{}, x, Tensor(), Tensor(), &y, nullptr);
  return y;
}
Tensor act_gelu_backward(const Tensor& g, const Tensor& x) {
  Tensor dx;
  run("gelu", GeluBwd{}, x, g, Tensor(), &dx, nullptr);
  return dx;
}
Tensor act_silu_forward(const Tensor& x) {
  Tensor y;
  run("silu", SiluFwd{}, x, Tensor(), Tensor(), &y, nullptr);
  return y;
}
Tensor act_silu_backward(const Tensor& g, const Tensor& x) {
  Tensor dx;
  run("silu", SiluBwd{}, x, g, Tensor(), &dx, nullptr);
  return dx;
}
Tensor act_swiglu_forward(const Tensor& gate, const Tensor& up) {
  Tensor y;
  run("swiglu", SwigluFwd{}, gate, up, Tensor(), &y, nullptr);
  return y;
}
// d gate and d up in one pass; either may be skipped (null).
void act_swiglu_backward(const Tensor& g, const Tensor& gate, const Tensor& up, Tensor* dgate,
                         Tensor* dup) {
  run("swiglu", SwigluBwd{}, gate, up, g, dgate, dup);
}
Tensor act_swiglu_packed_forward(const Tensor& gu) { return run_packed(SwigluFwd{}, gu, Tensor()); }
Tensor act_swiglu_packed_backward(const Tensor& g, const Tensor& gu) {
  return run_packed(SwigluBwd{}, gu, g);
}

}  // namespace kiln::cuda
