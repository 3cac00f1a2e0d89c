// Lazy zero_grad (Tensor::mark_grad_stale, core/tensor.h): a stale .grad reads as zeros through
// grad(), autograd's accumulation writes its first gradient over it (a copy, not an add),
// accumulation_target either zeroes it for a node that adds or hands it over as claimed
// (*overwrite) to a node that writes it, and a concat's targets are claimed all together or not
// at all. The old values are 7s throughout, so any add into them shows.
#include <gtest/gtest.h>

#include <vector>

#include "core/autograd.h"
#include "core/ops/elementwise.h"
#include "core/ops/reduce.h"
#include "core/ops/view.h"

namespace kiln {
namespace {

Tensor f32(const std::vector<double>& v, const Shape& s) {
  return Tensor::from_vector(v, s).to(DType::kF32);
}

// A leaf (2 x 2, f32) whose .grad holds 7s from an earlier step.
Tensor leaf_with_old_grad() {
  Tensor w = f32({1, 2, 3, 4}, {2, 2}).detach().set_requires_grad(true);
  w.set_grad(Tensor::full({2, 2}, 7.0, DType::kF32));
  return w;
}

TEST(StaleGrad, ReadsAsZerosThenIsCurrent) {
  Tensor w = leaf_with_old_grad();
  const Tensor buffer = w.grad();
  w.mark_grad_stale();
  EXPECT_TRUE(w.grad_stale());
  EXPECT_EQ(w.grad().to_vector(), std::vector<double>(4, 0.0));
  EXPECT_FALSE(w.grad_stale());
  EXPECT_TRUE(w.grad().same(buffer)) << "the same buffer, zeroed in place";
  Tensor none = f32({1}, {1}).detach().set_requires_grad(true);
  none.mark_grad_stale();  // no .grad: nothing to mark
  EXPECT_FALSE(none.grad_stale());
  w.mark_grad_stale();
  w.set_grad(Tensor::full({2, 2}, 3.0, DType::kF32));
  EXPECT_FALSE(w.grad_stale()) << "a new gradient is current";
}

// loss = sum(x * w) in f64 through a cast: d loss / d w = x.
TEST(StaleGrad, AccumulationWritesOverAStaleGradAndAddsToACurrentOne) {
  Tensor w = leaf_with_old_grad();
  const Tensor buffer = w.grad();
  const Tensor x = Tensor::from_vector({1, -2, 0.5, 3}, {2, 2}, DType::kF64);
  w.mark_grad_stale();
  sum(mul(w.to(DType::kF64), x)).backward();
  EXPECT_FALSE(w.grad_stale());
  EXPECT_EQ(w.grad().to_vector(), (std::vector<double>{1, -2, 0.5, 3}));
  EXPECT_TRUE(w.grad().same(buffer)) << "written into the kept buffer";
  sum(mul(w.to(DType::kF64), x)).backward();  // a second micro-step adds
  EXPECT_EQ(w.grad().to_vector(), (std::vector<double>{2, -4, 1, 6}));
}

// y = s * x for a leaf x: its backward asks accumulation_target for x's .grad and writes
// s * g into it (over it when claimed as stale, else added), returning the marker; with
// claim = false it asks without the overwrite pointer and adds.
class IntoLeafNode final : public Node {
 public:
  const char* name() const override { return "IntoLeaf"; }
  double s = 1;
  bool claim = true;
  int* overwrites = nullptr;
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    Tensor gx = scale(g[0], s).to(DType::kF32);
    bool overwrite = false;
    Tensor into =
        accumulation_target(next[0], gx.shape(), gx.device(), claim ? &overwrite : nullptr);
    if (!into.defined()) return {gx};
    if (overwrite) {
      into.copy_(gx);
      ++*overwrites;
    } else {
      add_(into, gx);
    }
    return {accumulated_marker()};
  }
};

Tensor into_leaf(const Tensor& x, double s, bool claim, int* overwrites) {
  Tensor y = scale(x.detach(), s);
  if (auto n = record<IntoLeafNode>({&x})) {
    n->s = s;
    n->claim = claim;
    n->overwrites = overwrites;
    set_history(y, n);
  }
  return y;
}

TEST(StaleGrad, AccumulationTargetHandsAStaleGradOverOnlyToAClaim) {
  for (bool claim : {true, false}) {
    Tensor w = leaf_with_old_grad();
    int overwrites = 0;
    w.mark_grad_stale();
    sum(into_leaf(w, 2.0, claim, &overwrites)).backward();
    EXPECT_FALSE(w.grad_stale()) << "claim " << claim;
    EXPECT_EQ(w.grad().to_vector(), std::vector<double>(4, 2.0)) << "claim " << claim;
    EXPECT_EQ(overwrites, claim ? 1 : 0);
    sum(into_leaf(w, 2.0, claim, &overwrites)).backward();
    EXPECT_EQ(w.grad().to_vector(), std::vector<double>(4, 4.0)) << "current: added";
    EXPECT_EQ(overwrites, claim ? 1 : 0);
  }
}

// A tied leaf: one use writes over the stale .grad through its claim, the other's gradient is
// then added (the engine drops the marker where it meets a real gradient, so only the claim may
// clear the mark).
TEST(StaleGrad, ATiedLeafClaimedByOneUseIsAddedToByTheOther) {
  Tensor w = leaf_with_old_grad();
  int overwrites = 0;
  w.mark_grad_stale();
  sum(add(into_leaf(w, 2.0, true, &overwrites), scale(w, 3.0))).backward();
  EXPECT_EQ(overwrites, 1);
  EXPECT_EQ(w.grad().to_vector(), std::vector<double>(4, 5.0));
}

TEST(StaleGrad, ConcatTargetsAreClaimedAllOrNone) {
  Tensor a = leaf_with_old_grad();
  Tensor b = f32({5, 6}, {1, 2}).detach().set_requires_grad(true);  // no .grad yet
  Tensor whole = concat({a.to(DType::kF64), b.to(DType::kF64)}, 0);
  a.mark_grad_stale();
  std::vector<char> overwrite{9};
  Edge e{whole.grad_fn(), whole.output_nr()};
  EXPECT_TRUE(concat_accumulation_targets(e, Device::cpu(), &overwrite).empty());
  EXPECT_TRUE(overwrite.empty());
  EXPECT_TRUE(a.grad_stale()) << "nothing claimed when one piece offers no .grad";
  b.set_grad(Tensor::full({1, 2}, 7.0, DType::kF32));
  const std::vector<Tensor> into = concat_accumulation_targets(e, Device::cpu(), &overwrite);
  ASSERT_EQ(into.size(), 2u);
  EXPECT_EQ(overwrite, (std::vector<char>{1, 0}));
  EXPECT_FALSE(a.grad_stale());
  b.mark_grad_stale();
  EXPECT_EQ(concat_accumulation_targets(e, Device::cpu()).size(), 2u);  // unclaimed: zeroed
  EXPECT_FALSE(b.grad_stale());
  EXPECT_EQ(b.grad().to_vector(), (std::vector<double>{0, 0}));
}

}  // namespace
}  // namespace kiln
