// The world from each launcher's environment (kiln's own KILN_*, Open MPI, Slurm inside a job
// step only; precedence when several are set), the local device, the banner, ParallelDims
// coordinates, the rendezvous directory from KILN_RENDEZVOUS, and make_world_comm's errors for
// launches it cannot serve. Single process: the variables are set and cleared by the tests
// themselves.
#include "parallel/world.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "parallel/file_comm.h"

namespace kiln::parallel {
namespace {

using ::testing::HasSubstr;

const char* const kVars[] = {"KILN_RANK",
                             "KILN_WORLD_SIZE",
                             "KILN_LOCAL_RANK",
                             "KILN_LOCAL_WORLD_SIZE",
                             "KILN_RENDEZVOUS",
                             "KILN_RUN_ID",
                             "OMPI_COMM_WORLD_SIZE",
                             "OMPI_COMM_WORLD_RANK",
                             "OMPI_COMM_WORLD_LOCAL_RANK",
                             "OMPI_COMM_WORLD_LOCAL_SIZE",
                             "SLURM_NTASKS",
                             "SLURM_PROCID",
                             "SLURM_LOCALID",
                             "SLURM_NTASKS_PER_NODE",
                             "SLURM_JOB_ID",
                             "SLURM_STEP_ID",
                             "SLURM_STEP_NUM_TASKS",
                             "SLURM_STEP_TASKS_PER_NODE",
                             "SLURM_TASKS_PER_NODE",
                             "SLURM_NODEID",
                             "SLURM_RESTART_COUNT",
                             "PMIX_RANK",
                             "PMI_RANK",
                             "PMI_FD"};

// Clears every launcher variable for the test and restores the old values after it.
class Env : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* v : kVars) {
      const char* old = std::getenv(v);
      saved_.push_back(old ? std::string(old) : std::string("\x01"));
      unsetenv(v);
    }
  }
  void TearDown() override {
    for (size_t i = 0; i < saved_.size(); ++i) {
      if (saved_[i] == "\x01") {
        unsetenv(kVars[i]);
      } else {
        setenv(kVars[i], saved_[i].c_str(), 1);
      }
    }
  }
  static void set(const char* name, const char* value) { setenv(name, value, 1); }

 private:
  std::vector<std::string> saved_;
};

TEST_F(Env, NoLauncherIsASingleProcess) {
  const World w = detect_world();
  EXPECT_EQ(w.size, 1);
  EXPECT_EQ(w.rank, 0);
  EXPECT_EQ(w.launcher, "single");
}

TEST_F(Env, SlurmGivesRankSizeAndLocalRank) {
  set("SLURM_STEP_ID", "0");  // inside srun
  set("SLURM_NTASKS", "16");
  set("SLURM_PROCID", "9");
  set("SLURM_LOCALID", "1");
  set("SLURM_NODEID", "1");
  set("SLURM_STEP_TASKS_PER_NODE", "8(x2)");  // Slurm's compressed form for 2 nodes of 8
  const World w = detect_world();
  EXPECT_EQ(w.launcher, "slurm");
  EXPECT_EQ(w.size, 16);
  EXPECT_EQ(w.rank, 9);
  EXPECT_EQ(w.local_rank, 1);
  EXPECT_EQ(w.local_size, 8);
}

// A batch script of a 2-task job has SLURM_PROCID=0 and SLURM_NTASKS=2 but no job step: `kiln
// eval` there is one process (this is what failed before).
TEST_F(Env, SlurmTaskVariablesOutsideAJobStepAreASingleProcess) {
  set("SLURM_JOB_ID", "12");
  set("SLURM_NTASKS", "2");
  set("SLURM_PROCID", "0");
  set("SLURM_LOCALID", "0");
  set("SLURM_TASKS_PER_NODE", "2");
  World w = detect_world();
  EXPECT_EQ(w.launcher, "single");
  EXPECT_EQ(w.size, 1);
  // srun -n 1 inside that job: a step of one task, though the job has two.
  set("SLURM_STEP_ID", "3");
  set("SLURM_STEP_NUM_TASKS", "1");
  w = detect_world();
  EXPECT_EQ(w.launcher, "slurm");
  EXPECT_EQ(w.size, 1);
}

