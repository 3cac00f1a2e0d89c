// JSONL and TensorBoard writers.
#include "launch/metrics.h"

#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "core/json.h"
#include "proto/tensorboard.pb.h"

namespace kiln::launch {
namespace {

uint32_t crc_table_entry(uint32_t i) {
  uint32_t c = i;
  for (int k = 0; k < 8; ++k) c = (c & 1) ? 0x82F63B78u ^ (c >> 1) : c >> 1;
  return c;
}

double wall_time() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

uint32_t crc32c(const void* data, size_t n) {
  static uint32_t table[256];
  static bool init = [] {
    for (uint32_t i = 0; i < 256; ++i) table[i] = crc_table_entry(i);
    return true;
  }();
  (void)init;
  const auto* p = static_cast<const uint8_t*>(data);
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

uint32_t masked_crc32c(const void* data, size_t n) {
  uint32_t c = crc32c(data, n);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

absl::Status TensorBoardWriter::open(const std::string& run_dir, int64_t purge_from) {
  char host[256] = "localhost";
  gethostname(host, sizeof(host) - 1);
  path_ =
      absl::StrCat(run_dir, "/events.out.tfevents.", static_cast<int64_t>(wall_time()), ".", host);
  out_.open(path_, std::ios::binary | std::ios::trunc);
  if (!out_) return absl::UnavailableError("cannot create TensorBoard file " + path_);
  tb::Event e;
  e.set_wall_time(wall_time());
  e.set_file_version("brain.Event:2");
  write_record(e.SerializeAsString());
  if (purge_from >= 0) {
    tb::Event start;
    start.set_wall_time(wall_time());
    start.set_step(purge_from);
    start.mutable_session_log()->set_status(tb::SessionLog::START);
    write_record(start.SerializeAsString());
  }
  return flush();
}

void TensorBoardWriter::write_record(const std::string& bytes) {
  uint64_t len = bytes.size();
  uint32_t len_crc = masked_crc32c(&len, sizeof(len));
  uint32_t data_crc = masked_crc32c(bytes.data(), bytes.size());
  out_.write(reinterpret_cast<const char*>(&len), sizeof(len));
  out_.write(reinterpret_cast<const char*>(&len_crc), sizeof(len_crc));
  out_.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out_.write(reinterpret_cast<const char*>(&data_crc), sizeof(data_crc));
}

void TensorBoardWriter::scalar(const std::string& tag, double value, int64_t step) {
  if (!out_.is_open()) return;
  tb::Event e;
  e.set_wall_time(wall_time());
  e.set_step(step);
  tb::SummaryValue* v = e.mutable_summary()->add_value();
  v->set_tag(tag);
  v->set_simple_value(static_cast<float>(value));
  write_record(e.SerializeAsString());
}

absl::Status TensorBoardWriter::flush() {
  if (!out_.is_open()) return absl::OkStatus();
  errno = 0;
  out_.flush();
  if (!out_)
    return absl::UnavailableError(
        absl::StrCat("cannot write ", path_, ": ", errno ? std::strerror(errno) : "write failed"));
  return absl::OkStatus();
}

absl::Status read_tensorboard_scalars(
    const std::string& path, std::map<std::string, std::vector<std::pair<int64_t, double>>>* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError("cannot open event file " + path);
  for (int64_t rec = 0;; ++rec) {
    uint64_t len;
    uint32_t len_crc, data_crc;
    if (!in.read(reinterpret_cast<char*>(&len), sizeof(len))) break;
    if (!in.read(reinterpret_cast<char*>(&len_crc), sizeof(len_crc)) ||
        len_crc != masked_crc32c(&len, sizeof(len)) || len > (1u << 30))
      return absl::DataLossError(absl::StrCat(path, ": bad length header in record ", rec));
    std::string data(len, '\0');
    if (!in.read(data.data(), static_cast<std::streamsize>(len)) ||
        !in.read(reinterpret_cast<char*>(&data_crc), sizeof(data_crc)) ||
        data_crc != masked_crc32c(data.data(), data.size()))
      return absl::DataLossError(absl::StrCat(path, ": truncated or corrupt record ", rec));
    tb::Event e;
    if (!e.ParseFromString(data))
      return absl::DataLossError(absl::StrCat(path, ": record ", rec, " is not an Event"));
    if (e.has_session_log() && e.session_log().status() == tb::SessionLog::START)
      for (auto& [tag, points] : *out)
        std::erase_if(points, [&](const auto& p) { return p.first >= e.step(); });
    for (const auto& v : e.summary().value())
      (*out)[v.tag()].emplace_back(e.step(), v.simple_value());
  }
  return absl::OkStatus();
}

absl::Status MetricsLogger::open(const std::string& run_dir, bool jsonl, bool tensorboard,
                                 bool append, int64_t purge_from) {
  std::error_code ec;
  std::filesystem::create_directories(run_dir, ec);
  if (ec)
    return absl::UnavailableError("cannot create run directory " + run_dir + ": " + ec.message());
  if (jsonl) {
    jsonl_path_ = run_dir + "/metrics.jsonl";
    jsonl_.open(jsonl_path_, append ? std::ios::app : std::ios::trunc);
    if (!jsonl_) return absl::UnavailableError("cannot write " + run_dir + "/metrics.jsonl");
    has_jsonl_ = true;
  }
  if (tensorboard) {
    absl::Status s = tb_.open(run_dir, purge_from);
    if (!s.ok()) return s;
    has_tb_ = true;
  }
  return absl::OkStatus();
}

void MetricsLogger::log(const std::string& kind, int64_t step,
                        const std::vector<std::pair<std::string, double>>& kv) {
  if (has_jsonl_) {
    std::ostringstream os;
    os << "{\"kind\":" << json_quote(kind) << ",\"step\":" << step;
    for (const auto& [k, v] : kv) {
      os << "," << json_quote(k) << ":";
      if (std::isfinite(v)) {
        // The shortest form that reads back as the same double (resume tests compare losses
        // bit for bit).
        char buf[32];
        os << std::string_view(buf, std::to_chars(buf, buf + sizeof(buf), v).ptr - buf);
      } else {
        os << "null";
      }
    }
    os << "}\n";
    jsonl_ << os.str();
  }
  if (has_tb_)
    for (const auto& [k, v] : kv) tb_.scalar(kind + "/" + k, v, step);
}

void MetricsLogger::log_text(const std::string& kind, int64_t step, const std::string& key,
                             const std::string& text) {
  if (has_jsonl_)
    jsonl_ << "{\"kind\":" << json_quote(kind) << ",\"step\":" << step << "," << json_quote(key)
           << ":" << json_quote(text) << "}\n";
}

absl::Status MetricsLogger::flush() {
  if (has_jsonl_) {
    errno = 0;
    jsonl_.flush();
    if (!jsonl_)
      return absl::UnavailableError(absl::StrCat("cannot write ", jsonl_path_, ": ",
                                                 errno ? std::strerror(errno) : "write failed"));
  }
  return has_tb_ ? tb_.flush() : absl::OkStatus();
}

}  // namespace kiln::launch
