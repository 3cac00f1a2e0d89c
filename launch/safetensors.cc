// safetensors header parsing/validation, writer and reader (see safetensors.h).
#include "launch/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/json.h"

namespace kiln::launch {
namespace {

constexpr int64_t kMaxElements = int64_t{1} << 50;

absl::Status bad(const std::string& what) {
  return absl::DataLossError("safetensors header: " + what);
}

std::string shown(std::string_view name) {
  std::string out;
  for (char c : name.substr(0, 200))
    out += (static_cast<unsigned char>(c) >= 0x20 && c != 0x7f) ? c : '?';
  return "'" + out + (name.size() > 200 ? "...'" : "'");
}

absl::Status parse_entry(const std::string& name, const JsonValue& v, SafetensorsEntry* e) {
  const std::string who = "tensor " + shown(name);
  if (!v.is_object()) return bad(who + " is not an object");
  e->name = name;
  for (const JsonMember& m : v.object)
    if (m.key != "dtype" && m.key != "shape" && m.key != "data_offsets")
      return bad(who + ": unknown field " + shown(m.key));
  const JsonValue* dtype = v.find("dtype");
  const JsonValue* shape = v.find("shape");
  const JsonValue* offsets = v.find("data_offsets");
  if (!dtype || !dtype->is_string()) return bad(who + ": missing or non-string dtype");
  e->dtype = dtype->str;
  const int64_t esize = safetensors_dtype_size(e->dtype);
  if (esize == 0) return bad(who + ": unknown dtype " + shown(e->dtype));
  if (!shape || !shape->is_array()) return bad(who + ": missing or non-array shape");
  if (shape->array.size() > 16) return bad(who + ": more than 16 dimensions");
  int64_t numel = 1;
  for (const JsonValue& d : shape->array) {
    int64_t n;
    if (!d.as_int64(&n) || n < 0) return bad(who + ": shape entries must be integers >= 0");
    if (n > 0 && numel > kMaxElements / n) return bad(who + ": shape too large");
    numel = n == 0 ? 0 : numel * n;
    e->shape.push_back(n);
  }
  if (!offsets || !offsets->is_array() || offsets->array.size() != 2 ||
      !offsets->array[0].as_uint64(&e->begin) || !offsets->array[1].as_uint64(&e->end))
    return bad(who + ": data_offsets must be [BEGIN, END] integers");
  if (e->end < e->begin) return bad(who + ": data_offsets end before they begin");
  if (e->end - e->begin != static_cast<uint64_t>(numel * esize))
    return bad(absl::StrFormat("%s: %d bytes for %d %s elements (expected %d)", who,
                               e->end - e->begin, numel, e->dtype, numel * esize));
  return absl::OkStatus();
}

absl::Status write_all(int fd, const void* data, size_t n, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return absl::UnavailableError(
          absl::StrCat("cannot write ", path, ": ", std::strerror(errno)));
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return absl::OkStatus();
}

}  // namespace

const SafetensorsEntry* SafetensorsHeader::find(std::string_view name) const {
  for (const SafetensorsEntry& e : tensors)
    if (e.name == name) return &e;
  return nullptr;
}

int64_t safetensors_dtype_size(std::string_view d) {
  if (d == "F64" || d == "I64" || d == "U64") return 8;
  if (d == "F32" || d == "I32" || d == "U32") return 4;
  if (d == "F16" || d == "BF16" || d == "I16" || d == "U16") return 2;
  if (d == "BOOL" || d == "U8" || d == "I8" || d == "F8_E4M3" || d == "F8_E5M2") return 1;
  return 0;
}

absl::StatusOr<SafetensorsHeader> parse_safetensors_header(std::string_view prefix,
                                                           uint64_t file_size) {
  if (prefix.size() < 8 || file_size < 8)
    return bad(absl::StrCat("file of ", file_size, " bytes has no 8-byte header length"));
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i)
    n |= static_cast<uint64_t>(static_cast<uint8_t>(prefix[i])) << (8 * i);
  if (n > kMaxSafetensorsHeader)
    return bad(absl::StrCat("header length ", n, " exceeds the 100 MB limit"));
  if (n > file_size - 8)
    return bad(
        absl::StrCat("header length ", n, " runs past the end of the ", file_size, "-byte file"));
  if (prefix.size() < 8 + n) return bad("header not fully read");
  const std::string_view json = prefix.substr(8, n);
  if (json.empty() || json[0] != '{') return bad("the header must start with '{'");
  absl::StatusOr<JsonValue> root = parse_json(json);
  if (!root.ok()) return bad(std::string(root.status().message()));
  if (!root->is_object()) return bad("the header is not a JSON object");
  SafetensorsHeader h;
  h.data_start = 8 + n;
  for (const auto& [name, v] : root->object) {
    if (name == "__metadata__") {
      if (!v.is_object()) return bad("__metadata__ is not an object");
      for (const auto& [key, s] : v.object) {
        if (!s.is_string()) return bad("__metadata__ value of " + shown(key) + " is not a string");
        h.metadata.emplace_back(key, s.str);
      }
      continue;
    }
    SafetensorsEntry e;
    if (absl::Status s = parse_entry(name, v, &e); !s.ok()) return s;
    h.tensors.push_back(std::move(e));
  }
  std::stable_sort(h.tensors.begin(), h.tensors.end(),
                   [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
                     return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
                   });
  uint64_t at = 0;
  for (const SafetensorsEntry& e : h.tensors) {
    if (e.begin != at)
      return bad(absl::StrFormat("tensor %s: data_offsets [%d, %d) leave a %s at byte %d",
                                 shown(e.name), e.begin, e.end, e.begin > at ? "gap" : "overlap",
                                 at));
    at = e.end;
  }
  const uint64_t data_size = file_size - h.data_start;
  if (at != data_size)
    return bad(
        absl::StrFormat("tensors cover %d bytes but the data section has %d", at, data_size));
  return h;
}