TEST_F(Env, SlurmLocalSizeIsThisNodesEntryOfTheStepTaskList) {
  set("SLURM_STEP_ID", "0");
  set("SLURM_STEP_NUM_TASKS", "11");
  set("SLURM_PROCID", "9");
  set("SLURM_LOCALID", "1");
  set("SLURM_STEP_TASKS_PER_NODE", "4(x2),3");  // nodes 0-1: 4 tasks, node 2: 3
  set("SLURM_NODEID", "2");
  EXPECT_EQ(detect_world().local_size, 3);
  set("SLURM_NODEID", "1");
  EXPECT_EQ(detect_world().local_size, 4);
}

TEST_F(Env, LocalDeviceIsLocalRankModuloVisibleDevices) {
  World w;
  w.size = 16;
  w.local_rank = 3;
  EXPECT_EQ(local_device(w, 8), 3);  // every GPU of the node visible
  EXPECT_EQ(local_device(w, 1), 0);  // srun --gpus-per-task=1: the task's one GPU is device 0
  EXPECT_EQ(local_device(w, 2), 1);
  EXPECT_EQ(local_device(w, 0), 3);  // count unknown: the local rank
}

TEST_F(Env, BannerNamesWorldLauncherCommunicatorAndDevice) {
  World w;
  w.size = 2;
  w.rank = 0;
  w.local_size = 2;
  w.launcher = "slurm";
  const std::string b = describe_world(w, "mpi + nccl", "cuda:0");
  EXPECT_THAT(b, HasSubstr("world 2 ranks"));
  EXPECT_THAT(b, HasSubstr("launcher slurm"));
  EXPECT_THAT(b, HasSubstr("communicator mpi + nccl"));
  EXPECT_THAT(b, HasSubstr("device cuda:0"));
}

TEST_F(Env, SrunWithoutPmiIsAClearErrorBeforeMpiInit) {
  World w;
  w.size = 2;
  w.launcher = "slurm";
  auto c = make_world_comm(w);  // no PMIX_RANK / PMI_RANK: MPI_Init would fail
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("--mpi=pmix"));
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("KILN_RENDEZVOUS=file:DIR"));
}

TEST_F(Env, OpenMpiWinsOverSlurmAndKilnWinsOverBoth) {
  set("SLURM_NTASKS", "16");
  set("SLURM_PROCID", "9");
  set("OMPI_COMM_WORLD_SIZE", "4");
  set("OMPI_COMM_WORLD_RANK", "3");
  set("OMPI_COMM_WORLD_LOCAL_RANK", "3");
  set("OMPI_COMM_WORLD_LOCAL_SIZE", "4");
  World w = detect_world();  // mpirun inside an allocation: Open MPI's view
  EXPECT_EQ(w.launcher, "mpi");
  EXPECT_EQ(w.size, 4);
  EXPECT_EQ(w.rank, 3);
  set("KILN_WORLD_SIZE", "2");
  set("KILN_RANK", "1");
  set("KILN_LOCAL_RANK", "1");
  w = detect_world();  // an explicit launch wins
  EXPECT_EQ(w.launcher, "env");
  EXPECT_EQ(w.size, 2);
  EXPECT_EQ(w.rank, 1);
  EXPECT_EQ(w.local_rank, 1);
  EXPECT_EQ(w.local_size, 2);
}

TEST_F(Env, ParallelDimsCoordinatesTpFastestThenDpThenPp) {
  World w;
  w.size = 12;
  auto d = make_dims(3, 2, 2, w);
  ASSERT_TRUE(d.ok()) << d.status().message();
  EXPECT_EQ(d->world_size(), 12);
  // rank = tp_rank + tp * (dp_rank + dp * pp_rank)
  for (int r = 0; r < 12; ++r) {
    EXPECT_EQ(d->tp_rank(r) + 2 * (d->dp_rank(r) + 3 * d->pp_rank(r)), r) << r;
  }
  EXPECT_EQ(d->dp_rank(7), 0);  // 7 = 1 + 2 * (0 + 3 * 1)
  EXPECT_EQ(d->pp_rank(7), 1);
  auto bad = make_dims(2, 2, 2, w);
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("parallel.dp * parallel.tp"));
}

