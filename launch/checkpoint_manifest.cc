// Manifest framing, CRC32C and validation (see checkpoint_manifest.h).
#include "launch/checkpoint_manifest.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "parallel/box.h"

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace kiln::launch {
namespace {

constexpr char kMagic[8] = {'K', 'I', 'L', 'N', 'M', 'F', 'S', 'T'};
constexpr uint32_t kFrameVersion = 1;
constexpr int64_t kMaxElements = int64_t{1} << 48;
constexpr int64_t kMaxRanks = int64_t{1} << 20;

struct CrcTable {
  uint32_t t[256];
  CrcTable() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0x82F63B78u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
  }
};

uint32_t crc_table(uint32_t c, const uint8_t* p, size_t n) {
  static const CrcTable table;
  for (size_t i = 0; i < n; ++i) c = table.t[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return c;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t crc_hw(uint32_t c, const uint8_t* p, size_t n) {
  uint64_t c64 = c;
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c64 = _mm_crc32_u64(c64, v);
    p += 8;
    n -= 8;
  }
  c = static_cast<uint32_t>(c64);
  while (n--) c = _mm_crc32_u8(c, *p++);
  return c;
}
#endif

void put_u32(std::string* s, uint32_t v) {
  for (int i = 0; i < 4; ++i) s->push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}
void put_u64(std::string* s, uint64_t v) {
  for (int i = 0; i < 8; ++i) s->push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}
uint64_t get_le(std::string_view b, size_t at, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i)
    v |= static_cast<uint64_t>(static_cast<uint8_t>(b[at + i])) << (8 * i);
  return v;
}

bool plain_file_name(const std::string& f) {
  if (f.empty() || f.size() > 255 || f == "." || f == "..") return false;
  for (char c : f)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-'))
      return false;
  return true;
}

// The tensor's name as it appears in messages (printable, bounded).
std::string shown(const std::string& name) {
  std::string out;
  for (char c : name.substr(0, 200)) out += std::isprint(static_cast<unsigned char>(c)) ? c : '?';
  return "'" + out + (name.size() > 200 ? "...'" : "'");
}

std::string shape_text(const google::protobuf::RepeatedField<int64_t>& s) {
  std::string out = "[";
  for (int i = 0; i < s.size(); ++i) absl::StrAppend(&out, i ? ", " : "", s[i]);
  return out + "]";
}

absl::Status bad(const std::string& what) { return absl::DataLossError(what); }

absl::Status validate_layout(const ParallelLayout& l) {
  const int64_t w = l.world_size(), dp = l.dp(), tp = l.tp(), pp = l.pp();
  if (w < 1 || w > kMaxRanks) return bad(absl::StrCat("layout.world_size ", w, " out of range"));
  for (auto [v, name] : {std::pair{dp, "dp"}, {tp, "tp"}, {pp, "pp"}})
    if (v < 1 || v > kMaxRanks) return bad(absl::StrCat("layout.", name, " ", v, " out of range"));
  if (dp * tp * pp != w)
    return bad(absl::StrFormat("layout: dp %d * tp %d * pp %d != world_size %d", dp, tp, pp, w));
  if (l.zero_stage() < 0 || l.zero_stage() > 3)
    return bad(absl::StrCat("layout.zero_stage ", l.zero_stage(), " is not 0-3"));
  return absl::OkStatus();
}

struct Span {
  int64_t offset, length;
  int index;
};

absl::Status validate_tensor(const TensorEntry& t, int i, const std::set<std::string>& files,
                             int64_t world, int64_t* numel) {
  const std::string who = absl::StrCat("tensor ", shown(t.name()), " (entry ", i, ")");
  if (t.name().empty()) return bad(absl::StrCat("tensor entry ", i, " has no name"));
  if (t.name().size() > 4096) return bad(who + ": name longer than 4096 bytes");
  if (t.dtype() != F32)
    return bad(absl::StrCat(who, ": dtype ",
                            TensorDtype_Name(t.dtype()).empty()
                                ? absl::StrCat(static_cast<int>(t.dtype()))
                                : TensorDtype_Name(t.dtype()),
                            " (only F32 is stored)"));
  if (t.shape_size() > 16) return bad(absl::StrCat(who, ": ", t.shape_size(), " dimensions"));
  int64_t n = 1;
  for (int64_t d : t.shape()) {
    if (d < 0 || d > kMaxElements) return bad(who + ": bad shape " + shape_text(t.shape()));
    n = d == 0 ? 0 : n;
    if (n > 0 && d > kMaxElements / n)
      return bad(who + ": shape too large " + shape_text(t.shape()));
    n *= d;
  }
  *numel = n;
  if (t.shard_offset() < 0 || t.shard_length() < 0 || t.shard_offset() > n ||
      t.shard_length() > n - t.shard_offset())
    return bad(absl::StrFormat("%s: shard [%d, +%d) outside its %d elements", who, t.shard_offset(),
                               t.shard_length(), n));
  if (t.box_offset_size() > 0 || t.box_length_size() > 0) {
    parallel::Box b{{t.box_offset().begin(), t.box_offset().end()},
                    {t.box_length().begin(), t.box_length().end()}};
    const std::vector<int64_t> shape(t.shape().begin(), t.shape().end());
    if (shape.empty() || !parallel::box_inside(b, shape))
      return bad(absl::StrCat(who, ": box ", shape_text(t.box_offset()), " + ",
                              shape_text(t.box_length()), " outside its shape ",
                              shape_text(t.shape())));
    if (t.shard_offset() != 0 || t.shard_length() != parallel::box_volume(b))
      return bad(
          absl::StrFormat("%s: a box entry needs shard_offset 0 and shard_length %d (its "
                          "elements), not %d and %d",
                          who, parallel::box_volume(b), t.shard_offset(), t.shard_length()));
  }
  if (!files.count(t.file()))
    return bad(absl::StrCat(who, ": file '", shown(t.file()), "' is not in the manifest's files"));
  if (t.file_offset() < 0 || t.file_offset() > (int64_t{1} << 56))
    return bad(absl::StrCat(who, ": bad file_offset ", t.file_offset()));
  if (t.rank() < 0 || t.rank() >= world)
    return bad(absl::StrCat(who, ": rank ", t.rank(), " outside the world of ", world));
  return absl::OkStatus();
}

bool is_box_entry(const TensorEntry& t) { return t.box_offset_size() > 0; }

// A tensor with box entries (each already inside the shape): the boxes of every entry (flat ones
// decomposed) must not overlap and must add up to the whole tensor.
absl::Status check_box_tiling(const Manifest& m, const std::string& name,
                              const std::vector<Span>& spans, int64_t numel) {
  std::vector<std::pair<parallel::Box, int>> boxes;
  for (const Span& sp : spans) {
    const TensorEntry& t = m.tensors(sp.index);
    const std::vector<int64_t> shape(t.shape().begin(), t.shape().end());
    if (is_box_entry(t)) {
      boxes.push_back({{{t.box_offset().begin(), t.box_offset().end()},
                        {t.box_length().begin(), t.box_length().end()}},
                       sp.index});
      continue;
    }
    std::vector<parallel::Box> parts;
    parallel::flat_range_boxes(shape, t.shard_offset(), t.shard_length(), &parts);
    for (parallel::Box& b : parts) boxes.push_back({std::move(b), sp.index});
  }
  // Sweep along dimension 0: only boxes whose first-dimension ranges meet can overlap.
  std::sort(boxes.begin(), boxes.end(),
            [](const auto& a, const auto& b) { return a.first.offset[0] < b.first.offset[0]; });
  int64_t total = 0;
  for (size_t a = 0; a < boxes.size(); ++a) {
    total += parallel::box_volume(boxes[a].first);
    const int64_t end = boxes[a].first.offset[0] + boxes[a].first.length[0];
    for (size_t b = a + 1; b < boxes.size() && boxes[b].first.offset[0] < end; ++b) {
      parallel::Box both;
      if (parallel::intersect_boxes(boxes[a].first, boxes[b].first, &both))
        return bad(absl::StrFormat("tensor %s: entries %d and %d overlap in %s", shown(name),
                                   boxes[a].second, boxes[b].second, parallel::box_str(both)));
    }
  }
  if (total != numel)
    return bad(
        absl::StrFormat("tensor %s: pieces cover %d of %d elements", shown(name), total, numel));
  return absl::OkStatus();
}

}  // namespace

