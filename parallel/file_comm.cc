// The file communicator: every collective k is an exchange in which each rank writes one file
// (c<k>.r<rank>: a header naming the op, dtype and element count, then the payload), atomically
// through a temporary name and a rename, and reads every other rank's file of that collective.
// A rank deletes its own file of collective k-2 when it starts collective k: having finished k-1
// it has seen every rank's k-1 file, which each rank writes only after it has finished k-2, so
// nobody reads the k-2 files any more. Send/recv use one file per message, deleted by the
// receiver. Waits are bounded by the collective timeout, like the MPI and NCCL backends.
//
// Attempts: a directory may hold files of an earlier attempt of the same run id (a requeued job
// whose id did not change, a crash). Before any collective the ranks agree on a fresh attempt
// through a handshake no earlier attempt can satisfy: rank 0 deletes the old hello / attempt files,
// every other rank writes hello.r<rank> holding a random nonce (rewritten until answered), rank 0
// collects them and writes `attempt` listing every rank's nonce, and each rank waits until that
// file lists its own nonce. The collectives then live in a<rank 0's nonce>/, where no file of an
// earlier attempt can be.
#include "parallel/file_comm.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <sstream>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/check.h"
#include "core/cpu/elem.h"

namespace kiln::parallel {
namespace {

class DoneWork final : public Work {
 public:
  void wait() override {}
};

// Writes `data` to `path` through a temporary name in the same directory and a rename, so a
// reader sees either no file or the whole file. Never follows a symbolic link: the temporary is
// created with O_EXCL | O_NOFOLLOW (a leftover one, or a link planted in its place, is unlinked
// first: unlink removes the link, not its target), and rename replaces a link at `path` itself.
void write_atomic(const std::string& path, const std::string& data) {
  const size_t slash = path.rfind('/');
  const std::string tmp = path.substr(0, slash + 1) + ".tmp." + path.substr(slash + 1);
  int fd = -1;
  for (int attempt = 0; attempt < 2 && fd < 0; ++attempt) {
    fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0 && errno == EEXIST) ::unlink(tmp.c_str());
  }
  KILN_CHECK(fd >= 0) << "file communicator: cannot create " << tmp << ": " << std::strerror(errno);
  bool ok = true;
  for (size_t done = 0; ok && done < data.size();) {
    const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    ok = n > 0 || (n < 0 && errno == EINTR);
    if (n > 0) done += static_cast<size_t>(n);
  }
  KILN_CHECK(::close(fd) == 0 && ok)
      << "file communicator: cannot write " << tmp << ": " << std::strerror(errno);
  KILN_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0)
      << "file communicator: cannot rename " << tmp << " to " << path << ": "
      << std::strerror(errno);
}

// Reads `path` whole; false when it does not exist (yet). Never follows a symbolic link, and
// refuses anything but a regular file (no file of a rendezvous is anything else).
bool try_read(const std::string& path, std::string* out) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    KILN_CHECK(errno != ELOOP) << "file communicator: " << path
                               << " is a symbolic link; the rendezvous never follows one";
    return false;
  }
  struct stat st;
  KILN_CHECK(::fstat(fd, &st) == 0 && S_ISREG(st.st_mode))
      << "file communicator: " << path << " is not a regular file";
  out->clear();
  char buf[1 << 16];
  for (ssize_t n; (n = ::read(fd, buf, sizeof(buf))) != 0;) {
    if (n < 0 && errno == EINTR) continue;
    KILN_CHECK(n > 0) << "file communicator: cannot read " << path << ": " << std::strerror(errno);
    out->append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return true;
}

// OK when `dir` is a real directory (lstat: not a symbolic link to one), else why not.
absl::Status check_real_dir(const std::string& dir) {
  struct stat st;
  if (::lstat(dir.c_str(), &st) != 0)
    return absl::UnavailableError(
        absl::StrCat("KILN_RENDEZVOUS: cannot stat ", dir, ": ", std::strerror(errno)));
  if (S_ISLNK(st.st_mode) || !S_ISDIR(st.st_mode))
    return absl::FailedPreconditionError(
        absl::StrCat("KILN_RENDEZVOUS: ", dir, " is ",
                     S_ISLNK(st.st_mode) ? "a symbolic link" : "not a directory",
                     "; the rendezvous never follows links inside its run directory"));
  return absl::OkStatus();
}

// Bytes of a contiguous CPU tensor.
std::string bytes_of(const Tensor& t) {
  return std::string(static_cast<const char*>(t.raw()), t.numel() * dtype_size(t.dtype()));
}

