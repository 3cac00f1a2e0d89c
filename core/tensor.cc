// Tensor factories, metadata and conversions. Differentiable views live in core/ops/view.cc.
#include "core/tensor.h"

#include <sstream>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/check.h"
#include "core/ops/view.h"

namespace kiln {

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

Shape contiguous_strides(const Shape& s) {
  Shape st(s.size());
  int64_t acc = 1;
  for (int64_t i = static_cast<int64_t>(s.size()) - 1; i >= 0; --i) {
    st[i] = acc;
    acc *= s[i];
  }
  return st;
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape) KILN_CHECK(d >= 0) << "negative dimension in shape " << shape_str(shape);
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::make_shared<Storage>(shape_numel(shape) * dtype_size(dtype), device);
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  return full(shape, 0.0, dtype, device);
}

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  raw::fill(t, value);
  return t;
}

Tensor Tensor::from_vector(const std::vector<double>& values, const Shape& shape, DType dtype,
                           Device device) {
  KILN_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape))
      << "from_vector: " << values.size() << " values for shape " << shape_str(shape);
  Tensor host = empty(shape, DType::kF64);
  std::copy(values.begin(), values.end(), host.data<double>());
  if (dtype == DType::kF64 && device.is_cpu()) return host;
  Tensor out = empty(shape, dtype, device);
  raw::copy(out, host);
  return out;
}

Tensor Tensor::from_ints(const std::vector<int64_t>& values, const Shape& shape, DType dtype,
                         Device device) {
  KILN_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape))
      << "from_ints: " << values.size() << " values for shape " << shape_str(shape);
  Tensor host = empty(shape, DType::kI64);
  std::copy(values.begin(), values.end(), host.data<int64_t>());
  if (dtype == DType::kI64 && device.is_cpu()) return host;
  Tensor out = empty(shape, dtype, device);
  raw::copy(out, host);
  return out;
}

#define KILN_DEFINED() KILN_CHECK(impl_ != nullptr) << "use of an undefined tensor"

const Shape& Tensor::shape() const {
  KILN_DEFINED();
  return impl_->shape;
}
const Shape& Tensor::strides() const {
  KILN_DEFINED();
  return impl_->strides;
}
int64_t Tensor::offset() const {
  KILN_DEFINED();
  return impl_->offset;
}
int64_t Tensor::size(int64_t d) const { return shape()[wrap_dim("size", d, dim())]; }
int64_t Tensor::numel() const { return shape_numel(shape()); }
DType Tensor::dtype() const {
  KILN_DEFINED();
  return impl_->dtype;
}
Device Tensor::device() const {
  KILN_DEFINED();
  return impl_->storage->device();
}
bool Tensor::is_contiguous() const {
  const Shape& s = shape();
  const Shape& st = strides();
  int64_t acc = 1;
  for (int64_t i = static_cast<int64_t>(s.size()) - 1; i >= 0; --i) {
    if (s[i] != 1 && st[i] != acc) return false;
    acc *= s[i];
  }
  return true;
}
std::string Tensor::str() const {
  if (!impl_) return "undefined";
  return std::string(dtype_name(dtype())) + shape_str(shape()) + " " + device().str();
}
const std::string& Tensor::name() const {
  KILN_DEFINED();
  return impl_->name;
}
Tensor& Tensor::set_name(std::string n) {
  KILN_DEFINED();
  impl_->name = std::move(n);
  return *this;
}
void* Tensor::raw() const {
  KILN_DEFINED();
  return static_cast<char*>(impl_->storage->data()) + impl_->offset * dtype_size(impl_->dtype);
}
const std::shared_ptr<Storage>& Tensor::storage() const {
  KILN_DEFINED();
  return impl_->storage;
}

Tensor Tensor::contiguous() const { return kiln::contiguous(*this); }
Tensor Tensor::clone() const { return kiln::clone(*this); }
Tensor Tensor::to(DType t) const { return kiln::cast(*this, t); }
Tensor Tensor::to(Device d) const { return kiln::to_device(*this, d); }

Tensor Tensor::detach() const {
  KILN_DEFINED();
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = impl_->storage;
  impl->shape = impl_->shape;
  impl->strides = impl_->strides;
  impl->offset = impl_->offset;
  impl->dtype = impl_->dtype;
  impl->name = impl_->name;
  return Tensor(std::move(impl));
}

std::vector<double> Tensor::to_vector() const {
  Tensor host = empty(shape(), DType::kF64);
  raw::copy(host, *this);
  return std::vector<double>(host.data<double>(), host.data<double>() + host.numel());
}

std::vector<int64_t> Tensor::to_ints() const {
  Tensor host = empty(shape(), DType::kI64);
  raw::copy(host, *this);
  return std::vector<int64_t>(host.data<int64_t>(), host.data<int64_t>() + host.numel());
}

double Tensor::item() const {
  KILN_CHECK(numel() == 1) << "item() on a tensor with " << numel() << " elements: " << str();
  return to_vector()[0];
}

void Tensor::copy_(const Tensor& src) { raw::copy(*this, src); }
void Tensor::fill_(double v) { raw::fill(*this, v); }

Tensor Tensor::reshape(const Shape& s) const { return kiln::reshape(*this, s); }
Tensor Tensor::transpose(int64_t d0, int64_t d1) const { return kiln::transpose(*this, d0, d1); }
Tensor Tensor::permute(const std::vector<int64_t>& dims) const {
  return kiln::permute(*this, dims);
}
Tensor Tensor::narrow(int64_t d, int64_t start, int64_t length) const {
  return kiln::narrow(*this, d, start, length);
}

bool Tensor::requires_grad() const { return impl_ && impl_->requires_grad; }
Tensor& Tensor::set_requires_grad(bool r) {
  KILN_DEFINED();
  KILN_CHECK(!r || is_floating(dtype())) << "only floating tensors can require grad: " << str();
  KILN_CHECK(impl_->grad_fn == nullptr) << "set_requires_grad on a non-leaf tensor " << str();
  impl_->requires_grad = r;
  return *this;
}
bool Tensor::is_leaf() const { return impl_ && impl_->grad_fn == nullptr; }
const std::shared_ptr<Node>& Tensor::grad_fn() const {
  KILN_DEFINED();
  return impl_->grad_fn;
}
int Tensor::output_nr() const { return impl_->output_nr; }
Tensor Tensor::grad() const {
  KILN_DEFINED();
  if (impl_->grad_stale) {
    impl_->grad_stale = false;
    impl_->grad.zero_();
  }
  return impl_->grad;
}
void Tensor::set_grad(const Tensor& g) {
  KILN_DEFINED();
  KILN_CHECK(!g.defined() || g.shape() == shape())
      << "set_grad: gradient " << g.str() << " for tensor " << str();
  impl_->grad = g;
  impl_->grad_stale = false;
}
void Tensor::mark_grad_stale() const {
  KILN_DEFINED();
  impl_->grad_stale = impl_->grad.defined();
}
bool Tensor::grad_stale() const {
  KILN_DEFINED();
  return impl_->grad_stale;
}
void Tensor::register_grad_ready_hook(GradReadyHook hook) {
  KILN_DEFINED();
  KILN_CHECK(is_leaf() && requires_grad())
      << "grad-ready hooks go on leaves that require grad: " << str();
  impl_->ready_hooks.push_back(std::move(hook));
}
void Tensor::backward(const Tensor& grad) const { kiln::backward({*this}, {grad}); }

std::ostream& operator<<(std::ostream& os, const Tensor& t) { return os << t.str(); }

}  // namespace kiln