uint32_t crc32c_update(uint32_t crc, const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  uint32_t c = ~crc;
#if defined(__x86_64__)
  static const bool hw = __builtin_cpu_supports("sse4.2");
  c = hw ? crc_hw(c, p, n) : crc_table(c, p, n);
#else
  c = crc_table(c, p, n);
#endif
  return ~c;
}

int64_t stored_dtype_size(TensorDtype d) {
  switch (d) {
    case F32:
    case I32:
      return 4;
    case F64:
    case I64:
      return 8;
    case BF16:
    case F16:
    case U16:
      return 2;
    case F8E4M3:
    case F8E5M2:
    case U8:
      return 1;
    default:
      return 0;
  }
}

std::string step_dir_name(int64_t step) { return absl::StrFormat("step_%08d", step); }

int64_t parse_step_dir_name(std::string_view name) {
  if (name.size() < 13 || name.substr(0, 5) != "step_" || name.size() > 5 + 18) return -1;
  int64_t v = 0;
  for (char c : name.substr(5)) {
    if (c < '0' || c > '9') return -1;
    v = v * 10 + (c - '0');
  }
  return v;
}

absl::StatusOr<std::string> read_checkpoint_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(path + ": cannot open (" + std::strerror(errno) + ")");
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return absl::DataLossError(path + ": read error");
  return s;
}