absl::Status write_safetensors(
    const std::string& path, const std::vector<SafetensorsTensor>& specs,
    const std::vector<std::pair<std::string, std::string>>& metadata,
    const std::function<absl::Status(size_t index, std::string* bytes)>& produce) {
  std::string json = "{";
  if (!metadata.empty()) {
    json += "\"__metadata__\":{";
    for (size_t i = 0; i < metadata.size(); ++i)
      absl::StrAppend(&json, i ? "," : "", json_quote(metadata[i].first), ":",
                      json_quote(metadata[i].second));
    json += "}";
  }
  std::vector<uint64_t> sizes;
  uint64_t at = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    const SafetensorsTensor& t = specs[i];
    int64_t numel = 1;
    for (int64_t d : t.shape) numel *= d;
    const int64_t esize = safetensors_dtype_size(t.dtype);
    if (esize == 0)
      return absl::InvalidArgumentError("safetensors: tensor " + t.name + ": unknown dtype " +
                                        t.dtype);
    sizes.push_back(static_cast<uint64_t>(numel * esize));
    absl::StrAppend(&json, (i || !metadata.empty()) ? "," : "", json_quote(t.name),
                    ":{\"dtype\":\"", t.dtype, "\",\"shape\":[");
    for (size_t d = 0; d < t.shape.size(); ++d) absl::StrAppend(&json, d ? "," : "", t.shape[d]);
    absl::StrAppend(&json, "],\"data_offsets\":[", at, ",", at + sizes.back(), "]}");
    at += sizes.back();
  }
  json += "}";
  while (json.size() % 8) json += ' ';  // keeps the data section 8-byte aligned
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0)
    return absl::UnavailableError(absl::StrCat("cannot create ", tmp, ": ", std::strerror(errno)));
  char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<char>((json.size() >> (8 * i)) & 0xFF);
  absl::Status s = write_all(fd, len, 8, tmp);
  if (s.ok()) s = write_all(fd, json.data(), json.size(), tmp);
  std::string bytes;
  for (size_t i = 0; i < specs.size() && s.ok(); ++i) {
    bytes.clear();
    s = produce(i, &bytes);
    if (s.ok() && bytes.size() != sizes[i])
      s = absl::InternalError(absl::StrCat("safetensors: tensor ", specs[i].name, ": ",
                                           bytes.size(), " bytes, expected ", sizes[i]));
    if (s.ok()) s = write_all(fd, bytes.data(), bytes.size(), tmp);
  }
  if (s.ok() && ::fsync(fd) != 0)
    s = absl::UnavailableError(absl::StrCat("fsync ", tmp, ": ", std::strerror(errno)));
  ::close(fd);
  if (s.ok() && std::rename(tmp.c_str(), path.c_str()) != 0)
    s = absl::UnavailableError(
        absl::StrCat("cannot rename ", tmp, " to ", path, ": ", std::strerror(errno)));
  if (!s.ok()) std::remove(tmp.c_str());
  return s;
}

absl::Status write_safetensors(const std::string& path, const std::vector<SafetensorsTensor>& ts,
                               const std::vector<std::pair<std::string, std::string>>& metadata) {
  return write_safetensors(path, ts, metadata, [&ts](size_t i, std::string* bytes) {
    bytes->assign(ts[i].data.data(), ts[i].data.size());
    return absl::OkStatus();
  });
}

absl::StatusOr<std::unique_ptr<SafetensorsReader>> SafetensorsReader::open(
    const std::string& path) {
  std::error_code ec;
  const uint64_t size = std::filesystem::file_size(path, ec);
  if (ec) return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", ec.message()));
  auto r = std::unique_ptr<SafetensorsReader>(new SafetensorsReader());
  r->path_ = path;
  r->in_.open(path, std::ios::binary);
  if (!r->in_) return absl::NotFoundError("cannot open " + path);
  std::string prefix(8, '\0');
  if (size >= 8) r->in_.read(prefix.data(), 8);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i)
    n |= static_cast<uint64_t>(static_cast<uint8_t>(prefix[i])) << (8 * i);
  if (size >= 8 && n <= kMaxSafetensorsHeader && n <= size - 8) {
    prefix.resize(8 + n);
    r->in_.read(prefix.data() + 8, static_cast<std::streamsize>(n));
    if (!r->in_) return absl::DataLossError(path + ": cannot read the header");
  }
  absl::StatusOr<SafetensorsHeader> h = parse_safetensors_header(prefix, size);
  if (!h.ok()) return absl::DataLossError(absl::StrCat(path, ": ", h.status().message()));
  r->header_ = std::move(*h);
  return r;
}

absl::Status SafetensorsReader::read(const SafetensorsEntry& e, void* out) {
  in_.clear();
  in_.seekg(static_cast<std::streamoff>(header_.data_start + e.begin));
  in_.read(static_cast<char*>(out), static_cast<std::streamsize>(e.end - e.begin));
  if (!in_)
    return absl::DataLossError(
        absl::StrCat(path_, ": cannot read tensor '", e.name, "' (", e.end - e.begin, " bytes)"));
  return absl::OkStatus();
}

}  // namespace kiln::launch
