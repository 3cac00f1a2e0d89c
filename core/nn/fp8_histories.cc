// fp8 delayed-scaling histories to and from plain records (see fp8_histories.h).
#include "core/nn/fp8_histories.h"

#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/nn/layers.h"

namespace kiln::nn {
namespace {

constexpr std::pair<const char*, Fp8History Fp8LinearScaling::*> kRoles[] = {
    {"x", &Fp8LinearScaling::x}, {"w", &Fp8LinearScaling::w}, {"gy", &Fp8LinearScaling::gy}};

}  // namespace

std::vector<Fp8HistoryRecord> fp8_history_records(Module& root) {
  std::vector<Fp8HistoryRecord> out;
  for (const auto& [name, m] : root.named_modules()) {
    const auto* lin = dynamic_cast<const Linear*>(m);
    if (lin == nullptr || lin->fp8_scaling_if_made() == nullptr) continue;
    for (const auto& [role, member] : kRoles) {
      const Fp8History& h = (*lin->fp8_scaling_if_made()).*member;
      if (!h.slots.defined() || h.uses == 0) continue;
      std::vector<float> slots;
      for (double v : h.slots.to(Device::cpu()).to_vector()) slots.push_back(static_cast<float>(v));
      out.push_back({name + "/" + role, std::move(slots), h.uses});
    }
  }
  return out;
}

absl::Status restore_fp8_histories(Module& root, const std::vector<Fp8HistoryRecord>& records) {
  if (!fp8_delayed_scaling()) return absl::OkStatus();
  std::map<std::string, Linear*> linears;
  for (const auto& [name, m] : root.named_modules())
    if (auto* lin = dynamic_cast<Linear*>(m)) linears.emplace(name, lin);
  for (const Fp8HistoryRecord& r : records) {
    const size_t slash = r.name.rfind('/');
    const std::string module = slash == std::string::npos ? r.name : r.name.substr(0, slash);
    const std::string role = slash == std::string::npos ? "" : r.name.substr(slash + 1);
    auto it = linears.find(module);
    if (it == linears.end())
      return absl::InvalidArgumentError(
          absl::StrCat("fp8 history '", r.name, "': no Linear layer '", module, "' in this model"));
    Fp8History Fp8LinearScaling::*member = nullptr;
    for (const auto& [name, m] : kRoles)
      if (role == name) member = m;
    if (member == nullptr)
      return absl::InvalidArgumentError(
          absl::StrCat("fp8 history '", r.name, "': role '", role, "' is not x, w or gy"));
    if (r.slots.size() != 3 || r.uses < 1)
      return absl::InvalidArgumentError(absl::StrCat("fp8 history '", r.name, "': ", r.slots.size(),
                                                     " amaxes and ", r.uses,
                                                     " uses (want 3 amaxes, uses >= 1)"));
    Fp8History& h = (*it->second->fp8_scaling()).*member;
    h.slots =
        Tensor::from_vector(std::vector<double>(r.slots.begin(), r.slots.end()), {3}, DType::kF32)
            .to(it->second->weight.device());
    h.uses = r.uses;
  }
  return absl::OkStatus();
}

}  // namespace kiln::nn