std::string frame_manifest_payload(std::string_view payload) {
  std::string out(kMagic, sizeof(kMagic));
  put_u32(&out, kFrameVersion);
  put_u32(&out, crc32c_update(0, payload.data(), payload.size()));
  put_u64(&out, payload.size());
  out.append(payload);
  return out;
}

std::string encode_manifest(const Manifest& m) {
  std::string payload;
  m.SerializeToString(&payload);
  return frame_manifest_payload(payload);
}

absl::StatusOr<Manifest> decode_manifest(std::string_view bytes, const std::string& where) {
  auto fail = [&](const std::string& why) {
    return absl::DataLossError(absl::StrCat("checkpoint manifest ", where, ": ", why));
  };
  if (bytes.size() < kManifestHeaderBytes)
    return fail(absl::StrCat("truncated (", bytes.size(), " bytes, the header alone is ",
                             kManifestHeaderBytes, ")"));
  if (std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0)
    return fail("not a kiln manifest (bad magic)");
  const uint64_t version = get_le(bytes, 8, 4);
  if (version != kFrameVersion)
    return fail(absl::StrCat("frame version ", version, ", this kiln reads ", kFrameVersion));
  const uint64_t crc = get_le(bytes, 12, 4), len = get_le(bytes, 16, 8);
  const std::string_view payload = bytes.substr(kManifestHeaderBytes);
  if (len != payload.size())
    return fail(absl::StrCat("payload is ", payload.size(), " bytes, the header says ", len,
                             " (truncated or appended to)"));
  if (crc32c_update(0, payload.data(), payload.size()) != crc)
    return fail("checksum mismatch: the manifest is corrupt");
  Manifest m;
  if (payload.size() > (size_t{1} << 31) ||
      !m.ParseFromArray(payload.data(), static_cast<int>(payload.size())))
    return fail("the payload is not a valid Manifest protobuf");
  absl::Status s = validate_manifest(m);
  if (!s.ok()) return fail(std::string(s.message()));
  return m;
}