class FileCommunicator final : public Communicator {
 public:
  FileCommunicator(std::string dir, int rank, int size)
      : dir_(std::move(dir)), rank_(rank), size_(size) {}

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "file"; }

  std::unique_ptr<Work> all_reduce_async(const Tensor& t, ReduceOp op) override {
    check(t, "all_reduce");
    std::vector<std::string> parts = exchange("all_reduce", t, bytes_of(t), t.numel());
    reduce(parts, 0, t, op);
    return std::make_unique<DoneWork>();
  }

  std::unique_ptr<Work> reduce_scatter_async(const Tensor& in, const Tensor& out,
                                             ReduceOp op) override {
    check(in, "reduce_scatter");
    check(out, "reduce_scatter");
    KILN_CHECK_EQ(in.numel(), out.numel() * size_);
    KILN_CHECK(in.dtype() == out.dtype()) << "reduce_scatter: " << in.str() << " -> " << out.str();
    std::vector<std::string> parts = exchange("reduce_scatter", in, bytes_of(in), in.numel());
    reduce(parts, out.numel() * rank_, out, op);
    return std::make_unique<DoneWork>();
  }

  std::unique_ptr<Work> all_gather_async(const Tensor& in, const Tensor& out) override {
    check(in, "all_gather");
    check(out, "all_gather");
    KILN_CHECK_EQ(in.numel() * size_, out.numel());
    KILN_CHECK(in.dtype() == out.dtype()) << "all_gather: " << in.str() << " -> " << out.str();
    std::vector<std::string> parts = exchange("all_gather", in, bytes_of(in), in.numel());
    char* dst = static_cast<char*>(out.raw());
    for (int j = 0; j < size_; ++j)
      std::memcpy(dst + j * parts[j].size(), parts[j].data(), parts[j].size());
    return std::make_unique<DoneWork>();
  }

  void broadcast(const Tensor& t, int root) override {
    check(t, "broadcast");
    KILN_CHECK(root >= 0 && root < size_) << "broadcast: root " << root << " of " << size_;
    // Every rank writes a file (the others an empty payload) so that collective k-1 completing
    // still proves that every rank has finished k-2.
    std::vector<std::string> parts =
        exchange(absl::StrCat("broadcast from ", root), t, rank_ == root ? bytes_of(t) : "", -1);
    const std::string& src = parts[root];
    KILN_CHECK_EQ(static_cast<int64_t>(src.size()), t.numel() * dtype_size(t.dtype()));
    if (rank_ != root) std::memcpy(t.raw(), src.data(), src.size());
  }

  void send(const Tensor& t, int peer) override {
    check(t, "send");
    write_atomic(p2p_name(rank_, peer, sent_[peer]++), header("send", t, t.numel()) + bytes_of(t));
  }

  void recv(const Tensor& t, int peer) override {
    check(t, "recv");
    const std::string path = p2p_name(peer, rank_, received_[peer]++);
    std::string got = wait_read(path, "recv");
    const std::string want = header("send", t, t.numel());
    KILN_CHECK(got.compare(0, want.size(), want) == 0 &&
               got.size() == want.size() + t.numel() * dtype_size(t.dtype()))
        << "file communicator: recv of " << t.str() << " from rank " << peer << " got '"
        << got.substr(0, got.find('\n')) << "'";
    std::memcpy(t.raw(), got.data() + want.size(), got.size() - want.size());
    std::remove(path.c_str());
  }

  void barrier() override { exchange("barrier", Tensor(), "", 0); }

  std::unique_ptr<Communicator> split(int color, int key) override {
    Tensor mine = Tensor::from_vector({static_cast<double>(color), static_cast<double>(key)}, {2},
                                      DType::kI64);
    Tensor all = Tensor::empty({2 * size_}, DType::kI64);
    const int64_t k = seq_;
    all_gather(mine, all);
    const int64_t* p = all.data<int64_t>();
    std::vector<std::pair<int64_t, int>> members;  // (key, old rank) of my color
    for (int j = 0; j < size_; ++j)
      if (p[2 * j] == color) members.emplace_back(p[2 * j + 1], j);
    std::sort(members.begin(), members.end());
    int new_rank = 0;
    while (members[new_rank].second != rank_) ++new_rank;
    const std::string sub = absl::StrCat(dir_, "/split", k, ".c", color);
    KILN_CHECK(::mkdir(sub.c_str(), 0755) == 0 || errno == EEXIST)
        << "file communicator: cannot create " << sub << ": " << std::strerror(errno);
    const absl::Status real = check_real_dir(sub);
    KILN_CHECK(real.ok()) << real.message();
    return std::make_unique<FileCommunicator>(sub, new_rank, static_cast<int>(members.size()));
  }

 private:
  static void check(const Tensor& t, const char* op) {
    KILN_CHECK(t.device().is_cpu()) << "file communicator " << op << ": tensor " << t.str()
                                    << " must be on the CPU (use NCCL for GPU tensors)";
    KILN_CHECK(t.is_contiguous()) << "file communicator " << op << ": tensor " << t.str()
                                  << " must be contiguous";
  }

  static std::string header(const std::string& what, const Tensor& t, int64_t numel) {
    return absl::StrCat(what, " ", t.defined() ? dtype_name(t.dtype()) : "-", " ", numel, "\n");
  }

  std::string coll_name(int64_t k, int rank) const {
    return absl::StrCat(dir_, "/c", k, ".r", rank);
  }
  std::string p2p_name(int from, int to, int64_t n) const {
    return absl::StrCat(dir_, "/p", from, "to", to, ".", n);
  }

  // Waits for `path` (a file appears whole, by rename) and returns its bytes; past the collective
  // timeout the process exits with a message, as the other backends do.
  std::string wait_read(const std::string& path, const std::string& what) const {
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::duration<double>(collective_timeout());
    std::string out;
    for (int polls = 0; !try_read(path, &out); ++polls) {
      if (std::chrono::steady_clock::now() > deadline)
        collective_timed_out(absl::StrCat(what, " (file ", path, ")"), rank_, size_);
      std::this_thread::sleep_for(std::chrono::microseconds(polls < 200 ? 20 : 500));
    }
    return out;
  }

  // Collective k: writes this rank's header + payload and returns every rank's payload (headers
  // checked equal: every rank must call the same collective on the same dtype and size).
  // `numel` -1 means the payload may differ in size between ranks (broadcast).
  std::vector<std::string> exchange(const std::string& what, const Tensor& t,
                                    const std::string& payload, int64_t numel) {
    const int64_t k = seq_++;
    if (k >= 2) std::remove(coll_name(k - 2, rank_).c_str());
    const std::string head = header(what, t, numel < 0 ? t.numel() : numel);
    write_atomic(coll_name(k, rank_), head + payload);
    std::vector<std::string> parts(size_);
    for (int j = 0; j < size_; ++j) {
      if (j == rank_) {
        parts[j] = payload;
        continue;
      }
      std::string got = wait_read(coll_name(k, j), what);
      KILN_CHECK(got.compare(0, head.size(), head) == 0)
          << "file communicator: collective " << k << " on rank " << rank_ << " is '"
          << head.substr(0, head.size() - 1) << "' but rank " << j << " called '"
          << got.substr(0, got.find('\n')) << "'";
      parts[j] = got.substr(head.size());
      if (numel >= 0 && t.defined())
        KILN_CHECK_EQ(static_cast<int64_t>(parts[j].size()),
                      numel * static_cast<int64_t>(dtype_size(t.dtype())));
    }
    return parts;
  }

  // out[i] = op over ranks j (in rank order, in f64) of parts[j] element (first + i).
  void reduce(const std::vector<std::string>& parts, int64_t first, const Tensor& out,
              ReduceOp op) const {
    const DType dt = out.dtype();
    KILN_CHECK(op != ReduceOp::kAvg || is_floating(dt)) << "average of " << out.str();
    for (int64_t i = 0; i < out.numel(); ++i) {
      double acc = op == ReduceOp::kMax ? -INFINITY : 0.0;
      for (int j = 0; j < size_; ++j) {
        const double v = cpu::load(parts[j].data(), dt, first + i);
        acc = op == ReduceOp::kMax ? std::max(acc, v) : acc + v;
      }
      if (op == ReduceOp::kAvg) acc /= size_;
      cpu::store(out.raw(), dt, i, acc);
    }
  }

  std::string dir_;
  int rank_, size_;
  int64_t seq_ = 0;
  std::map<int, int64_t> sent_, received_;
};

