// CUDA kernels of the elementwise ops: broadcasting add/sub/mul (contiguous, tensor-scalar and
// strided variants), sum_to (through the deterministic reduction in reduce.cu), the in-place
// add_/mul_ used for gradient accumulation and scaling, and sum_squares. Each rounds exactly as
// its CPU reference does (f32 compute for f32/bf16/f16, f64 for f64; no FMA contraction where the
// CPU does two roundings), so results match the CPU bit for bit.
#include <cstdint>

#include "core/cuda/dtype.cuh"
#include "core/cuda/runtime.h"
#include "core/cuda/strided.cuh"
#include "core/ops/cuda_base_ops.h"

namespace kiln::cuda {
namespace {

constexpr int kThreads = 256;

template <BinaryOp kOp, typename C>
__device__ __forceinline__ C apply(C x, C y) {
  if constexpr (kOp == BinaryOp::kAdd) return x + y;
  if constexpr (kOp == BinaryOp::kSub) return x - y;
  return x * y;
}

template <typename S, BinaryOp kOp>
__global__ void binary_contig_kernel(const S* __restrict__ a, const S* __restrict__ b,
                                     S* __restrict__ out, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    Elem<S>::store(out, i, apply<kOp>(Elem<S>::load(a, i), Elem<S>::load(b, i)));
}

// binary_contig_kernel with 16 bytes per access (8 bf16 / f16, 4 f32): a, b and out 16-byte
// aligned; the n % kV tail element-wise.
template <typename S, BinaryOp kOp>
__global__ void binary_contig_vec_kernel(const S* __restrict__ a, const S* __restrict__ b,
                                         S* __restrict__ out, int64_t n) {
  constexpr int kV = 16 / sizeof(S);
  const int64_t nvec = n / kV;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t k = tid; k < nvec; k += stride) {
    const uint4 ua = reinterpret_cast<const uint4*>(a)[k];
    const uint4 ub = reinterpret_cast<const uint4*>(b)[k];
    uint4 uo;
    const S* ea = reinterpret_cast<const S*>(&ua);
    const S* eb = reinterpret_cast<const S*>(&ub);
    S* eo = reinterpret_cast<S*>(&uo);
#pragma unroll
    for (int e = 0; e < kV; ++e)
      Elem<S>::store(eo, e, apply<kOp>(Elem<S>::load(ea, e), Elem<S>::load(eb, e)));
    reinterpret_cast<uint4*>(out)[k] = uo;
  }
  for (int64_t i = nvec * kV + tid; i < n; i += stride)
    Elem<S>::store(out, i, apply<kOp>(Elem<S>::load(a, i), Elem<S>::load(b, i)));
}

template <typename S, BinaryOp kOp>
__global__ void binary_scalar_kernel(const S* __restrict__ a, typename Elem<S>::C s,
                                     S* __restrict__ out, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    Elem<S>::store(out, i, apply<kOp>(Elem<S>::load(a, i), s));
}

// out (contiguous) = a op b with a and b read through broadcast strides.
template <typename S, BinaryOp kOp, typename I>
__global__ void binary_strided_kernel(const S* __restrict__ a, const S* __restrict__ b,
                                      S* __restrict__ out, StridedIter<2> it, I n) {
  for (I i = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<I>(gridDim.x) * blockDim.x) {
    I off[2];
    it.offsets(i, off);
    Elem<S>::store(out, i, apply<kOp>(Elem<S>::load(a, off[0]), Elem<S>::load(b, off[1])));
  }
}

template <typename S, BinaryOp kOp>
void launch_binary(const Tensor& a, const Tensor& b, const Tensor& out) {
  const int64_t n = out.numel();
  const S* pa = static_cast<const S*>(a.raw());
  const S* pb = static_cast<const S*>(b.raw());
  S* po = static_cast<S*>(out.raw());
  cudaStream_t st = compute_stream();
  if (a.shape() == b.shape() && a.is_contiguous() && b.is_contiguous()) {
    auto al16 = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
    if (sizeof(S) <= 4 && al16(pa) && al16(pb) && al16(po)) {
      constexpr int64_t kV = 16 / sizeof(S);
      binary_contig_vec_kernel<S, kOp>
          <<<blocks_for((n + kV - 1) / kV, kThreads), kThreads, 0, st>>>(pa, pb, po, n);
    } else {
      binary_contig_kernel<S, kOp><<<blocks_for(n, kThreads), kThreads, 0, st>>>(pa, pb, po, n);
    }
  } else {
    StridedIter<2> it = make_strided_iter<2>(
        out.shape(), {broadcast_strides(a, out.shape()), broadcast_strides(b, out.shape())});
    if (fits_int32(it, n)) {
      binary_strided_kernel<S, kOp, uint32_t>
          <<<blocks_for(n, kThreads), kThreads, 0, st>>>(pa, pb, po, it, static_cast<uint32_t>(n));
    } else {
      binary_strided_kernel<S, kOp, int64_t>
          <<<blocks_for(n, kThreads), kThreads, 0, st>>>(pa, pb, po, it, n);
    }
  }
  KILN_CUDA_CHECK_LAUNCH();
}

// dst[i] += alpha * src[i] in f32 with two roundings, as the CPU f32 fast path.
__global__ void add_f32_kernel(float* __restrict__ d, const float* __restrict__ s, float alpha,
                               int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    d[i] = __fadd_rn(d[i], __fmul_rn(alpha, s[i]));
}

// add_ of 16-bit gradients into f32 accumulators (AccumulateGrad's mixed-precision case), four
// elements per access; in f64 and rounded once, as add_general_kernel and the CPU general path.
__device__ __forceinline__ float add_f64(float d, double alpha, float s) {
  return __double2float_rn(__dadd_rn(static_cast<double>(d), __dmul_rn(alpha, s)));
}
template <typename S>
__global__ void add_f32_from16_kernel(float* __restrict__ d, const S* __restrict__ s, double alpha,
                                      int64_t n) {
  const int64_t n4 = n / 4;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; q < n4;
       q += stride) {
    float4 dv = reinterpret_cast<float4*>(d)[q];
    const uint2 raw = reinterpret_cast<const uint2*>(s)[q];
    const S* sv = reinterpret_cast<const S*>(&raw);
    dv.x = add_f64(dv.x, alpha, Elem<S>::load(sv, 0));
    dv.y = add_f64(dv.y, alpha, Elem<S>::load(sv, 1));
    dv.z = add_f64(dv.z, alpha, Elem<S>::load(sv, 2));
    dv.w = add_f64(dv.w, alpha, Elem<S>::load(sv, 3));
    reinterpret_cast<float4*>(d)[q] = dv;
  }
  for (int64_t i = n4 * 4 + static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride)
    d[i] = add_f64(d[i], alpha, Elem<S>::load(s, i));
}

