// The CUDA halves of raw::copy and raw::fill (core/backend.h): any combination of host and device
// tensors, any strides, any dtypes. Only compiled with KILN_WITH_CUDA.
#pragma once

#include "core/tensor.h"

namespace kiln::cuda {

// dst and src have the same shape; at least one is a CUDA tensor. Contiguous same-dtype copies are
// one cudaMemcpyAsync on the compute stream (host reads synchronise first); everything else is
// staged to the device and converted by a strided kernel. Conversions round as the CPU does.
void copy_tensor(const Tensor& dst, const Tensor& src);
// Sets every element of the CUDA tensor dst to v (rounded to dst's dtype as the CPU does).
void fill_tensor(const Tensor& dst, double v);

// Device-to-device strided, dtype-converting copy on the current device's compute stream.
// REQUIRES: same shape, both on the current device.
void convert_on_device(const Tensor& dst, const Tensor& src);

}  // namespace kiln::cuda
