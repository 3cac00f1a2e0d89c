// Checkpoint reads: the manifest and its shard files checked, whole-checkpoint verification, and
// any layout's pieces read back from any other's (resharding; the box logic is in
// launch/checkpoint.h's header comment). The write side is launch/checkpoint.cc.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/backend.h"
#include "core/check.h"
#include "launch/checkpoint.h"
#include "launch/checkpoint_manifest.h"

namespace kiln::launch {
namespace fs = std::filesystem;
namespace {

constexpr int64_t kChunkBytes = int64_t{8} << 20;

Shape entry_shape(const TensorEntry& e) { return Shape(e.shape().begin(), e.shape().end()); }

// The boxes a stored entry holds, each placed at its first element in the entry's data.
std::vector<parallel::PlacedBox> entry_boxes(const TensorEntry& e) {
  if (e.box_offset_size() > 0)
    return {{{{e.box_offset().begin(), e.box_offset().end()},
              {e.box_length().begin(), e.box_length().end()}},
             0}};
  return parallel::place_flat_range(entry_shape(e), e.shard_offset(), e.shard_length());
}

// One copy out of a stored entry: run.src counts elements from the start of the entry's data,
// run.dst elements of want[want]'s staging buffer.
struct Copy {
  int want;
  parallel::BoxRun run;
};

// Reads stored entry `e` whole (in chunks), checks its CRC32C, and performs the copies (sorted by
// source element) into the staging buffers. With `non_finite`, adds the NaN / Inf values it read.
absl::Status read_entry(const std::string& path, const TensorEntry& e,
                        const std::vector<Copy>& copies, std::vector<float*>& staging,
                        std::map<std::string, std::ifstream>& files,
                        int64_t* non_finite = nullptr) {
  std::ifstream& in = files[e.file()];
  if (!in.is_open()) {
    in.open(path + "/" + e.file(), std::ios::binary);
    if (!in)
      return absl::NotFoundError(
          absl::StrCat("checkpoint ", path, ": cannot open shard file ", e.file()));
  }
  in.clear();
  in.seekg(e.file_offset());
  const int64_t total = e.shard_length() * 4;
  std::vector<char> buf(static_cast<size_t>(std::min(total, kChunkBytes)));
  uint32_t crc = 0;
  size_t first = 0;  // copies before it end before the current chunk
  for (int64_t done = 0; done < total;) {
    const int64_t n = std::min<int64_t>(total - done, kChunkBytes);
    in.read(buf.data(), n);
    if (in.gcount() != n)
      return absl::DataLossError(absl::StrFormat(
          "checkpoint %s: shard file %s is truncated: tensor '%s' needs bytes [%d, %d)", path,
          e.file(), e.name(), e.file_offset(), e.file_offset() + total));
    crc = crc32c_update(crc, buf.data(), static_cast<size_t>(n));
    if (non_finite != nullptr)
      for (int64_t i = 0; i < n / 4; ++i) {
        float v;
        std::memcpy(&v, buf.data() + i * 4, 4);
        *non_finite += std::isfinite(v) ? 0 : 1;
      }
    // Element range of this chunk within the entry's data.
    const int64_t c0 = done / 4, c1 = c0 + n / 4;
    while (first < copies.size() && copies[first].run.src + copies[first].run.len <= c0) ++first;
    for (size_t i = first; i < copies.size() && copies[i].run.src < c1; ++i) {
      const parallel::BoxRun& r = copies[i].run;
      const int64_t lo = std::max(r.src, c0), hi = std::min(r.src + r.len, c1);
      if (lo >= hi) continue;
      std::memcpy(staging[copies[i].want] + r.dst + (lo - r.src), buf.data() + (lo - c0) * 4,
                  static_cast<size_t>(hi - lo) * 4);
    }
    done += n;
  }
  if (crc != static_cast<uint32_t>(e.checksum()))
    return absl::DataLossError(absl::StrFormat(
        "checkpoint %s: checksum mismatch in tensor '%s' (%s, shard file %s at byte "
        "%d): stored %08x, read %08x; the file is corrupt",
        path, e.name(),
        e.box_offset_size() > 0 ? "box " + parallel::box_str(entry_boxes(e)[0].box)
                                : absl::StrFormat("elements [%d, %d)", e.shard_offset(),
                                                  e.shard_offset() + e.shard_length()),
        e.file(), e.file_offset(), static_cast<uint32_t>(e.checksum()), crc));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Manifest> read_checkpoint_manifest(const std::string& path, bool check_files) {
  const std::string mpath = path + "/" + kManifestFile;
  std::error_code ec;
  if (!fs::is_directory(path, ec))
    return absl::NotFoundError("checkpoint " + path + ": no such directory");
  if (!fs::exists(mpath, ec))
    return absl::NotFoundError("checkpoint " + path + ": " + kManifestFile +
                               " is missing (not a checkpoint directory)");
  absl::StatusOr<std::string> bytes = read_checkpoint_file(mpath);
  if (!bytes.ok()) return bytes.status();
  absl::StatusOr<Manifest> m = decode_manifest(*bytes, mpath);
  if (!m.ok() || !check_files) return m;
  if (absl::Status s = check_checkpoint_files(path, *m); !s.ok()) return s;
  return m;
}

absl::Status check_checkpoint_files(const std::string& path, const Manifest& manifest) {
  const Manifest* m = &manifest;
  std::error_code ec;
  std::map<std::string, std::pair<int64_t, std::string>> need;  // file -> (bytes, tensor)
  for (const TensorEntry& e : m->tensors()) {
    const int64_t end = e.file_offset() + e.shard_length() * 4;
    auto& n = need[e.file()];
    if (end > n.first) n = {end, e.name()};
  }
  for (const std::string& f : m->files()) {
    const std::string fp = path + "/" + f;
    if (!fs::exists(fp, ec))
      return absl::NotFoundError(absl::StrCat("checkpoint ", path, ": shard file ", f,
                                              " is missing (the manifest lists it)"));
    const uint64_t size = fs::file_size(fp, ec);
    if (ec) return absl::DataLossError(absl::StrCat("checkpoint ", path, ": cannot stat ", f));
    auto it = need.find(f);
    if (it != need.end() && size < static_cast<uint64_t>(it->second.first))
      return absl::DataLossError(absl::StrFormat(
          "checkpoint %s: shard file %s is truncated: %d bytes, the manifest needs %d (tensor "
          "'%s')",
          path, f, size, it->second.first, it->second.second));
  }
  return absl::OkStatus();
}

absl::StatusOr<Shape> stored_shape(const Manifest& m, const std::string& name,
                                   const std::string& path) {
  for (const TensorEntry& e : m.tensors())
    if (e.name() == name) return entry_shape(e);
  return absl::NotFoundError("checkpoint " + path + " has no tensor '" + name + "'");
}

absl::Status read_checkpoint_pieces(const std::string& path, const Manifest& m,
                                    const std::vector<parallel::Piece>& want) {
  std::map<std::string, std::vector<int>> by_name;
  for (int i = 0; i < m.tensors_size(); ++i) by_name[m.tensors(i).name()].push_back(i);
  std::map<int, std::vector<Copy>> plan;  // stored entry -> copies out of it
  std::vector<Tensor> stage(want.size());
  std::vector<float*> staging(want.size());
  for (size_t w = 0; w < want.size(); ++w) {
    const parallel::Piece& p = want[w];
    auto it = by_name.find(p.name);
    if (it == by_name.end())
      return absl::NotFoundError("checkpoint " + path + " has no tensor '" + p.name + "'");
    const Shape stored = entry_shape(m.tensors(it->second[0]));
    if (stored != p.global_shape)
      return absl::InvalidArgumentError(
          absl::StrFormat("checkpoint %s: tensor '%s' has shape %s in the checkpoint but %s here",
                          path, p.name, shape_str(stored), shape_str(p.global_shape)));
    const int64_t count = p.local.numel();
    if (p.is_box()) {
      KILN_CHECK(parallel::box_inside(p.box, p.global_shape) &&
                 count == parallel::box_volume(p.box))
          << "piece " << p.name << " box " << parallel::box_str(p.box) << " outside its tensor or "
          << "not " << count << " elements";
    } else {
      KILN_CHECK(p.offset >= 0 && p.offset + count <= shape_numel(p.global_shape))
          << "piece " << p.name << " outside its tensor";
    }
    const bool direct =
        p.local.device().is_cpu() && p.local.dtype() == DType::kF32 && p.local.is_contiguous();
    stage[w] = direct ? p.local : Tensor::empty({count}, DType::kF32);
    staging[w] = stage[w].data<float>();
    const std::vector<parallel::PlacedBox> mine = p.placed_boxes();
    for (int e : it->second) {
      const std::vector<parallel::PlacedBox> stored_boxes = entry_boxes(m.tensors(e));
      std::vector<parallel::BoxRun> runs;
      for (const parallel::PlacedBox& a : mine) {
        for (const parallel::PlacedBox& b : stored_boxes) {
          parallel::Box both;
          if (parallel::intersect_boxes(a.box, b.box, &both))
            parallel::box_copy_runs(both, b.box, b.at, a.box, a.at, &runs);
        }
      }
      for (const parallel::BoxRun& r : runs) plan[e].push_back({static_cast<int>(w), r});
    }
  }
  for (auto& [e, copies] : plan)
    std::stable_sort(copies.begin(), copies.end(),
                     [](const Copy& a, const Copy& b) { return a.run.src < b.run.src; });
  // Sequential reads: by file, then offset.
  std::vector<int> order;
  for (const auto& [e, ov] : plan) order.push_back(e);
  std::sort(order.begin(), order.end(), [&](int a, int b) {
    const TensorEntry &x = m.tensors(a), &y = m.tensors(b);
    return x.file() != y.file() ? x.file() < y.file() : x.file_offset() < y.file_offset();
  });
  std::map<std::string, std::ifstream> files;
  for (int e : order) {
    absl::Status s = read_entry(path, m.tensors(e), plan[e], staging, files);
    if (!s.ok()) return s;
  }
  for (size_t w = 0; w < want.size(); ++w)
    if (!stage[w].same(want[w].local))
      raw::copy(want[w].local, stage[w].reshape(want[w].local.shape()));
  return absl::OkStatus();
}

absl::Status verify_checkpoint(const std::string& path, const Manifest& m) {
  std::map<std::string, std::ifstream> files;
  std::vector<float*> staging;
  std::map<std::string, int64_t> bad;  // tensor -> NaN / Inf values
  for (const TensorEntry& e : m.tensors()) {
    int64_t n = 0;
    absl::Status s = read_entry(path, e, {}, staging, files, &n);
    if (!s.ok()) return s;
    if (n > 0) bad[e.name()] += n;
  }
  if (bad.empty()) return absl::OkStatus();
  std::string list;
  for (const auto& [name, n] : bad)
    absl::StrAppend(&list, list.empty() ? "" : ", ", name, " (", n, ")");
  return absl::DataLossError(absl::StrCat("checkpoint ", path, ": ", bad.size(),
                                          " tensor(s) hold NaN or Inf values: ", list));
}

absl::StatusOr<Tensor> read_full_tensor(const std::string& path, const Manifest& m,
                                        const std::string& name) {
  absl::StatusOr<Shape> shape = stored_shape(m, name, path);
  if (!shape.ok()) return shape.status();
  Tensor t = Tensor::empty(*shape, DType::kF32);
  absl::Status s = read_checkpoint_pieces(path, m, {{name, *shape, 0, t.reshape({t.numel()})}});
  if (!s.ok()) return s;
  return t;
}

}  // namespace kiln::launch