// General add_: any dtypes and strides, in f64 as the CPU general path.
template <typename I>
__global__ void add_general_kernel(char* d, DType dt, const char* s, DType st, StridedIter<2> it,
                                   I n, double alpha) {
  for (I i = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<I>(gridDim.x) * blockDim.x) {
    I off[2];
    it.offsets(i, off);
    const double v =
        __dadd_rn(load_as_double(d, dt, off[0]), __dmul_rn(alpha, load_as_double(s, st, off[1])));
    store_from_double(d, dt, off[0], v);
  }
}

__global__ void mul_f32_kernel(float* __restrict__ d, float s, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    d[i] = __fmul_rn(d[i], s);
}

template <typename I>
__global__ void mul_general_kernel(char* d, DType dt, StridedIter<1> it, I n, double s) {
  for (I i = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<I>(gridDim.x) * blockDim.x) {
    I off[1];
    it.offsets(i, off);
    store_from_double(d, dt, off[0], __dmul_rn(load_as_double(d, dt, off[0]), s));
  }
}

}  // namespace

Tensor binary(BinaryOp op, const Tensor& a, const Tensor& b) {
  KILN_CHECK(a.dtype() == b.dtype() && a.device() == b.device())
      << "internal: CUDA binary op on " << a.str() << " and " << b.str();
  DeviceGuard guard(device_of(a));
  Shape out_shape(std::max(a.dim(), b.dim()));
  for (size_t i = 0; i < out_shape.size(); ++i) {  // shapes were checked by broadcast_shapes
    const int64_t ia = static_cast<int64_t>(i) - (static_cast<int64_t>(out_shape.size()) - a.dim());
    const int64_t ib = static_cast<int64_t>(i) - (static_cast<int64_t>(out_shape.size()) - b.dim());
    const int64_t da = ia >= 0 ? a.size(ia) : 1, db = ib >= 0 ? b.size(ib) : 1;
    out_shape[i] = da == 1 ? db : da;
  }
  Tensor out = Tensor::empty(out_shape, a.dtype(), a.device());
  if (out.numel() == 0) return out;
  KILN_CUDA_DISPATCH_STORAGE(a.dtype(), S, {
    switch (op) {
      case BinaryOp::kAdd:
        launch_binary<S, BinaryOp::kAdd>(a, b, out);
        break;
      case BinaryOp::kSub:
        launch_binary<S, BinaryOp::kSub>(a, b, out);
        break;
      case BinaryOp::kMul:
        launch_binary<S, BinaryOp::kMul>(a, b, out);
        break;
    }
  });
  return out;
}

