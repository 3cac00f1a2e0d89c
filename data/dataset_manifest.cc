// The dataset manifest (dataset_manifest.h): CRC32C, the JSON form, and the check training runs.
#include "data/dataset_manifest.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/json.h"

namespace kiln::data {
namespace {

uint32_t crc_table(int i) {
  uint32_t c = static_cast<uint32_t>(i);
  for (int k = 0; k < 8; ++k) c = (c & 1) ? 0x82F63B78u ^ (c >> 1) : c >> 1;
  return c;
}

uint32_t crc_soft(uint32_t c, const uint8_t* p, size_t n) {
  static const std::vector<uint32_t> table = [] {
    std::vector<uint32_t> t(256);
    for (int i = 0; i < 256; ++i) t[i] = crc_table(i);
    return t;
  }();
  for (size_t i = 0; i < n; ++i) c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return c;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t crc_hw(uint32_t c, const uint8_t* p, size_t n) {
  uint64_t c64 = c;
  for (; n >= 8; p += 8, n -= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c64 = __builtin_ia32_crc32di(c64, v);
  }
  uint32_t c32 = static_cast<uint32_t>(c64);
  for (; n > 0; ++p, --n) c32 = __builtin_ia32_crc32qi(c32, *p);
  return c32;
}
#endif

std::string hex32(uint32_t v) { return absl::StrFormat("%08x", v); }

bool parse_hex32(const JsonValue* v, uint32_t* out) {
  if (v == nullptr || !v->is_string() || v->str.size() != 8) return false;
  char* end = nullptr;
  const unsigned long x = std::strtoul(v->str.c_str(), &end, 16);
  *out = static_cast<uint32_t>(x);
  return end == v->str.c_str() + 8;
}

bool get_int(const JsonValue& o, const char* a, const char* b, int64_t* out) {
  const JsonValue* v = o.find(a);
  if (v != nullptr && b != nullptr) v = v->find(b);
  return v != nullptr && v->as_int64(out);
}

}  // namespace

uint32_t crc32c(uint32_t crc, const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
#if defined(__x86_64__)
  static const bool hw = __builtin_cpu_supports("sse4.2");
  if (hw) return ~crc_hw(~crc, p, n);
#endif
  return ~crc_soft(~crc, p, n);
}

absl::StatusOr<uint32_t> file_crc32c(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  std::vector<char> buf(1 << 20);
  uint32_t crc = 0;
  for (ssize_t n; (n = ::read(fd, buf.data(), buf.size())) != 0;) {
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const std::string err = std::strerror(errno);
      ::close(fd);
      return absl::DataLossError(absl::StrCat("cannot read ", path, ": ", err));
    }
    crc = crc32c(crc, buf.data(), static_cast<size_t>(n));
  }
  ::close(fd);
  return crc;
}

uint32_t tokenizer_identity(const Tokenizer& tok) {
  uint32_t crc = 0;
  for (int32_t id = 0; id < tok.vocab_size(); ++id) {
    const std::string& b = tok.token_bytes(id);
    const uint32_t len = static_cast<uint32_t>(b.size());
    crc = crc32c(crc, &len, 4);
    crc = crc32c(crc, b.data(), b.size());
  }
  for (const auto& [a, b] : tok.merges()) {
    const int32_t pair[2] = {a, b};
    crc = crc32c(crc, pair, sizeof(pair));
  }
  return crc;
}

std::string manifest_path(const std::string& dir, const std::string& name) {
  return absl::StrCat(dir, "/", name, ".manifest.json");
}

std::string manifest_json(const DatasetManifest& m) {
  std::string s = "{\"format\": \"kiln-dataset\", \"version\": 1, \"name\": ";
  append_json_string(m.name, &s);
  absl::StrAppendFormat(&s,
                        ", \"complete\": %s,\n \"tokenizer\": {\"vocab_size\": %d, \"eot\": %d, "
                        "\"crc32c\": \"%s\"},\n \"documents\": {\"train\": %d, \"val\": %d}, "
                        "\"tokens\": {\"train\": %d, \"val\": %d},\n \"shards\": [",
                        m.complete ? "true" : "false", m.vocab_size, m.eot,
                        hex32(m.tokenizer_crc32c), m.train_documents, m.val_documents,
                        m.train_tokens, m.val_tokens);
  for (size_t i = 0; i < m.shards.size(); ++i) {
    const ManifestShard& sh = m.shards[i];
    s += i ? ",\n  {\"file\": " : "\n  {\"file\": ";
    append_json_string(sh.file, &s);
    absl::StrAppendFormat(&s,
                          ", \"split\": \"%s\", \"tokens\": %d, \"bytes\": %d, \"crc32c\": \"%s\"}",
                          sh.split, sh.tokens, sh.bytes, hex32(sh.crc32c));
  }
  s += "]}\n";
  return s;
}

absl::StatusOr<DatasetManifest> parse_manifest(const std::string& json, const std::string& path) {
  absl::StatusOr<JsonValue> v = parse_json(json);
  auto bad = [&](const std::string& why) {
    return absl::DataLossError(
        absl::StrCat("dataset manifest ", path, ": ", why, "; run kiln prepare-data again"));
  };
  if (!v.ok()) return bad(std::string(v.status().message()));
  const JsonValue* fmt = v->find("format");
  if (fmt == nullptr || !fmt->is_string() || fmt->str != "kiln-dataset")
    return bad("not a kiln dataset manifest");
  DatasetManifest m;
  const JsonValue* name = v->find("name");
  const JsonValue* complete = v->find("complete");
  const JsonValue* tok = v->find("tokenizer");
  const JsonValue* shards = v->find("shards");
  if (name == nullptr || !name->is_string() || complete == nullptr || !complete->is_bool() ||
      tok == nullptr || shards == nullptr || !shards->is_array() ||
      !get_int(*v, "tokenizer", "vocab_size", &m.vocab_size) ||
      !get_int(*v, "tokenizer", "eot", &m.eot) ||
      !parse_hex32(tok->find("crc32c"), &m.tokenizer_crc32c) ||
      !get_int(*v, "documents", "train", &m.train_documents) ||
      !get_int(*v, "documents", "val", &m.val_documents) ||
      !get_int(*v, "tokens", "train", &m.train_tokens) ||
      !get_int(*v, "tokens", "val", &m.val_tokens))
    return bad("a field is missing or has the wrong type");
  m.name = name->str;
  m.complete = complete->boolean;
  for (const JsonValue& e : shards->array) {
    ManifestShard sh;
    const JsonValue* file = e.find("file");
    const JsonValue* split = e.find("split");
    if (file == nullptr || !file->is_string() || split == nullptr || !split->is_string() ||
        !get_int(e, "tokens", nullptr, &sh.tokens) || !get_int(e, "bytes", nullptr, &sh.bytes) ||
        !parse_hex32(e.find("crc32c"), &sh.crc32c))
      return bad("a shard entry is missing a field");
    sh.file = file->str;
    sh.split = split->str;
    m.shards.push_back(std::move(sh));
  }
  return m;
}

absl::Status write_manifest(const std::string& path, const DatasetManifest& m) {
  const std::string tmp = path + ".tmp";
  const std::string text = manifest_json(m);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
  bool ok = fd >= 0 && ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) &&
            ::fsync(fd) == 0;
  const std::string err = ok ? "" : std::strerror(errno);
  if (fd >= 0) ok = ::close(fd) == 0 && ok;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    ::unlink(tmp.c_str());
    return absl::UnavailableError(
        absl::StrCat("cannot write ", path, ": ", err.empty() ? std::strerror(errno) : err));
  }
  const std::string dir = std::filesystem::path(path).parent_path().string();
  if (const int d = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      d >= 0) {
    ::fsync(d);
    ::close(d);
  }
  return absl::OkStatus();
}

}  // namespace kiln::data
