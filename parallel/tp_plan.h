// The tensor-parallel plan as data: for every parameter of a model, how tensor parallelism splits
// it (Megatron-LM's column / row / vocab-parallel layers, sequence-parallel norms). Models declare
// their plan (models::LanguageModel::tensor_parallel_plan); the tensor-parallel wrapper and the
// checkpoint code act on it from outside, so models never mention ranks. tp_boxes / tp_slice give
// one rank's share of a full weight.
#pragma once

#include <string>
#include <vector>

#include "core/tensor.h"
#include "parallel/box.h"

namespace kiln::parallel {

enum class TpStyle {
  kReplicated,  // every tp rank holds all of it (GPT-2's position embedding)
  kColumn,      // column-parallel linear: weight (OUT, IN) and bias (OUT) split along OUT (dim 0)
  kRow,         // row-parallel linear: weight (OUT, IN) split along IN (dim 1); its bias is not
                // split (added once, after the all-reduce of the partial outputs)
  kVocab,       // vocab-parallel embedding / classifier: (V, C) split along V (dim 0)
  kSequence,    // a norm's weights: replicated; under sequence parallel the norm runs on the
                // rank's shard of the sequence, and its gradients are summed over tp
};

const char* tp_style_name(TpStyle s);

struct TpEntry {
  std::string name;  // parameter name, as nn::Module::parameters() gives it
  TpStyle style = TpStyle::kReplicated;
  int dim = -1;  // the dimension split over tp ranks; -1: not split (replicated on every rank)
  // Fused weights: the split dimension holds `partitions` equal blocks that are split separately,
  // each rank taking its chunk of every block (GPT-2's c_attn (3C, C) holds q, k and v: 3, so a
  // rank gets its heads' rows of q, of k and of v, never a mix).
  int partitions = 1;
};

struct TpPlan {
  std::vector<TpEntry> entries;  // one per parameter, in parameters() order
  // The entry for a parameter, or nullptr.
  const TpEntry* find(const std::string& name) const;
};

// Rank `rank` of `tp`'s share of a tensor of `shape` under `e`, as boxes in the order the rank
// stores them (concatenated along e.dim): one box per partition, or the whole tensor when `e` does
// not split. REQUIRES: 0 <= rank < tp; the split dimension divisible by partitions * tp.
std::vector<Box> tp_boxes(const TpEntry& e, const Shape& shape, int tp, int rank);

// The rank's slice of the full tensor `full` (a new contiguous tensor): its boxes concatenated
// along e.dim, i.e. exactly what the rank holds under tensor parallelism.
Tensor tp_slice(const Tensor& full, const TpEntry& e, int tp, int rank);

}  // namespace kiln::parallel
