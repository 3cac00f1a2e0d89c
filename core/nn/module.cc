// Module tree traversal and parameter movement.
#include "core/nn/module.h"

#include "core/backend.h"
#include "core/check.h"

namespace kiln::nn {

Tensor& Module::register_parameter(const std::string& name, Tensor t) {
  KILN_CHECK(t.defined()) << "register_parameter: " << name << " is undefined";
  for (const Parameter& p : params_) KILN_CHECK(p.name != name) << "duplicate parameter " << name;
  if (!t.requires_grad()) t.set_requires_grad(true);
  params_.push_back({name, t, t.dim() >= 2});
  return params_.back().tensor;
}

void Module::collect(const std::string& prefix, std::vector<Parameter>* out) const {
  for (const Parameter& p : params_) {
    Parameter q = p;
    q.name = prefix + p.name;
    out->push_back(q);
  }
  for (const auto& [name, child] : children_) child->collect(prefix + name + ".", out);
}

std::vector<Parameter> Module::parameters() const {
  std::vector<Parameter> out;
  collect("", &out);
  return out;
}

std::vector<std::pair<std::string, Module*>> Module::named_modules() {
  std::vector<std::pair<std::string, Module*>> out{{"", this}};
  for (auto& [name, child] : children_)
    for (auto& [sub, m] : child->named_modules())
      out.emplace_back(sub.empty() ? name : name + "." + sub, m);
  return out;
}

int64_t Module::num_parameters() const {
  int64_t n = 0;
  for (const Parameter& p : parameters()) n += p.tensor.numel();
  return n;
}

void Module::to(Device device) {
  for (auto& [name, m] : named_modules()) {
    for (Parameter& p : m->params_) {
      if (p.tensor.device() == device) continue;
      // Swap the storage under the same TensorImpl so every holder of the handle sees the move.
      Tensor moved = Tensor::empty(p.tensor.shape(), p.tensor.dtype(), device);
      raw::copy(moved, p.tensor);
      TensorImpl* impl = p.tensor.impl();
      impl->storage = moved.storage();
      impl->strides = moved.strides();
      impl->offset = 0;
      impl->grad = Tensor();
      impl->grad_stale = false;
      impl->grad_accumulator.reset();
    }
  }
}

void Module::set_training(bool t) {
  for (auto& [name, m] : named_modules()) m->training_ = t;
}

}  // namespace kiln::nn