absl::Status validate_manifest(const Manifest& m) {
  if (m.format_version() != kManifestFormatVersion && m.format_version() != kManifestBoxVersion)
    return bad(absl::StrCat("format_version ", m.format_version(), ", this kiln reads ",
                            kManifestFormatVersion, " and ", kManifestBoxVersion));
  if (m.checksum_algorithm() != kChecksumAlgorithm)
    return bad("checksum_algorithm '" + shown(m.checksum_algorithm()) + "', expected crc32c");
  if (m.step() < 0) return bad(absl::StrCat("step ", m.step(), " < 0"));
  if (m.tokens_seen() < 0) return bad(absl::StrCat("tokens_seen ", m.tokens_seen(), " < 0"));
  if (m.optimizer_steps() < 0 || m.optimizer_steps() > m.step())
    return bad(
        absl::StrCat("optimizer_steps ", m.optimizer_steps(), " outside [0, step ", m.step(), "]"));
  if (absl::Status s = validate_layout(m.layout()); !s.ok()) return s;
  const int64_t world = m.layout().world_size();
  std::set<std::string> files;
  for (const std::string& f : m.files()) {
    if (!plain_file_name(f)) return bad("files: " + shown(f) + " is not a plain file name");
    if (!files.insert(f).second) return bad("files: " + shown(f) + " is listed twice");
  }
  for (const RngState& r : m.rng())
    if (r.rank() < 0 || r.rank() >= world)
      return bad(absl::StrCat("rng: rank ", r.rank(), " outside the world of ", world));
  for (const LoaderState& l : m.loader())
    if (l.rank() < 0 || l.rank() >= world)
      return bad(absl::StrCat("loader: rank ", l.rank(), " outside the world of ", world));
  for (const Fp8HistoryState& f : m.fp8()) {
    if (f.rank() < 0 || f.rank() >= world)
      return bad(absl::StrCat("fp8: rank ", f.rank(), " outside the world of ", world));
    if (f.slots_size() != 3 || f.uses() < 1)
      return bad(absl::StrCat("fp8: history '", f.name(), "' of rank ", f.rank(), " has ",
                              f.slots_size(), " amaxes and ", f.uses(),
                              " uses (want 3 amaxes, uses >= 1)"));
  }
  // Per tensor name: one shape, and pieces tiling [0, numel).
  std::map<std::string, std::vector<Span>> spans;
  std::map<std::string, int> first;
  std::set<std::string> boxed;
  for (int i = 0; i < m.tensors_size(); ++i) {
    const TensorEntry& t = m.tensors(i);
    int64_t numel = 0;
    if (absl::Status s = validate_tensor(t, i, files, world, &numel); !s.ok()) return s;
    auto [it, fresh] = first.emplace(t.name(), i);
    if (!fresh) {
      const TensorEntry& f = m.tensors(it->second);
      if (!std::equal(f.shape().begin(), f.shape().end(), t.shape().begin(), t.shape().end()))
        return bad(absl::StrCat("tensor ", shown(t.name()), ": pieces disagree on the shape (",
                                shape_text(f.shape()), " vs ", shape_text(t.shape()), ")"));
    }
    if (is_box_entry(t)) {
      if (m.format_version() < kManifestBoxVersion)
        return bad(absl::StrCat("tensor ", shown(t.name()), " (entry ", i,
                                ") is a box, which needs "
                                "format_version ",
                                kManifestBoxVersion));
      boxed.insert(t.name());
    }
    if (t.shard_length() > 0) spans[t.name()].push_back({t.shard_offset(), t.shard_length(), i});
  }
  for (const auto& [name, first_index] : first) {
    const TensorEntry& t = m.tensors(first_index);
    int64_t numel = 1;
    for (int64_t d : t.shape()) numel *= d;
    if (boxed.count(name)) {
      if (absl::Status s = check_box_tiling(m, name, spans[name], numel); !s.ok()) return s;
      continue;
    }
    std::vector<Span>& v = spans[name];
    std::sort(v.begin(), v.end(), [](const Span& a, const Span& b) { return a.offset < b.offset; });
    int64_t at = 0;
    for (const Span& s : v) {
      if (s.offset != at)
        return bad(absl::StrFormat("tensor %s: %s at element %d (pieces must tile the tensor)",
                                   shown(name), s.offset > at ? "gap" : "overlap", at));
      at += s.length;
    }
    if (at != numel)
      return bad(
          absl::StrFormat("tensor %s: pieces cover %d of %d elements", shown(name), at, numel));
  }
  return absl::OkStatus();
}

}  // namespace kiln::launch
