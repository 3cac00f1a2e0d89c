// Checkpoint save (atomic, sharded), retention and resume discovery. The read side (manifest,
// verification, resharding reads) is launch/checkpoint_read.cc.
#include "launch/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/backend.h"
#include "core/check.h"
#include "google/protobuf/text_format.h"
#include "launch/checkpoint_manifest.h"

namespace kiln::launch {
namespace fs = std::filesystem;
namespace {

constexpr char kManifestText[] = "manifest.textproto";
constexpr char kLatest[] = "latest";

std::string rank_file(int rank) { return absl::StrFormat("rank_%05d.bin", rank); }
std::string part_file(int rank) { return absl::StrFormat("rank_%05d.part", rank); }

std::string errno_text() { return std::strerror(errno); }

void test_delay() {
  static const int ms = [] {
    const char* s = std::getenv("KILN_CHECKPOINT_TEST_DELAY_MS");
    return s ? std::atoi(s) : 0;
  }();
  if (ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(ms));
}

// An open file descriptor that writes everything or says why not.
class Out {
 public:
  explicit Out(std::string path) : path_(std::move(path)) {
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd_ < 0) status_ = absl::UnavailableError("cannot create " + path_ + ": " + errno_text());
  }
  ~Out() {
    if (fd_ >= 0) ::close(fd_);
  }
  void write(const void* data, size_t n) {
    const char* p = static_cast<const char*>(data);
    while (status_.ok() && n > 0) {
      const ssize_t w = ::write(fd_, p, n);
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) {
        status_ = absl::UnavailableError("cannot write " + path_ + ": " + errno_text());
        return;
      }
      p += w;
      n -= static_cast<size_t>(w);
    }
  }
  // fsync and close.
  absl::Status finish() {
    if (status_.ok() && ::fsync(fd_) != 0)
      status_ = absl::UnavailableError("fsync " + path_ + ": " + errno_text());
    if (fd_ >= 0 && ::close(fd_) != 0 && status_.ok())
      status_ = absl::UnavailableError("close " + path_ + ": " + errno_text());
    fd_ = -1;
    return status_;
  }

 private:
  std::string path_;
  int fd_ = -1;
  absl::Status status_;
};

absl::Status write_file(const std::string& path, const std::string& bytes) {
  Out o(path);
  o.write(bytes.data(), bytes.size());
  return o.finish();
}

absl::Status fsync_dir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return absl::UnavailableError("cannot open directory " + dir + ": " + errno_text());
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) return absl::UnavailableError("fsync directory " + dir + ": " + errno_text());
  return absl::OkStatus();
}

absl::Status rename_path(const std::string& from, const std::string& to) {
  if (std::rename(from.c_str(), to.c_str()) != 0)
    return absl::UnavailableError("cannot rename " + from + " to " + to + ": " + errno_text());
  return absl::OkStatus();
}

absl::Status agree(parallel::Communicator& world, const absl::Status& mine, const char* stage) {
  return agree_across_ranks(world, mine, stage);
}

// The rank's shard file and its part of the manifest.
absl::Status write_rank_files(const std::string& tmp, const RankContribution& mine, int rank,
                              Manifest* part) {
  const std::string file = rank_file(rank);
  Out out(tmp + "/" + file);
  int64_t at = 0;
  for (const parallel::Piece& p : mine.pieces) {
    Tensor cpu = raw::convert(p.local.to(Device::cpu()), DType::kF32);
    cpu = raw::contiguous(cpu);
    const size_t n = cpu.nbytes();
    TensorEntry* e = part->add_tensors();
    e->set_name(p.name);
    for (int64_t d : p.global_shape) e->add_shape(d);
    e->set_dtype(F32);
    if (p.is_box()) {
      KILN_CHECK(parallel::box_inside(p.box, p.global_shape) &&
                 cpu.numel() == parallel::box_volume(p.box))
          << "checkpoint: piece " << p.name << " box " << parallel::box_str(p.box) << " of "
          << shape_str(p.global_shape) << " does not match its " << cpu.numel() << " elements";
      for (size_t d = 0; d < p.box.offset.size(); ++d) {
        e->add_box_offset(p.box.offset[d]);
        e->add_box_length(p.box.length[d]);
      }
      e->set_shard_offset(0);
    } else {
      e->set_shard_offset(p.offset);
    }
    e->set_shard_length(cpu.numel());
    e->set_file(file);
    e->set_file_offset(at);
    e->set_checksum(crc32c_update(0, cpu.raw(), n));
    e->set_rank(rank);
    out.write(cpu.raw(), n);
    at += static_cast<int64_t>(n);
  }
  absl::Status s = out.finish();
  if (!s.ok()) return s;
  test_delay();
  part->add_files(file);
  for (const RngState& r : mine.rng) *part->add_rng() = r;
  for (const LoaderState& l : mine.loader) *part->add_loader() = l;
  for (const Fp8HistoryState& f : mine.fp8) *part->add_fp8() = f;
  return write_file(tmp + "/" + part_file(rank), encode_manifest(*part));
}

