// Local (tp-sliced, ZeRO-sharded) pieces to global checkpoint pieces (see checkpoint_tp.h).
#include "launch/checkpoint_tp.h"

#include "core/autograd.h"
#include "core/check.h"
#include "launch/checkpoint.h"

namespace kiln::launch {
namespace {

// The parameter a piece belongs to: "exp_avg/h.0.mlp.c_fc.weight" -> "h.0.mlp.c_fc.weight".
std::string parameter_of(const std::string& piece_name) {
  const size_t slash = piece_name.find('/');
  return slash == std::string::npos ? piece_name : piece_name.substr(slash + 1);
}

}  // namespace

const parallel::TpEntry* TpCoords::split_entry(const std::string& param) const {
  if (plan == nullptr || tp == 1) return nullptr;
  const parallel::TpEntry* e = plan->find(param);
  return e != nullptr && e->dim >= 0 ? e : nullptr;
}

Shape tp_global_shape(const TpCoords& tp, const std::string& name, const Shape& local) {
  Shape g = local;
  if (const parallel::TpEntry* e = tp.split_entry(name)) g[e->dim] *= tp.tp;
  return g;
}

std::vector<std::pair<std::string, Shape>> tp_global_shapes(const TpCoords& tp,
                                                            const std::vector<nn::Parameter>& ps) {
  std::vector<std::pair<std::string, Shape>> out;
  for (const nn::Parameter& p : ps)
    out.emplace_back(p.name, tp_global_shape(tp, p.name, p.tensor.shape()));
  return out;
}

std::vector<parallel::Piece> tp_global_pieces(const std::vector<parallel::Piece>& local,
                                              const TpCoords& tp, bool drop_replicated) {
  NoGradGuard ng;
  std::vector<parallel::Piece> out;
  for (const parallel::Piece& p : local) {
    const std::string param = parameter_of(p.name);
    const parallel::TpEntry* e = tp.split_entry(param);
    if (e == nullptr) {
      if (!drop_replicated) out.push_back(p);
      continue;
    }
    KILN_CHECK(!p.is_box()) << "checkpoint: local piece " << p.name << " is already a box";
    const Shape global = tp_global_shape(tp, param, p.global_shape);
    const std::vector<parallel::Box> parts = parallel::tp_boxes(*e, global, tp.tp, tp.rank);
    const Tensor flat = p.local.reshape({p.local.numel()});
    for (parallel::PlacedBox& b :
         parallel::place_concat_range(parts, e->dim, p.offset, p.local.numel())) {
      const int64_t n = parallel::box_volume(b.box);
      out.push_back(
          parallel::Piece::boxed(p.name, global, std::move(b.box), flat.narrow(0, b.at, n)));
    }
  }
  return out;
}

std::vector<parallel::Piece> checkpoint_pieces_to_save(parallel::DataParallel& dp, int dp_rank,
                                                       const TpCoords& tp) {
  if (dp.zero_stage() == 0 && dp_rank != 0) return {};
  const bool drop_replicated = tp.rank != 0;
  std::vector<parallel::Piece> out = tp_global_pieces(dp.parameter_pieces(), tp, drop_replicated);
  for (parallel::Piece& p : tp_global_pieces(dp.optimizer_pieces(), tp, drop_replicated)) {
    p.name = optimizer_tensor_name(p.name);
    out.push_back(std::move(p));
  }
  return out;
}

std::vector<parallel::Piece> checkpoint_pieces_to_load(parallel::DataParallel& dp,
                                                       const std::vector<nn::Parameter>& params,
                                                       const TpCoords& tp) {
  NoGradGuard ng;
  std::vector<parallel::Piece> local;
  if (dp.zero_stage() < 3) {
    for (const nn::Parameter& p : params)
      local.push_back({p.name, p.tensor.shape(), 0, p.tensor.reshape({p.tensor.numel()})});
  } else {
    local = dp.parameter_pieces();
  }
  std::vector<parallel::Piece> out = tp_global_pieces(local, tp, false);
  for (parallel::Piece& p : tp_global_pieces(dp.optimizer_pieces(), tp, false)) {
    p.name = optimizer_tensor_name(p.name);
    out.push_back(std::move(p));
  }
  return out;
}

}  // namespace kiln::launch