Tensor binary_scalar(BinaryOp op, const Tensor& a, double s) {
  DeviceGuard guard(device_of(a));
  Tensor ac = raw::contiguous(a);
  Tensor out = Tensor::empty(a.shape(), a.dtype(), a.device());
  const int64_t n = out.numel();
  if (n == 0) return out;
  KILN_CUDA_DISPATCH_STORAGE(a.dtype(), S, {
    using C = typename Elem<S>::C;
    const S* pa = static_cast<const S*>(ac.raw());
    S* po = static_cast<S*>(out.raw());
    const C cs = static_cast<C>(s);
    cudaStream_t st = compute_stream();
    const unsigned grid = blocks_for(n, kThreads);
    switch (op) {
      case BinaryOp::kAdd:
        binary_scalar_kernel<S, BinaryOp::kAdd><<<grid, kThreads, 0, st>>>(pa, cs, po, n);
        break;
      case BinaryOp::kSub:
        binary_scalar_kernel<S, BinaryOp::kSub><<<grid, kThreads, 0, st>>>(pa, cs, po, n);
        break;
      case BinaryOp::kMul:
        binary_scalar_kernel<S, BinaryOp::kMul><<<grid, kThreads, 0, st>>>(pa, cs, po, n);
        break;
    }
    KILN_CUDA_CHECK_LAUNCH();
  });
  return out;
}

Tensor sum_to(const Tensor& x, const Shape& shape) {
  DeviceGuard guard(device_of(x));
  const int64_t nd = x.dim(), off = nd - static_cast<int64_t>(shape.size());
  std::vector<bool> reduce(nd, false);
  for (int64_t i = 0; i < nd; ++i) reduce[i] = i < off || (shape[i - off] == 1 && x.size(i) != 1);
  Tensor out = Tensor::empty(shape, x.dtype(), x.device());
  reduce_sum(x, reduce, out, 1.0, false);
  return out;
}

void add_inplace(const Tensor& dst, const Tensor& src, double alpha) {
  DeviceGuard guard(device_of(dst));
  const int64_t n = dst.numel();
  if (n == 0) return;
  cudaStream_t st = compute_stream();
  if (dst.dtype() == DType::kF32 && src.dtype() == DType::kF32 && dst.is_contiguous() &&
      src.is_contiguous()) {
    add_f32_kernel<<<blocks_for(n, kThreads), kThreads, 0, st>>>(
        dst.data<float>(), src.data<float>(), static_cast<float>(alpha), n);
    KILN_CUDA_CHECK_LAUNCH();
    return;
  }
  const bool aligned = reinterpret_cast<uintptr_t>(dst.raw()) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(src.raw()) % 8 == 0;
  if (dst.dtype() == DType::kF32 && (src.dtype() == DType::kBF16 || src.dtype() == DType::kF16) &&
      dst.is_contiguous() && src.is_contiguous() && aligned) {
    const int grid = blocks_for((n + 3) / 4, kThreads);
    if (src.dtype() == DType::kBF16) {
      add_f32_from16_kernel<__nv_bfloat16><<<grid, kThreads, 0, st>>>(
          dst.data<float>(), static_cast<const __nv_bfloat16*>(src.raw()), alpha, n);
    } else {
      add_f32_from16_kernel<__half><<<grid, kThreads, 0, st>>>(
          dst.data<float>(), static_cast<const __half*>(src.raw()), alpha, n);
    }
    KILN_CUDA_CHECK_LAUNCH();
    return;
  }
  StridedIter<2> it = make_strided_iter<2>(dst.shape(), {dst.strides(), src.strides()});
  char* d = static_cast<char*>(dst.raw());
  const char* s = static_cast<const char*>(src.raw());
  if (fits_int32(it, n)) {
    add_general_kernel<uint32_t><<<blocks_for(n, kThreads), kThreads, 0, st>>>(
        d, dst.dtype(), s, src.dtype(), it, static_cast<uint32_t>(n), alpha);
  } else {
    add_general_kernel<int64_t><<<blocks_for(n, kThreads), kThreads, 0, st>>>(
        d, dst.dtype(), s, src.dtype(), it, n, alpha);
  }
  KILN_CUDA_CHECK_LAUNCH();
}

void mul_inplace(const Tensor& dst, double s) {
  DeviceGuard guard(device_of(dst));
  const int64_t n = dst.numel();
  if (n == 0) return;
  cudaStream_t st = compute_stream();
  if (dst.dtype() == DType::kF32 && dst.is_contiguous()) {
    mul_f32_kernel<<<blocks_for(n, kThreads), kThreads, 0, st>>>(dst.data<float>(),
                                                                 static_cast<float>(s), n);
    KILN_CUDA_CHECK_LAUNCH();
    return;
  }
  StridedIter<1> it = make_strided_iter<1>(dst.shape(), {dst.strides()});
  char* d = static_cast<char*>(dst.raw());
  if (fits_int32(it, n)) {
    mul_general_kernel<uint32_t><<<blocks_for(n, kThreads), kThreads, 0, st>>>(
        d, dst.dtype(), it, static_cast<uint32_t>(n), s);
  } else {
    mul_general_kernel<int64_t>
        <<<blocks_for(n, kThreads), kThreads, 0, st>>>(d, dst.dtype(), it, n, s);
  }
  KILN_CUDA_CHECK_LAUNCH();
}

double sum_squares(const Tensor& x) {
  DeviceGuard guard(device_of(x));
  Tensor out = Tensor::empty({}, DType::kF64, x.device());
  reduce_sum(x, std::vector<bool>(x.dim(), true), out, 1.0, true);
  return out.item();  // one 8-byte copy; synchronises the compute stream
}

}  // namespace kiln::cuda
