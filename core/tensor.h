// Tensor: a cheap, shared handle to (storage, shape, strides, offset, dtype) plus autograd
// metadata. Copies of a Tensor share everything, grads and hooks included, as in PyTorch; views
// share storage only. Ops are free functions in core/ops/*.h; the view methods here are their thin
// wrappers.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/allocator.h"
#include "core/dtype.h"

namespace kiln {

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);
int64_t shape_numel(const Shape& s);
Shape contiguous_strides(const Shape& s);

class Node;
class Tensor;
struct TensorImpl;

// Called once per backward pass when a leaf's gradient for that pass is complete (all of its uses
// have contributed). Data parallel and ZeRO start communication from here.
using GradReadyHook = std::function<void(Tensor& leaf)>;

class Tensor {
 public:
  Tensor() = default;  // undefined
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // ---- factories (contiguous results) ----
  static Tensor empty(const Shape& shape, DType dtype = DType::kF32, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype = DType::kF32, Device device = Device::cpu());
  static Tensor full(const Shape& shape, double value, DType dtype = DType::kF32,
                     Device device = Device::cpu());
  // Values are rounded to `dtype`. REQUIRES: values.size() == numel(shape).
  static Tensor from_vector(const std::vector<double>& values, const Shape& shape,
                            DType dtype = DType::kF32, Device device = Device::cpu());
  static Tensor from_ints(const std::vector<int64_t>& values, const Shape& shape,
                          DType dtype = DType::kI64, Device device = Device::cpu());
  static Tensor scalar(double v, DType dtype = DType::kF32, Device device = Device::cpu()) {
    return full({}, v, dtype, device);
  }

  // ---- metadata ----
  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const;
  const Shape& strides() const;
  int64_t offset() const;
  int64_t dim() const { return static_cast<int64_t>(shape().size()); }
  int64_t size(int64_t d) const;  // negative d counts from the end
  int64_t numel() const;
  DType dtype() const;
  Device device() const;
  bool is_contiguous() const;
  size_t nbytes() const { return numel() * dtype_size(dtype()); }
  std::string str() const;  // "f32[2, 3] cpu"
  const std::string& name() const;
  Tensor& set_name(std::string n);

  // ---- raw data (CPU or CUDA pointer at this tensor's offset) ----
  void* raw() const;
  template <typename T>
  T* data() const {
    return static_cast<T*>(raw());
  }
  // Whether raw() lies on a multiple of `bytes` (vectorised kernels' precondition).
  bool aligned_to(size_t bytes) const { return reinterpret_cast<uintptr_t>(raw()) % bytes == 0; }
  const std::shared_ptr<Storage>& storage() const;

  // ---- copies and conversions (differentiable where it makes sense) ----
  Tensor contiguous() const;
  Tensor clone() const;
  Tensor to(DType t) const;
  Tensor to(Device d) const;
  Tensor detach() const;                  // shares storage, no autograd history
  std::vector<double> to_vector() const;  // any dtype, any device
  std::vector<int64_t> to_ints() const;
  double item() const;  // REQUIRES: numel() == 1

  // In place, without autograd (optimizers, init, grad accumulation).
  void copy_(const Tensor& src);  // same shape; converts dtype and device
  void fill_(double v);
  void zero_() { fill_(0.0); }

  // ---- views ----
  Tensor reshape(const Shape& s) const;  // -1 infers one dim; copies only when non-contiguous
  Tensor transpose(int64_t d0, int64_t d1) const;
  Tensor permute(const std::vector<int64_t>& dims) const;
  Tensor narrow(int64_t dim, int64_t start, int64_t length) const;

  // ---- autograd ----
  bool requires_grad() const;
  Tensor& set_requires_grad(bool r);
  bool is_leaf() const;
  const std::shared_ptr<Node>& grad_fn() const;
  int output_nr() const;
  // The leaf's gradient; a stale one (mark_grad_stale) is zeroed first (on the CPU, or in order
  // on its device's compute stream) and is then current again.
  Tensor grad() const;
  void set_grad(const Tensor& g);  // the new gradient is current
  // Lazy zero_grad for a gradient buffer that must stay allocated (data parallel's flat
  // buffers): the values left in .grad now count as zeros, without touching the memory. The next
  // grad() zeroes it; autograd's accumulation instead writes the first gradient over it (a copy
  // rather than an add, a beta = 0 GEMM: accumulation_target). No-op without a .grad.
  void mark_grad_stale() const;
  bool grad_stale() const;
  void zero_grad() { set_grad(Tensor()); }
  void register_grad_ready_hook(GradReadyHook hook);
  void backward(const Tensor& grad = Tensor()) const;  // grad defaults to 1 for a scalar

  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  bool same(const Tensor& o) const { return impl_ == o.impl_; }

 private:
  std::shared_ptr<TensorImpl> impl_;
};

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape;
  Shape strides;       // in elements
  int64_t offset = 0;  // in elements
  DType dtype = DType::kF32;
  std::string name;
  // autograd
  bool requires_grad = false;
  std::shared_ptr<Node> grad_fn;  // null for leaves
  int output_nr = 0;
  Tensor grad;
  bool grad_stale = false;  // grad's values count as zeros (Tensor::mark_grad_stale)
  std::weak_ptr<Node> grad_accumulator;
  std::vector<GradReadyHook> ready_hooks;
};

std::ostream& operator<<(std::ostream& os, const Tensor& t);

}  // namespace kiln