// When this process started (near enough: static initialisation), to tell an earlier attempt's
// files from those this attempt's ranks wrote before rank 0 arrived.
const std::chrono::system_clock::time_point kProcessStart = std::chrono::system_clock::now();

// Older by more than 30 s, as the ranks of one attempt can start seconds apart on a loaded node
// (a file of an earlier attempt that is younger is still ignored, just not reported).
bool older_than_this_process(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return false;
  const auto mtime = std::chrono::system_clock::from_time_t(st.st_mtim.tv_sec) +
                     std::chrono::nanoseconds(st.st_mtim.tv_nsec);
  return mtime + std::chrono::seconds(30) < kProcessStart;
}

// A nonce no earlier attempt can have written: random bits, the pid and the time.
std::string fresh_nonce() {
  std::random_device rd;
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  const uint64_t a = (static_cast<uint64_t>(rd()) << 32) ^ rd() ^ static_cast<uint64_t>(ts.tv_nsec);
  const uint64_t b = (static_cast<uint64_t>(::getpid()) << 32) ^ static_cast<uint64_t>(ts.tv_sec);
  char buf[40];
  std::snprintf(buf, sizeof(buf), "%016llx%08llx", static_cast<unsigned long long>(a),
                static_cast<unsigned long long>(b & 0xffffffffu));
  return buf;
}

