// nn::Module: a tree of named submodules and parameters. Names are hierarchical ("h.3.attn.c_attn.
// weight"); checkpoints, sharding, optimizers and export all key on them. How tensor parallelism
// splits a parameter is not stored here: models declare it as data keyed by these names
// (parallel/tp_plan.h), so parallel wrappers act from outside.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace kiln::nn {

struct Parameter {
  std::string name;   // full hierarchical name
  Tensor tensor;      // a leaf requiring grad
  bool decay = true;  // weight decay applies (default rule: >= 2-D weights decay, others do not)
};

class Module {
 public:
  virtual ~Module() = default;
  Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // All parameters of this module and its children, depth-first in registration order.
  std::vector<Parameter> parameters() const;
  std::vector<std::pair<std::string, Module*>> named_modules();
  int64_t num_parameters() const;
  // Moves every parameter to `device` in place (the Tensor handles stay valid).
  void to(Device device);
  void set_training(bool t);
  bool training() const { return training_; }

 protected:
  Tensor& register_parameter(const std::string& name, Tensor t);
  template <typename M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    children_.emplace_back(name, m);
    return m;
  }

 private:
  void collect(const std::string& prefix, std::vector<Parameter>* out) const;

  std::vector<Parameter> params_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
};

}  // namespace kiln::nn
