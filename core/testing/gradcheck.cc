// Finite-difference gradient checking for the op tests.
#include "core/testing/gradcheck.h"

#include <cmath>
#include <cstring>
#include <sstream>

#include "core/autograd.h"
#include "core/check.h"
#include "core/random.h"

namespace kiln::testing {
namespace {

double project(const Tensor& out, const std::vector<double>& r) {
  std::vector<double> v = out.to_vector();
  double s = 0;
  for (size_t i = 0; i < v.size(); ++i) s += v[i] * r[i];
  return s;
}

}  // namespace

Tensor randn64(const Shape& shape, uint64_t seed) {
  Generator g(seed);
  return randn(shape, g, DType::kF64);
}

GradCheckResult gradcheck(const TensorFn& f, const std::vector<Tensor>& inputs, double eps,
                          double floor, std::vector<bool> check_mask) {
  if (check_mask.empty()) check_mask.assign(inputs.size(), true);
  std::vector<Tensor> xs;
  for (size_t i = 0; i < inputs.size(); ++i) {
    Tensor x = inputs[i].detach().clone();
    bool check = check_mask[i] && is_floating(x.dtype());
    if (check) {
      KILN_CHECK(x.dtype() == DType::kF64) << "gradcheck: input " << i << " must be f64";
      x.set_requires_grad(true);
    }
    check_mask[i] = check;
    xs.push_back(x);
  }
  Tensor out = f(xs);
  Generator g(12345);
  std::vector<double> r = randn(out.shape(), g, DType::kF64).to_vector();
  Tensor rt = Tensor::from_vector(r, out.shape(), out.dtype());
  KILN_CHECK(out.requires_grad()) << "gradcheck: output does not require grad";
  out.backward(rt);

  GradCheckResult res;
  for (size_t i = 0; i < xs.size(); ++i) {
    if (!check_mask[i]) continue;
    Tensor gx = xs[i].grad();
    std::vector<double> analytic =
        gx.defined() ? gx.to_vector() : std::vector<double>(xs[i].numel(), 0.0);
    Tensor x = xs[i].detach();  // shares storage: perturb in place
    KILN_CHECK(x.is_contiguous()) << "gradcheck: inputs must be contiguous";
    double* p = x.data<double>();
    for (int64_t j = 0; j < x.numel(); ++j) {
      const double orig = p[j];
      p[j] = orig + eps;
      double fp, fm;
      {
        NoGradGuard ng;
        fp = project(f(xs), r);
        p[j] = orig - eps;
        fm = project(f(xs), r);
      }
      p[j] = orig;
      const double numeric = (fp - fm) / (2 * eps);
      // A NaN or infinity on either side is a failure: std::max would silently drop a NaN.
      const bool finite = std::isfinite(analytic[j]) && std::isfinite(numeric);
      const double abs_err = finite ? std::fabs(analytic[j] - numeric) : INFINITY;
      const double rel =
          finite ? abs_err / std::max({std::fabs(analytic[j]), std::fabs(numeric), floor})
                 : INFINITY;
      res.max_abs_error = std::max(res.max_abs_error, abs_err);
      if (rel > res.max_rel_error || res.checked == 0) {
        res.max_rel_error = std::max(res.max_rel_error, rel);
        std::ostringstream os;
        os << "input " << i << " element " << j << ": analytic " << analytic[j] << " numeric "
           << numeric;
        res.worst = os.str();
      }
      ++res.checked;
    }
  }
  return res;
}

double max_scaled_error(const Tensor& a, const Tensor& b, double atol, double rtol) {
  KILN_CHECK(a.shape() == b.shape()) << a.str() << " vs " << b.str();
  std::vector<double> va = a.to_vector(), vb = b.to_vector();
  double worst = 0;
  for (size_t i = 0; i < va.size(); ++i) {
    double e = std::fabs(va[i] - vb[i]) / (atol + rtol * std::fabs(vb[i]));
    if (va[i] == vb[i] || (std::isnan(va[i]) && std::isnan(vb[i]))) e = 0;  // equal, or NaN both
    if (std::isnan(e)) e = INFINITY;  // inf vs inf of opposite sign, NaN vs number
    if (std::isnan(va[i]) != std::isnan(vb[i])) e = INFINITY;
    worst = std::max(worst, e);
  }
  return worst;
}

bool bit_equal(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
  std::vector<double> va = a.to_vector(), vb = b.to_vector();
  return std::memcmp(va.data(), vb.data(), va.size() * sizeof(double)) == 0;
}

}  // namespace kiln::testing
