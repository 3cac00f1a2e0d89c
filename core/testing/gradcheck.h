// Test helpers: f64 central-finite-difference gradient checks and tensor comparisons.
//
// gradcheck(f, inputs) projects f's output on a fixed random tensor R (loss = sum(f(x) * R)), takes
// d loss / d x analytically through kiln's autograd and numerically by central differences with
// step eps, and reports the worst element's error. Per element,
//   rel_err = |analytic - numeric| / max(|analytic|, |numeric|, floor)
// where floor (1e-3 by default) keeps round-off near a zero gradient from reading as a relative
// error: in f64 the numeric gradient carries about 1e-16 * |loss| / eps of round-off, ~1e-9
// absolute here.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace kiln::testing {

struct GradCheckResult {
  double max_rel_error = 0;
  double max_abs_error = 0;
  std::string worst;  // "input 1 element 7: analytic 0.123 numeric 0.124"
  int64_t checked = 0;
};

using TensorFn = std::function<Tensor(const std::vector<Tensor>&)>;

// Inputs with a floating dtype must be f64; they are checked unless check_mask says otherwise.
GradCheckResult gradcheck(const TensorFn& f, const std::vector<Tensor>& inputs, double eps = 1e-6,
                          double floor = 1e-3, std::vector<bool> check_mask = {});

// Random f64 tensor, normal(0, 1), from a fixed seed.
Tensor randn64(const Shape& shape, uint64_t seed);

// max |a - b| / (atol + rtol * |b|) over elements (<= 1 means within tolerance); shapes must match.
double max_scaled_error(const Tensor& a, const Tensor& b, double atol, double rtol);
// True when every element of a and b has the same bits (after conversion to f64).
bool bit_equal(const Tensor& a, const Tensor& b);

}  // namespace kiln::testing
