// Raw (non-autograd) tensor primitives that every op builds on, dispatched by device: allocation of
// outputs, strided copy with dtype conversion, fill, and conversion to the compute dtype. The CUDA
// backend supplies its halves through CudaBackend when it is built and a GPU is present.
#pragma once

#include <initializer_list>

#include "core/tensor.h"

namespace kiln {

// Functions the CUDA backend registers at start-up (core/cuda/). Null when CUDA is absent.
struct CudaBackend {
  // dst and src have the same shape; either may be on the GPU; any strides and dtypes.
  void (*copy)(const Tensor& dst, const Tensor& src) = nullptr;
  void (*fill)(const Tensor& dst, double v) = nullptr;
  int (*device_count)() = nullptr;
  void (*synchronize)() = nullptr;
};
CudaBackend& cuda_backend();
bool cuda_available();

namespace raw {

void copy(const Tensor& dst, const Tensor& src);  // no autograd
void fill(const Tensor& dst, double v);
Tensor contiguous(const Tensor& t);            // self if already contiguous
Tensor convert(const Tensor& t, DType dtype);  // contiguous copy in dtype (self if already so)
// CPU reference kernels compute in f64 for f64 and in f32 for every other float dtype.
inline DType compute_dtype(DType t) { return t == DType::kF64 ? DType::kF64 : DType::kF32; }
// Contiguous copy of t in its compute dtype.
inline Tensor to_compute(const Tensor& t) { return convert(t, compute_dtype(t.dtype())); }

}  // namespace raw

// Argument checks shared by ops; each throws kiln::Error naming the op and the offending tensor.
void check_defined(const char* op, std::initializer_list<const Tensor*> ts);
void check_float(const char* op, std::initializer_list<const Tensor*> ts);
void check_same_dtype(const char* op, std::initializer_list<const Tensor*> ts);
void check_same_device(const char* op, std::initializer_list<const Tensor*> ts);
void check_dim(const char* op, const char* arg, const Tensor& t, int64_t dim);
// defined + floating + same dtype + same device, the common case.
void check_float_args(const char* op, std::initializer_list<const Tensor*> ts);
int64_t wrap_dim(const char* op, int64_t d, int64_t ndim);

}  // namespace kiln
