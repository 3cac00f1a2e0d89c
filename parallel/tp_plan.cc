// Tensor-parallel plan lookup and per-rank slicing (see tp_plan.h).
#include "parallel/tp_plan.h"

#include "core/autograd.h"
#include "core/check.h"
#include "core/ops/view.h"

namespace kiln::parallel {

const char* tp_style_name(TpStyle s) {
  switch (s) {
    case TpStyle::kReplicated:
      return "replicated";
    case TpStyle::kColumn:
      return "column";
    case TpStyle::kRow:
      return "row";
    case TpStyle::kVocab:
      return "vocab";
    case TpStyle::kSequence:
      return "sequence";
  }
  return "?";
}

const TpEntry* TpPlan::find(const std::string& name) const {
  for (const TpEntry& e : entries)
    if (e.name == name) return &e;
  return nullptr;
}

std::vector<Box> tp_boxes(const TpEntry& e, const Shape& shape, int tp, int rank) {
  KILN_CHECK(tp >= 1 && rank >= 0 && rank < tp) << "tp_boxes: rank " << rank << " of " << tp;
  if (e.dim < 0 || tp == 1) return {whole_box(shape)};
  KILN_CHECK(e.dim < static_cast<int>(shape.size()) && e.partitions >= 1)
      << "tp_boxes: " << e.name << " splits dim " << e.dim << " of " << shape_str(shape);
  const int64_t size = shape[e.dim];
  KILN_CHECK(size % (int64_t{e.partitions} * tp) == 0)
      << "tp_boxes: " << e.name << ": dim " << e.dim << " of " << shape_str(shape) << " is not "
      << "divisible by " << e.partitions << " partition(s) x tp " << tp;
  const int64_t block = size / e.partitions, chunk = block / tp;
  std::vector<Box> out;
  for (int p = 0; p < e.partitions; ++p) {
    Box b = whole_box(shape);
    b.offset[e.dim] = p * block + rank * chunk;
    b.length[e.dim] = chunk;
    out.push_back(std::move(b));
  }
  return out;
}

Tensor tp_slice(const Tensor& full, const TpEntry& e, int tp, int rank) {
  NoGradGuard no_grad;
  std::vector<Tensor> parts;
  for (const Box& b : tp_boxes(e, full.shape(), tp, rank)) {
    Tensor t = full;
    for (size_t d = 0; d < b.offset.size(); ++d)
      if (b.length[d] != full.size(d)) t = t.narrow(d, b.offset[d], b.length[d]);
    parts.push_back(t.contiguous());
  }
  return parts.size() == 1 ? parts[0] : concat(parts, e.dim).contiguous();
}

}  // namespace kiln::parallel