// Payload of a framed part file, without the whole-manifest validation (a part is not complete).
absl::StatusOr<Manifest> read_part(const std::string& path) {
  absl::StatusOr<std::string> bytes = read_checkpoint_file(path);
  if (!bytes.ok()) return bytes.status();
  Manifest m;
  if (bytes->size() < kManifestHeaderBytes ||
      !m.ParseFromArray(bytes->data() + kManifestHeaderBytes,
                        static_cast<int>(bytes->size() - kManifestHeaderBytes)))
    return absl::DataLossError(path + ": unreadable part file");
  uint32_t crc = 0;
  for (int i = 0; i < 4; ++i)
    crc |= static_cast<uint32_t>(static_cast<uint8_t>((*bytes)[12 + i])) << (8 * i);
  if (crc32c_update(0, bytes->data() + kManifestHeaderBytes,
                    bytes->size() - kManifestHeaderBytes) != crc)
    return absl::DataLossError(path + ": part file checksum mismatch");
  return m;
}

// Rank 0: merge the parts, write the manifest, publish the directory, move `latest`.
absl::Status publish(const std::string& dir, const std::string& tmp, const std::string& final_dir,
                     Manifest header, int world_size) {
  for (int r = 0; r < world_size; ++r) {
    absl::StatusOr<Manifest> part = read_part(tmp + "/" + part_file(r));
    if (!part.ok()) return part.status();
    header.MergeFrom(*part);
  }
  for (const TensorEntry& e : header.tensors())
    if (e.box_offset_size() > 0) header.set_format_version(kManifestBoxVersion);
  if (absl::Status s = validate_manifest(header); !s.ok())
    return absl::InternalError(
        absl::StrCat("checkpoint: the merged manifest is inconsistent: ", s.message()));
  absl::Status s = write_file(tmp + "/" + kManifestFile, encode_manifest(header));
  std::string text;
  google::protobuf::TextFormat::PrintToString(header, &text);
  if (s.ok()) s = write_file(tmp + "/" + kManifestText, text);
  if (!s.ok()) return s;
  for (int r = 0; r < world_size; ++r) std::remove((tmp + "/" + part_file(r)).c_str());
  if (s = fsync_dir(tmp); !s.ok()) return s;
  test_delay();
  // Saving a step that already exists (a run resumed from an older checkpoint): move the old one
  // aside first (rename cannot replace a non-empty directory), delete it after.
  const std::string trash = dir + "/.trash_" + fs::path(final_dir).filename().string();
  std::error_code ec;
  const bool replaced = fs::exists(final_dir, ec);
  if (replaced) {
    if (s = rename_path(final_dir, trash); !s.ok()) return s;
  }
  if (s = rename_path(tmp, final_dir); !s.ok()) return s;
  if (s = fsync_dir(dir); !s.ok()) return s;
  test_delay();
  const std::string name = fs::path(final_dir).filename().string();
  if (s = write_file(dir + "/latest.tmp", name + "\n"); !s.ok()) return s;
  if (s = rename_path(dir + "/latest.tmp", dir + "/" + kLatest); !s.ok()) return s;
  if (s = fsync_dir(dir); !s.ok()) return s;
  if (replaced) fs::remove_all(trash, ec);
  return absl::OkStatus();
}

}  // namespace

absl::Status agree_across_ranks(parallel::Communicator& world, const absl::Status& mine,
                                const char* what) {
  const double any_failed =
      world.size() > 1 ? world.all_reduce_scalar(mine.ok() ? 0.0 : 1.0, parallel::ReduceOp::kMax)
                       : (mine.ok() ? 0.0 : 1.0);
  if (!mine.ok()) return mine;
  if (any_failed > 0)
    return absl::AbortedError(
        absl::StrCat("checkpoint: ", what, " failed on another rank (see its message)"));
  return absl::OkStatus();
}

std::string optimizer_tensor_name(const std::string& state_name) {
  std::string s = state_name;
  const size_t slash = s.find('/');
  if (slash != std::string::npos) s[slash] = '.';
  return "optim." + s;
}

std::string encode_generator_state(uint64_t seed, uint64_t offset) {
  std::string s;
  for (uint64_t v : {seed, offset})
    for (int i = 0; i < 8; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
  return s;
}

bool decode_generator_state(const std::string& b, uint64_t* seed, uint64_t* offset) {
  if (b.size() != 16) return false;
  uint64_t v[2] = {0, 0};
  for (int k = 0; k < 2; ++k)
    for (int i = 0; i < 8; ++i)
      v[k] |= static_cast<uint64_t>(static_cast<uint8_t>(b[8 * k + i])) << (8 * i);
  *seed = v[0];
  *offset = v[1];
  return true;
}

absl::StatusOr<std::string> save_checkpoint(const std::string& dir, Manifest header,
                                            const RankContribution& mine,
                                            parallel::Communicator& world) {
  const int rank = world.rank(), n = world.size();
  const std::string name = step_dir_name(header.step());
  const std::string tmp = dir + "/.tmp_" + name, final_dir = dir + "/" + name;
  absl::Status s;
  if (rank == 0) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (!ec) fs::remove_all(tmp, ec);
    if (!ec) fs::create_directories(tmp, ec);
    if (ec) s = absl::UnavailableError("checkpoint: cannot create " + tmp + ": " + ec.message());
  }
  if (s = agree(world, s, "creating the directory"); !s.ok()) return s;
  header.set_format_version(kManifestFormatVersion);
  header.set_checksum_algorithm(kChecksumAlgorithm);
  header.set_created_unix_s(static_cast<int64_t>(std::time(nullptr)));
  header.clear_tensors();
  header.clear_files();
  header.clear_rng();
  header.clear_loader();
  header.clear_fp8();
  Manifest part;
  s = write_rank_files(tmp, mine, rank, &part);
  test_delay();
  if (s = agree(world, s, "writing shard files"); !s.ok()) return s;
  if (rank == 0) s = publish(dir, tmp, final_dir, header, n);
  if (s = agree(world, s, "publishing the manifest"); !s.ok()) return s;
  return final_dir;
}