TEST_F(Env, RendezvousDirNeedsAFileSpecAndARunId) {
  EXPECT_EQ(*rendezvous_dir(), "");  // unset: no file rendezvous
  set("KILN_RENDEZVOUS", "tcp://host:1234");
  auto r = rendezvous_dir();
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("expected file:DIR"));
  set("KILN_RENDEZVOUS", "file:/shared/rdzv");
  r = rendezvous_dir();
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("KILN_RUN_ID"));
  set("SLURM_JOB_ID", "4711");
  set("SLURM_STEP_ID", "2");
  EXPECT_EQ(*rendezvous_dir(), "/shared/rdzv/4711.2.r0");  // srun: the job step names the run
  set("SLURM_RESTART_COUNT", "2");  // the job's third attempt (requeued twice)
  EXPECT_EQ(*rendezvous_dir(), "/shared/rdzv/4711.2.r2");
  set("KILN_RUN_ID", "exp-7");
  EXPECT_EQ(*rendezvous_dir(), "/shared/rdzv/exp-7.r2");  // an explicit id wins, keyed by restart
  unsetenv("SLURM_RESTART_COUNT");
  EXPECT_EQ(*rendezvous_dir(), "/shared/rdzv/exp-7");
  set("KILN_RUN_ID", "../escape");
  r = rendezvous_dir();
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("must not contain '/'"));
}

TEST_F(Env, KilnLaunchWithoutRendezvousIsAClearError) {
  World w;
  w.size = 2;
  w.launcher = "env";
  auto c = make_world_comm(w);
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("KILN_RENDEZVOUS=file:DIR"));
  // One rank needs no communication at all.
  w.size = 1;
  auto single = make_world_comm(w);
  ASSERT_TRUE(single.ok());
  EXPECT_EQ((*single)->backend(), "single");
}

TEST_F(Env, UnwritableRendezvousDirectoryIsAClearError) {
  set("KILN_RENDEZVOUS", "file:/proc/kiln-cannot-create-this");
  set("KILN_RUN_ID", "x");
  World w;
  w.size = 2;
  w.launcher = "env";
  auto c = make_world_comm(w);
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("/proc/kiln-cannot-create-this"));
}

// Symbolic links planted in a reused run id's directory (as a hostile user could, for a root
// process): the rendezvous never writes through one (the victim file keeps its bytes) and refuses
// a linked directory, naming it.
std::string fresh_dir(const std::string& name) {
  const std::string d = ::testing::TempDir() + "/kiln_world_" + name;
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(FileRendezvous, NeverWritesThroughASymlink) {
  const std::string root = fresh_dir("symlink"), base = root + "/run", victim = root + "/victim";
  std::ofstream(victim) << "precious";
  // Every communicator generation this process may reach: w<n>/.tmp.attempt and w<n>/attempt.
  for (int g = 0; g < 64; ++g) {
    const std::string w = base + "/w" + std::to_string(g);
    std::filesystem::create_directories(w);
    std::filesystem::create_symlink(victim, w + "/.tmp.attempt");
    std::filesystem::create_symlink(victim, w + "/attempt");
  }
  auto c = make_file_comm(base, 0, 1);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->all_reduce_scalar(3.0), 3.0);
  EXPECT_EQ(read_text(victim), "precious");
}

TEST(FileRendezvous, RefusesALinkedRunDirectory) {
  const std::string root = fresh_dir("linkdir");
  std::filesystem::create_directories(root + "/elsewhere");
  std::filesystem::create_directories(root + "/run");
  for (int g = 0; g < 64; ++g)
    std::filesystem::create_directory_symlink(root + "/elsewhere",
                                              root + "/run/w" + std::to_string(g));
  auto c = make_file_comm(root + "/run", 0, 1);
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("is a symbolic link"));
  EXPECT_TRUE(std::filesystem::is_empty(root + "/elsewhere"));
}

}  // namespace
}  // namespace kiln::parallel
