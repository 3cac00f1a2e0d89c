// Test helper: CUDA-device tensors on a machine without CUDA, so tests can check that an op with
// only a CPU kernel rejects them with a clear error. The memory is host memory from a stand-in
// allocator registered only while a FakeCudaTensor is being made; nothing may read it as device
// memory. Where a real GPU is present the tensor is a real CUDA tensor.
#pragma once

#include <cstdlib>

#include "core/allocator.h"
#include "core/backend.h"
#include "core/tensor.h"

namespace kiln::testing {

class HostBackedFakeCudaAllocator final : public Allocator {
 public:
  void* allocate(size_t nbytes) override { return std::calloc(nbytes == 0 ? 1 : nbytes, 1); }
  void deallocate(void* p, size_t) override { std::free(p); }
  MemoryStats stats() const override { return {}; }
  void reset_peak() override {}
  void empty_cache() override {}
};

// A zero-initialised tensor whose device() is cuda:0.
inline Tensor fake_cuda_tensor(const Shape& shape, DType dtype = DType::kF32) {
  if (cuda_available()) return Tensor::zeros(shape, dtype, Device::cuda(0));
  static HostBackedFakeCudaAllocator* alloc = new HostBackedFakeCudaAllocator();  // outlives all
  register_cuda_allocator(alloc);
  Tensor t = Tensor::empty(shape, dtype, Device::cuda(0));
  register_cuda_allocator(nullptr);
  return t;
}

}  // namespace kiln::testing
