// CPU halves of the raw primitives, CUDA dispatch, and the shared argument checks.
#include "core/backend.h"

#include <cstring>

#include "core/check.h"
#include "core/cpu/elem.h"
#include "core/thread_pool.h"

namespace kiln {

#if KILN_WITH_CUDA
namespace cuda {
void register_backend(CudaBackend* b);  // core/cuda/runtime.cc
}
#endif

CudaBackend& cuda_backend() {
  static CudaBackend b;
#if KILN_WITH_CUDA
  static bool registered = [] {
    cuda::register_backend(&b);  // fills `b` and the CUDA allocator when a GPU is present
    return true;
  }();
  (void)registered;
#endif
  return b;
}

bool cuda_available() {
  return cuda_backend().device_count != nullptr && cuda_backend().device_count() > 0;
}

namespace raw {
namespace {

template <typename D, typename S>
void convert_loop(D* d, const S* s, int64_t n) {
  parallel_for(n, 1 << 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) d[i] = static_cast<D>(s[i]);
  });
}

void copy_cpu(const Tensor& dst, const Tensor& src) {
  const int64_t n = dst.numel();
  if (dst.is_contiguous() && src.is_contiguous()) {
    if (dst.dtype() == src.dtype()) {
      std::memcpy(dst.raw(), src.raw(), dst.nbytes());
      return;
    }
    if (dst.dtype() == DType::kF32 && src.dtype() == DType::kF64)
      return convert_loop(dst.data<float>(), src.data<double>(), n);
    if (dst.dtype() == DType::kF64 && src.dtype() == DType::kF32)
      return convert_loop(dst.data<double>(), src.data<float>(), n);
    if (dst.dtype() == DType::kF32 && src.dtype() == DType::kBF16) {
      float* d = dst.data<float>();
      const uint16_t* s = src.data<uint16_t>();
      return parallel_for(n, 1 << 16, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) d[i] = bf16_to_f32(s[i]);
      });
    }
    if (dst.dtype() == DType::kBF16 && src.dtype() == DType::kF32) {
      uint16_t* d = dst.data<uint16_t>();
      const float* s = src.data<float>();
      return parallel_for(n, 1 << 16, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) d[i] = f32_to_bf16(s[i]);
      });
    }
    void* d = dst.raw();
    const void* s = src.raw();
    DType dt = dst.dtype(), st = src.dtype();
    return parallel_for(n, 1 << 14, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) cpu::store(d, dt, i, cpu::load(s, st, i));
    });
  }
  // General strided path: walk dst and src in lockstep through linear indices.
  std::vector<int64_t> src_off(n);
  cpu::for_each_offset(src.shape(), src.strides(),
                       [&](int64_t lin, int64_t off) { src_off[lin] = off; });
  void* d = dst.raw();
  const void* s = src.raw();
  DType dt = dst.dtype(), st = src.dtype();
  if (dt == st) {
    const size_t es = dtype_size(dt);
    cpu::for_each_offset(dst.shape(), dst.strides(), [&](int64_t lin, int64_t off) {
      std::memcpy(static_cast<char*>(d) + off * es, static_cast<const char*>(s) + src_off[lin] * es,
                  es);
    });
    return;
  }
  cpu::for_each_offset(dst.shape(), dst.strides(), [&](int64_t lin, int64_t off) {
    cpu::store(d, dt, off, cpu::load(s, st, src_off[lin]));
  });
}

}  // namespace

void copy(const Tensor& dst, const Tensor& src) {
  KILN_CHECK(dst.shape() == src.shape())
      << "copy: shape " << shape_str(src.shape()) << " into " << shape_str(dst.shape());
  if (dst.numel() == 0) return;
  if (dst.device().is_cpu() && src.device().is_cpu()) return copy_cpu(dst, src);
  KILN_CHECK(cuda_backend().copy != nullptr)
      << "copy to/from " << dst.device() << "/" << src.device() << ": CUDA backend not available";
  cuda_backend().copy(dst, src);
}

void fill(const Tensor& dst, double v) {
  if (dst.numel() == 0) return;
  if (dst.device().is_cuda()) {
    KILN_CHECK(cuda_backend().fill != nullptr) << "fill on " << dst.device() << ": no CUDA backend";
    return cuda_backend().fill(dst, v);
  }
  void* d = dst.raw();
  DType t = dst.dtype();
  if (dst.is_contiguous()) {
    if (t == DType::kF32) {
      float* p = static_cast<float*>(d);
      float fv = static_cast<float>(v);
      return parallel_for(dst.numel(), 1 << 16, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) p[i] = fv;
      });
    }
    for (int64_t i = 0; i < dst.numel(); ++i) cpu::store(d, t, i, v);
    return;
  }
  cpu::for_each_offset(dst.shape(), dst.strides(),
                       [&](int64_t, int64_t off) { cpu::store(d, t, off, v); });
}

Tensor contiguous(const Tensor& t) {
  if (t.is_contiguous()) return t;
  Tensor out = Tensor::empty(t.shape(), t.dtype(), t.device());
  copy(out, t);
  return out;
}

Tensor convert(const Tensor& t, DType dtype) {
  if (t.dtype() == dtype) return contiguous(t);
  Tensor out = Tensor::empty(t.shape(), dtype, t.device());
  copy(out, t);
  return out;
}

}  // namespace raw

void check_defined(const char* op, std::initializer_list<const Tensor*> ts) {
  int i = 0;
  for (const Tensor* t : ts) {
    KILN_CHECK(t->defined()) << op << ": argument " << i << " is an undefined tensor";
    ++i;
  }
}

void check_float(const char* op, std::initializer_list<const Tensor*> ts) {
  for (const Tensor* t : ts) {
    KILN_CHECK(is_floating(t->dtype()) && t->dtype() != DType::kF8E4M3 &&
               t->dtype() != DType::kF8E5M2)
        << op << ": expected a floating tensor (f32, f64, bf16, f16), got " << t->str();
  }
}

void check_same_dtype(const char* op, std::initializer_list<const Tensor*> ts) {
  const Tensor* first = *ts.begin();
  for (const Tensor* t : ts) {
    KILN_CHECK(t->dtype() == first->dtype())
        << op << ": dtype mismatch, " << first->str() << " vs " << t->str();
  }
}

void check_same_device(const char* op, std::initializer_list<const Tensor*> ts) {
  const Tensor* first = *ts.begin();
  for (const Tensor* t : ts) {
    KILN_CHECK(t->device() == first->device())
        << op << ": device mismatch, " << first->str() << " vs " << t->str();
  }
}

void check_dim(const char* op, const char* arg, const Tensor& t, int64_t dim) {
  KILN_CHECK(t.dim() == dim) << op << ": " << arg << " must have " << dim << " dims, got "
                             << t.str();
}

void check_float_args(const char* op, std::initializer_list<const Tensor*> ts) {
  check_defined(op, ts);
  check_float(op, ts);
  check_same_dtype(op, ts);
  check_same_device(op, ts);
}

int64_t wrap_dim(const char* op, int64_t d, int64_t ndim) {
  int64_t w = d < 0 ? d + ndim : d;
  KILN_CHECK(w >= 0 && w < std::max<int64_t>(ndim, 1))
      << op << ": dim " << d << " out of range for a " << ndim << "-dim tensor";
  return w;
}

}  // namespace kiln