// The handshake described at the top; returns the attempt directory (created).
absl::StatusOr<std::string> agree_attempt(const std::string& dir, int rank, int size) {
  const auto start = std::chrono::steady_clock::now();
  const auto deadline = start + std::chrono::duration<double>(collective_timeout());
  const std::string attempt_file = dir + "/attempt";
  const std::string mine = fresh_nonce();
  std::vector<std::string> nonces(size);
  nonces[rank] = mine;
  std::string got;
  if (rank == 0) {
    int stale = 0;
    if (DIR* d = ::opendir(dir.c_str())) {
      while (dirent* e = ::readdir(d)) {
        const std::string name = e->d_name;
        if (name != "attempt" && name.rfind("hello.", 0) != 0) continue;
        // Every attempt / hello file goes (a rank of this attempt rewrites its hello); only those
        // older than this process are reported as an earlier attempt's.
        const std::string path = dir + "/" + name;
        const bool old = name == "attempt" || older_than_this_process(path);
        if (std::remove(path.c_str()) == 0 && old) ++stale;
      }
      ::closedir(d);
    }
    if (stale > 0)
      std::fprintf(stderr,
                   "kiln: file rendezvous %s: ignoring %d file(s) of an earlier attempt of this "
                   "run id\n",
                   dir.c_str(), stale);
    for (int j = 1, polls = 0; j < size; ++polls) {
      if (try_read(absl::StrCat(dir, "/hello.r", j), &got) && !got.empty()) {
        nonces[j] = got;
        ++j;
        continue;
      }
      if (std::chrono::steady_clock::now() > deadline)
        return absl::DeadlineExceededError(absl::StrCat(
            "file rendezvous ", dir, ": rank ", j, " of ", size, " did not arrive within ",
            collective_timeout(), " s (parallel.timeout_s)"));
      std::this_thread::sleep_for(std::chrono::milliseconds(polls < 500 ? 2 : 50));
    }
    // The attempt's directory is new (its name is this process's nonce): a directory or link of
    // that name already there is refused, never used.
    const std::string adir = absl::StrCat(dir, "/a", mine);
    if (::mkdir(adir.c_str(), 0755) != 0)
      return absl::UnavailableError(
          absl::StrCat("KILN_RENDEZVOUS: cannot create ", adir, ": ", std::strerror(errno)));
    std::string all;
    for (const std::string& n : nonces) all += n + "\n";
    write_atomic(attempt_file, all);
    return adir;
  }
  const std::string hello = absl::StrCat(dir, "/hello.r", rank);
  auto last_hello = start - std::chrono::seconds(1);
  for (int polls = 0;; ++polls) {
    const auto now = std::chrono::steady_clock::now();
    if (now - last_hello > std::chrono::milliseconds(200)) {  // rank 0 may have deleted it
      write_atomic(hello, mine);
      last_hello = now;
    }
    if (try_read(attempt_file, &got)) {
      std::vector<std::string> lines;
      std::istringstream in(got);
      for (std::string l; std::getline(in, l);) lines.push_back(l);
      if (static_cast<int>(lines.size()) == size && lines[rank] == mine)
        return absl::StrCat(dir, "/a", lines[0]);
    }
    if (now > deadline)
      return absl::DeadlineExceededError(
          absl::StrCat("file rendezvous ", dir, ": rank 0 did not answer rank ", rank, " within ",
                       collective_timeout(), " s (parallel.timeout_s)"));
    std::this_thread::sleep_for(std::chrono::milliseconds(polls < 500 ? 2 : 50));
  }
}

