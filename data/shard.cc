// llm.c token shards (see shard.h): buffered writer with a temporary name, and a validating
// memory-mapped reader.
#include "data/shard.h"

#include <setjmp.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/check.h"

namespace kiln::data {
namespace {

absl::Status shard_error(const std::string& path, std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("shard ", path, ": ", std::string(what)));
}

absl::Status io_error(const std::string& what, const std::string& path) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

// SIGBUS while this thread copies out of a mapping (guarded_copy) jumps back there; any other
// SIGBUS keeps its default action.
thread_local sigjmp_buf* t_bus_jump = nullptr;

void on_sigbus(int sig, siginfo_t*, void*) {
  if (t_bus_jump != nullptr) siglongjmp(*t_bus_jump, 1);
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

// Runs `copy`; false when it touched a page past the end of a truncated file.
template <typename F>
bool guarded_copy(const F& copy) {
  static std::once_flag installed;
  std::call_once(installed, [] {
    struct sigaction sa = {};
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGBUS, &sa, nullptr);
  });
  sigjmp_buf jump;
  if (sigsetjmp(jump, 1) != 0) {
    t_bus_jump = nullptr;
    return false;
  }
  t_bus_jump = &jump;
  copy();
  t_bus_jump = nullptr;
  return true;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ShardWriter>> ShardWriter::Create(const std::string& path,
                                                                 int token_bytes) {
  KILN_CHECK(token_bytes == 2 || token_bytes == 4) << "token_bytes " << token_bytes;
  std::unique_ptr<ShardWriter> w(new ShardWriter());
  w->path_ = path;
  w->tmp_ = absl::StrCat(path, ".tmp.", ::getpid());
  w->token_bytes_ = token_bytes;
  w->f_ = std::fopen(w->tmp_.c_str(), "wb");
  if (!w->f_) return io_error("cannot create", w->tmp_);
  std::vector<char> zeros(kShardHeaderBytes, 0);  // placeholder header, rewritten by Close()
  if (std::fwrite(zeros.data(), 1, zeros.size(), w->f_) != zeros.size()) {
    return io_error("cannot write", w->tmp_);
  }
  return w;
}

ShardWriter::~ShardWriter() {
  if (f_) {
    std::fclose(f_);
    ::unlink(tmp_.c_str());
  }
}

absl::Status ShardWriter::Append(std::span<const int32_t> tokens) {
  KILN_CHECK(f_) << "Append after Close on " << path_;
  KILN_CHECK_LE(count_ + static_cast<int64_t>(tokens.size()), kMaxShardTokens);
  const uint32_t max = token_bytes_ == 2 ? 0xFFFFu : 0x7FFFFFFFu;
  buf_.resize(tokens.size() * token_bytes_);
  char* p = buf_.data();
  for (int32_t t : tokens) {
    KILN_CHECK(t >= 0 && static_cast<uint32_t>(t) <= max)
        << "token " << t << " does not fit a " << token_bytes_ << "-byte shard " << path_;
    if (token_bytes_ == 2) {
      uint16_t v = static_cast<uint16_t>(t);
      std::memcpy(p, &v, 2);
    } else {
      uint32_t v = static_cast<uint32_t>(t);
      std::memcpy(p, &v, 4);
    }
    p += token_bytes_;
  }
  if (std::fwrite(buf_.data(), 1, buf_.size(), f_) != buf_.size()) {
    return io_error("cannot write", tmp_);
  }
  count_ += static_cast<int64_t>(tokens.size());
  return absl::OkStatus();
}

absl::Status ShardWriter::Close() {
  KILN_CHECK(f_) << "Close twice on " << path_;
  int32_t header[kShardHeaderInts] = {};
  header[0] = token_bytes_ == 2 ? kShardMagicU16 : kShardMagicU32;
  header[1] = token_bytes_ == 2 ? kShardVersionU16 : kShardVersionU32;
  header[2] = static_cast<int32_t>(count_);
  bool ok = std::fseek(f_, 0, SEEK_SET) == 0 &&
            std::fwrite(header, 1, sizeof(header), f_) == sizeof(header) && std::fflush(f_) == 0 &&
            ::fsync(::fileno(f_)) == 0;
  absl::Status st = ok ? absl::OkStatus() : io_error("cannot write", tmp_);
  if (std::fclose(f_) != 0 && st.ok()) st = io_error("cannot close", tmp_);
  f_ = nullptr;
  if (st.ok() && std::rename(tmp_.c_str(), path_.c_str()) != 0) {
    st = io_error("cannot rename into", path_);
  }
  if (!st.ok()) ::unlink(tmp_.c_str());
  return st;
}

absl::Status write_shard(const std::string& path, std::span<const int32_t> tokens,
                         int token_bytes) {
  auto w = ShardWriter::Create(path, token_bytes);
  if (!w.ok()) return w.status();
  if (auto st = (*w)->Append(tokens); !st.ok()) return st;
  return (*w)->Close();
}

absl::StatusOr<Shard> Shard::Open(const std::string& path, int64_t vocab_size) {
  auto file = MappedFile::Open(path);
  if (!file.ok()) {
    return absl::Status(file.status().code(),
                        absl::StrCat("shard ", path, " is unreadable: ", file.status().message()));
  }
  const int64_t size = static_cast<int64_t>(file->size());
  if (size == 0) return shard_error(path, "empty file (0 bytes)");
  if (size < kShardHeaderBytes) {
    return shard_error(path, absl::StrCat("truncated: ", size, " bytes, shorter than the ",
                                          kShardHeaderBytes, "-byte header"));
  }
  int32_t header[3];
  std::memcpy(header, file->data().data(), sizeof(header));
  const int32_t magic = header[0], version = header[1], count = header[2];
  int token_bytes;
  if (magic == kShardMagicU16) {
    token_bytes = 2;
    if (version != kShardVersionU16) {
      return shard_error(path, absl::StrCat("unsupported version ", version, " for magic ", magic,
                                            " (uint16 shards are version ", kShardVersionU16, ")"));
    }
  } else if (magic == kShardMagicU32) {
    token_bytes = 4;
    if (version != kShardVersionU32) {
      return shard_error(path, absl::StrCat("unsupported version ", version, " for magic ", magic,
                                            " (uint32 shards are version ", kShardVersionU32, ")"));
    }
  } else {
    return shard_error(path, absl::StrCat("bad magic ", magic, " (expected ", kShardMagicU16,
                                          " for uint16 tokens or ", kShardMagicU32,
                                          " for uint32 tokens): not a token shard"));
  }
  const int64_t payload = size - kShardHeaderBytes;
  if (count < 0)
    return shard_error(path, absl::StrCat("negative token count ", count, " in header"));
  if (count == 0) return shard_error(path, "holds no tokens (header count 0)");
  if (payload % token_bytes != 0 || payload / token_bytes < count) {
    return shard_error(path, absl::StrCat("truncated: header says ", count, " tokens (",
                                          kShardHeaderBytes + int64_t{count} * token_bytes,
                                          " bytes) but the file has ", size, " bytes"));
  }
  if (payload / token_bytes != count) {
    return shard_error(
        path, absl::StrCat("header token count ", count, " does not match the file size (", size,
                           " bytes hold ", payload / token_bytes, " tokens)"));
  }
  Shard s;
  s.file_ = *std::move(file);
  s.tokens_ = s.file_.data().data() + kShardHeaderBytes;
  s.count_ = count;
  s.token_bytes_ = token_bytes;
  // Without a vocabulary, uint32 tokens must still fit the int32 ids the loader hands out.
  const int64_t limit = vocab_size > 0 ? vocab_size : (token_bytes == 4 ? int64_t{1} << 31 : 0);
  if (limit > 0) {
    // Scan for the largest token first (vectorises), then find the first offender for the message.
    uint32_t max_tok = 0;
    if (token_bytes == 2) {
      const auto* p = reinterpret_cast<const uint16_t*>(s.tokens_);
      for (int64_t i = 0; i < count; ++i) max_tok = std::max<uint32_t>(max_tok, p[i]);
    } else {
      const auto* p = reinterpret_cast<const uint32_t*>(s.tokens_);
      for (int64_t i = 0; i < count; ++i) max_tok = std::max<uint32_t>(max_tok, p[i]);
    }
    if (max_tok >= static_cast<uint64_t>(limit)) {
      int64_t i = 0;
      while (static_cast<uint32_t>(s.token(i)) < static_cast<uint64_t>(limit)) ++i;
      return shard_error(path, absl::StrCat("token ", static_cast<uint32_t>(s.token(i)),
                                            " at index ", i, " is >= the vocabulary size ", limit));
    }
  }
  return s;
}

int32_t Shard::token(int64_t i) const {
  if (token_bytes_ == 2) {
    uint16_t v;
    std::memcpy(&v, tokens_ + 2 * i, 2);
    return v;
  }
  uint32_t v;
  std::memcpy(&v, tokens_ + 4 * i, 4);
  return static_cast<int32_t>(v);
}

void Shard::read(int64_t start, int64_t n, int32_t* out) const {
  KILN_CHECK(start >= 0 && n >= 0 && start + n <= count_)
      << "read [" << start << ", " << start + n << ") of " << count_ << " tokens in " << path();
  // The file must still be as long as when it was opened: reading a mapping past the end of a
  // file truncated since is a SIGBUS (or zeros within the last page). The size is checked first,
  // and a truncation racing with the copy is caught by the SIGBUS guard.
  struct stat st;
  const int64_t want = kShardHeaderBytes + count_ * token_bytes_;
  KILN_CHECK(::stat(path().c_str(), &st) == 0 && st.st_size >= want)
      << "data shard " << path() << " changed during training: it is now "
      << (::stat(path().c_str(), &st) == 0 ? std::to_string(st.st_size) + " bytes" : "gone")
      << " but was " << want << " bytes when opened (truncated or replaced?); restore it and "
      << "resume from the last checkpoint";
  const bool ok = guarded_copy([&] {
    if (token_bytes_ == 2) {
      const char* p = tokens_ + 2 * start;
      for (int64_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, p + 2 * i, 2);
        out[i] = v;
      }
    } else {
      std::memcpy(out, tokens_ + 4 * start, 4 * n);
    }
  });
  KILN_CHECK(ok) << "data shard " << path() << " was truncated during training (SIGBUS reading "
                 << "tokens [" << start << ", " << start + n << ")); restore it and resume from "
                 << "the last checkpoint";
}

}  // namespace kiln::data