std::vector<std::string> apply_retention(const std::string& dir, int keep_last,
                                         int64_t keep_every) {
  std::error_code ec;
  std::map<int64_t, std::string> steps;
  std::vector<std::string> stale;
  for (const auto& ent : fs::directory_iterator(dir, ec)) {
    const std::string name = ent.path().filename().string();
    const int64_t step = parse_step_dir_name(name);
    if (step >= 0 && ent.is_directory(ec)) steps[step] = name;
    if (name.rfind(".tmp_", 0) == 0 || name.rfind(".trash_", 0) == 0 ||
        name.rfind(".deleting_", 0) == 0)
      stale.push_back(name);
  }
  std::string latest;
  if (absl::StatusOr<std::string> l = read_checkpoint_file(dir + "/" + kLatest); l.ok())
    latest = std::string(absl::StripAsciiWhitespace(*l));
  std::set<int64_t> keep;
  int kept = 0;
  for (auto it = steps.rbegin(); it != steps.rend(); ++it) {
    if (keep_last <= 0 || kept < keep_last) keep.insert(it->first);
    ++kept;
    if (keep_every > 0 && it->first % keep_every == 0) keep.insert(it->first);
    if (it->second == latest) keep.insert(it->first);
  }
  std::vector<std::string> removed;
  for (const auto& [step, name] : steps) {
    if (keep.count(step)) continue;
    // Renamed first, so that an interrupted delete never leaves a partial step_* directory.
    const std::string doomed = dir + "/.deleting_" + name;
    if (std::rename((dir + "/" + name).c_str(), doomed.c_str()) != 0) continue;
    fs::remove_all(doomed, ec);
    removed.push_back(name);
  }
  for (const std::string& name : stale) fs::remove_all(dir + "/" + name, ec);
  return removed;
}

absl::StatusOr<std::string> find_resume_checkpoint(const CheckpointConfig& c,
                                                   const std::string& prefix) {
  const std::string mode = absl::AsciiStrToLower(c.resume());
  if (mode == "never") return std::string();
  const bool automatic = mode == "auto" || mode.empty();
  std::string root = c.dir();
  std::error_code ec;
  if (!automatic) {
    // A checkpoint directory is taken as given (loading says what is wrong with it).
    if (fs::exists(c.resume() + "/" + kManifestFile, ec) ||
        parse_step_dir_name(fs::path(c.resume()).lexically_normal().filename().string()) >= 0)
      return c.resume();
    if (!fs::is_directory(c.resume(), ec))
      return absl::NotFoundError(absl::StrCat(prefix, "'", c.resume(), "' does not exist"));
    root = c.resume();
  }
  if (!fs::is_directory(root, ec)) return std::string();
  // `latest` is the commit point: a step directory it does not name yet was not committed.
  absl::StatusOr<std::string> latest = read_checkpoint_file(root + "/" + kLatest);
  if (latest.ok()) {
    const std::string name(absl::StripAsciiWhitespace(*latest));
    if (parse_step_dir_name(name) < 0)
      return absl::DataLossError(absl::StrCat("checkpoint: ", root, "/latest holds '",
                                              name.substr(0, 100), "', not a step_* name"));
    if (!fs::is_directory(root + "/" + name, ec))
      return absl::NotFoundError(
          absl::StrCat("checkpoint: ", root, "/latest names ", name, ", which does not exist"));
    return root + "/" + name;
  }
  // No pointer (deleted by hand, or the first save was killed just before writing it): the newest
  // step directory, complete by construction.
  int64_t best = -1;
  std::string best_name;
  for (const auto& ent : fs::directory_iterator(root, ec)) {
    const std::string name = ent.path().filename().string();
    const int64_t step = parse_step_dir_name(name);
    if (step > best && ent.is_directory(ec)) {
      best = step;
      best_name = name;
    }
  }
  if (best >= 0) return root + "/" + best_name;
  if (!automatic)
    return absl::NotFoundError(absl::StrCat(prefix, "no checkpoint in '", c.resume(), "'"));
  return std::string();
}

}  // namespace kiln::launch