std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::string(v) : fallback;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> make_file_comm(const std::string& base, int rank,
                                                             int size) {
  KILN_CHECK(size >= 1 && rank >= 0 && rank < size) << "rank " << rank << " of " << size;
  // Every rank makes its communicators in the same order (as MPI_Comm_dup is collective), so the
  // n-th one of each process meets the others' n-th in base/w<n>, and a later communicator never
  // reads an earlier one's files.
  static std::atomic<int64_t> generation{0};
  const std::string dir = absl::StrCat(base, "/w", generation++);
  for (size_t pos = 1; pos <= dir.size(); ++pos) {  // mkdir -p
    if (pos != dir.size() && dir[pos] != '/') continue;
    const std::string prefix = dir.substr(0, pos);
    if (::mkdir(prefix.c_str(), 0755) != 0 && errno != EEXIST)
      return absl::UnavailableError(
          absl::StrCat("KILN_RENDEZVOUS: cannot create ", prefix, ": ", std::strerror(errno)));
  }
  // The run id's directories are kiln's own: a symbolic link there (to another run's files, or
  // to somewhere a root process must not write) is refused.
  for (const std::string& own : {base, dir})
    if (absl::Status real = check_real_dir(own); !real.ok()) return real;
  if (::access(dir.c_str(), W_OK) != 0)
    return absl::UnavailableError(
        absl::StrCat("KILN_RENDEZVOUS: ", dir, " is not writable: ", std::strerror(errno)));
  absl::StatusOr<std::string> attempt = agree_attempt(dir, rank, size);
  if (!attempt.ok()) return attempt.status();
  if (absl::Status real = check_real_dir(*attempt); !real.ok()) return real;
  return std::unique_ptr<Communicator>(std::make_unique<FileCommunicator>(*attempt, rank, size));
}

absl::StatusOr<std::string> rendezvous_dir() {
  const std::string spec = env_or("KILN_RENDEZVOUS", "");
  if (spec.empty()) return std::string();
  if (spec.rfind("file:", 0) != 0 || spec.size() == 5)
    return absl::InvalidArgumentError(absl::StrCat(
        "KILN_RENDEZVOUS='", spec, "': expected file:DIR (a directory every rank sees)"));
  // Keyed by restart: a requeued Slurm job keeps its job and step ids but counts restarts.
  const std::string restart = env_or("SLURM_RESTART_COUNT", "");
  std::string id = env_or("KILN_RUN_ID", "");
  if (!id.empty() && !restart.empty() && restart != "0") id += ".r" + restart;
  if (id.empty() && !env_or("SLURM_JOB_ID", "").empty())
    id = env_or("SLURM_JOB_ID", "") + "." + env_or("SLURM_STEP_ID", "0") + ".r" +
         (restart.empty() ? "0" : restart);
  if (id.empty())
    return absl::InvalidArgumentError(
        "KILN_RENDEZVOUS is set but no run id: set KILN_RUN_ID to a value unique to this run (the "
        "same on every rank), or launch with srun (SLURM_JOB_ID)");
  if (id.find('/') != std::string::npos || id == "." || id == "..")
    return absl::InvalidArgumentError(absl::StrCat("KILN_RUN_ID='", id, "' must not contain '/'"));
  return spec.substr(5) + "/" + id;
}

absl::StatusOr<std::unique_ptr<Communicator>> make_world_comm(const World& world) {
  if (world.size <= 1) return make_single();
  absl::StatusOr<std::string> dir = rendezvous_dir();
  if (!dir.ok()) return dir.status();
  if (!dir->empty()) return make_file_comm(*dir, world.rank, world.size);
  if (world.launcher == "slurm" && env_or("PMIX_RANK", "").empty() &&
      env_or("PMI_RANK", "").empty() && env_or("PMI_FD", "").empty())
    // Said before MPI_Init, which would fail without a process-management interface.
    return absl::FailedPreconditionError(absl::StrCat(
        "srun started ", world.size,
        " tasks without PMI (MpiDefault=none or --mpi=none): run srun --mpi=pmix, or set "
        "KILN_RENDEZVOUS=file:DIR (a directory every task sees) to meet through files; see "
        "docs/SLURM.md"));
  if (world.launcher == "env")
    return absl::InvalidArgumentError(
        "launched with KILN_RANK / KILN_WORLD_SIZE but without MPI: set KILN_RENDEZVOUS=file:DIR "
        "(a directory every rank can see) and KILN_RUN_ID");
  std::unique_ptr<Communicator> mpi = make_cpu_world();
  if (mpi->size() != world.size)
    return absl::FailedPreconditionError(
        absl::StrCat("the launcher (", world.launcher, ") started ", world.size,
                     " ranks but MPI sees ", mpi->size(),
                     ": kiln's MPI does not know this launcher; set KILN_RENDEZVOUS=file:DIR "
                     "(a directory every rank can see) to meet through files instead"));
  return mpi;
}

}  // namespace kiln::parallel
