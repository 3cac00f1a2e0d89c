#!/usr/bin/env python3
"""The shipped Slurm scripts (scripts/slurm/) on a private one-node Slurm cluster (cluster.sh: munge,
slurmctld and slurmd on 127.0.0.1, all state under the work directory; stopped at the end), 2 tasks
each, a tiny GPT-2 on synthetic data. Checks:

  plain       kiln_one_node.sbatch (srun --mpi=pmix when the pmix plugin is there, else skipped):
              losses equal the single-process run's; `kiln eval` in the 2-task batch script runs
              as one process and prints the validation loss;
  requeue     `scontrol requeue` mid-run: the next attempt resumes, every loss and the final
              checkpoint equal the uninterrupted run's;
  warning     the time-limit warning (--signal=B:USR1@N) delivered to the batch script after step
              6: the script passes it to kiln, kiln saves and exits 138, the script requeues the
              job, and the job ends with the uninterrupted run's losses;
  timelimit   a real --time=1 limit: Slurm's SIGTERM (SIGCONT, SIGTERM) at the limit makes kiln save
              and exit 143, the job ends TIMEOUT; a second job on the same run directory resumes
              from that checkpoint and ends with the uninterrupted run's losses;
  file        kiln_no_pmix.sbatch (srun --mpi=none, file rendezvous) requeued twice: no stale-file
              error, a rendezvous directory per attempt (.r0 .r1 .r2), bit-identical losses;
  killed      one task SIGKILLed at step 5: the job ends within parallel.timeout_s.

A requeued job is held by Slurm for about two minutes before it may start again (its BeginTime);
the test releases it at once with `scontrol update StartTime=now` (an administrator's command),
which changes nothing else about the job.

What is real Slurm and what the test triggers. Everything is real Slurm (slurmctld, slurmd,
slurmstepd, srun, sbatch, scontrol requeue, the time limit) except the moment of the warning.
slurmctld sends --signal=B:USR1@N from its periodic time-limit check (every 30 s, PERIODIC_TIMEOUT,
not configurable), at the first check that finds the job within N + 30 s of its end ("up to 60 s
earlier than specified", sbatch(1)); for a one-minute job that is anywhere from 0 to 30 s in, so a
test using it either finishes before the warning or gets it at a random step. Worse, in one run
here (2026-12-05) a job started by the backfill scheduler got no warning at all and was cancelled
at its limit. So the warning case delivers the signal itself, after step 6, the way slurmctld
does: `scancel --batch --signal=USR1` calls the same job_signal() on the batch step (slurmctld's
log shows "job_signal: 10 of running JobId=N" for both), and the shipped script must trap it,
pass it on and requeue. The time-limit case keeps the limit real; there the script's own
--signal=B:USR1@120 is replaced by --signal=B:URG@1 (the batch shell ignores SIGURG), so that the
only signals are those of the limit itself, which the check delivers 60-90 s into the job; the
steps are slow enough (5 s) that the run is still going then.

Usage: slurm_test.py --kiln PATH --source DIR --work DIR [--only warning,timelimit,...]
       (root; exit 77 = skipped)
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

STEPS = 24
CONFIG_SETS = [f"training.max_steps={STEPS}", "checkpoint.every_n_steps=4", "checkpoint.keep_last=0",
               "eval.every_n_steps=0", "parallel.timeout_s=20"]
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what, flush=True)
    return cond


def sh(*cmd, env=None, check_rc=True, timeout=60, cwd=None):
    p = subprocess.run(list(cmd), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=timeout, cwd=cwd)
    if check_rc and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {p.returncode}:\n{p.stdout}")
    return p.stdout


def losses(run_dir):
    out = {}
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            if r.get("kind") == "train":
                out[r["step"]] = r["loss"]  # a resumed attempt re-logs: the last record wins
    return out


class Cluster:
    def __init__(self, args):
        self.args = args
        self.work = os.path.abspath(args.work)
        self.dir = os.path.join(self.work, "cluster")
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("SLURM_", "OMPI_", "PMIX_", "KILN_"))}
        self.env.update(SLURM_CONF=os.path.join(self.dir, "slurm.conf"), KILN_NUM_THREADS="1",
                        KILN=args.kiln, CONFIG=os.path.join(self.work, "test.textproto"),
                        FINAL_EVAL="1")

    def sbatch(self, script, name, opts=(), env=None, args=()):
        e = dict(self.env, **(env or {}))
        e["KILN_ARGS"] = " ".join(f"--set {s}" for s in CONFIG_SETS + list(args))
        out = sh("sbatch", "--parsable", f"--job-name={name}", "--ntasks-per-node=2",
                 "--gpus-per-node=0", "--cpus-per-task=1", f"--output={self.work}/%x-%j.out",
                 *opts, os.path.join(self.args.source, "scripts", "slurm", script), env=e,
                 cwd=self.work)  # the submit directory: runs/<name>-<job id> go there
        return out.strip().split(";")[0]

    def job(self, jid):
        out = sh("scontrol", "show", "job", "-o", jid, env=self.env, check_rc=False)
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def wait(self, jid, until, timeout, release=True):
        """Polls the job until until(info) is true; releases a requeued job held by BeginTime."""
        t0 = time.time()
        while time.time() - t0 < timeout:
            info = self.job(jid)
            if until(info):
                return info
            if release and info.get("JobState") == "PENDING" and info.get("Reason") == "BeginTime":
                sh("scontrol", "update", f"JobId={jid}", "StartTime=now", env=self.env)
            time.sleep(0.5)
        return None

    def run_dir(self, name, jid):
        return os.path.join(self.work, "runs", f"{name}-{jid}")

    def output(self, name, jid):
        try:
            with open(os.path.join(self.work, f"{name}-{jid}.out")) as f:
                return f.read()
        except FileNotFoundError:
            return ""


def done(info):
    return info.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
                                    "OUT_OF_MEMORY")


def compare(ref, got, label):
    steps = list(range(1, STEPS + 1))  # metrics.jsonl numbers train steps from 1, like the console
    missing = [s for s in steps if s not in got]
    if not check(not missing, f"{label}: steps {missing} missing"):
        return
    worst = max(abs(got[s] - ref[s]) / abs(ref[s]) for s in steps)
    exact = all(got[s] == ref[s] for s in steps)
    print(f"{label}: {STEPS} steps: max relative loss difference to the single process {worst:.3g} "
          f"({'bit-identical' if exact else 'NOT bit-identical'})", flush=True)
    check(exact, f"{label}: losses differ from the single process (max rel {worst:.3g})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", required=True)
    ap.add_argument("--source", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--only", default="", help="comma-separated cases (default: all)")
    args = ap.parse_args()
    args.kiln = os.path.abspath(args.kiln)
    args.source = os.path.abspath(args.source)
    if os.geteuid() != 0:
        print("slurm_test: skipped: needs root (slurmd runs jobs as their owner)")
        return 77
    if not all(shutil.which(p) for p in ("munged", "slurmctld", "slurmd", "sbatch")):
        print("slurm_test: skipped: slurm-wlm / munge not installed (scripts/install_deps.sh)")
        return 77
    t_start = time.time()
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    shutil.copy(os.path.join(args.source, "configs", "tiny.textproto"),
                os.path.join(args.work, "test.textproto"))
    c = Cluster(args)
    plugin_dirs = ["/usr/lib/x86_64-linux-gnu/slurm-wlm", "/usr/lib/slurm", "/usr/lib64/slurm"]
    pmix = any(os.path.exists(os.path.join(d, "mpi_pmix.so")) for d in plugin_dirs)
    cluster = os.path.join(args.source, "tests", "slurm", "cluster.sh")
    p = subprocess.run(["bash", cluster, "start", c.dir, "pmix" if pmix else "none"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if p.returncode != 0:
        print(f"slurm_test: the cluster did not start (exit {p.returncode}):\n{p.stdout}")
        subprocess.run(["bash", cluster, "stop", c.dir])
        return 1
    print(f"slurm_test: cluster up in {time.time() - t_start:.1f} s (MpiDefault "
          f"{'pmix' if pmix else 'none'})", flush=True)
    try:
        run_all(c, pmix)
    finally:
        subprocess.run(["bash", cluster, "stop", c.dir])
        left = subprocess.run(["pgrep", "-f", c.dir], stdout=subprocess.PIPE, text=True).stdout
        check(not left.strip(), f"daemons left running: {left}")
    print(f"slurm_test: {len(failures)} failure(s) in {time.time() - t_start:.1f} s", flush=True)
    return 1 if failures else 0


def run_all(c, pmix):
    # The single-process reference, outside Slurm.
    ref_dir = os.path.join(c.work, "runs", "single")
    cmd = [c.args.kiln, "train", "--config", c.env["CONFIG"], "--set", f"logging.run_dir={ref_dir}"]
    for s in CONFIG_SETS:
        cmd += ["--set", s]
    out = sh(*cmd, env=c.env, timeout=300)
    ref = losses(ref_dir)
    check(len(ref) == STEPS, f"single-process reference: {len(ref)} steps:\n{out[-1000:]}")
    one_node = "kiln_one_node.sbatch" if pmix else "kiln_no_pmix.sbatch"

    cases = {"plain": plain_case, "requeue": requeue_case, "warning": warning_case,
             "timelimit": timelimit_case, "file": file_case, "killed": killed_case}
    for name, case in cases.items():
        if not c.args.only or name in c.args.only.split(","):
            case(c, ref, one_node)


def plain_case(c, ref, one_node):
    """The one-node script: losses, banner, kiln eval in the batch script."""
    jid = c.sbatch(one_node, "plain")
    info = c.wait(jid, done, 180)
    out = c.output("plain", jid)
    check(info is not None and info.get("JobState") == "COMPLETED",
          f"plain: job {jid} {info and info.get('JobState')}:\n{out[-2000:]}")
    compare(ref, losses(c.run_dir("plain", jid)), f"plain ({one_node}, 2 tasks)")
    banner = re.search(r"kiln: world 2 ranks .*", out)
    print(f"plain: banner '{banner.group(0) if banner else '-'}'", flush=True)
    check(banner is not None, "plain: no world banner")
    ev = re.search(r"^val loss (\S+)", out, re.M)
    print(f"plain: kiln eval in the 2-task batch script: '{ev.group(0) if ev else '-'}'", flush=True)
    check(ev is not None, f"plain: kiln eval in the batch script failed:\n{out[-1500:]}")


def requeue_case(c, ref, one_node):
    """scontrol requeue mid-run: the next attempt resumes bit-identical."""
    jid = c.sbatch(one_node, "requeue", env={"KILN_STEP_DELAY_MS": "400"})
    rd = c.run_dir("requeue", jid)
    c.wait(jid, lambda i: len(losses(rd)) >= 9 or done(i), 120, release=False)
    sh("scontrol", "requeue", jid, env=c.env)
    print(f"requeue: scontrol requeue {jid} after step {max(losses(rd), default=-1)}", flush=True)
    info = c.wait(jid, lambda i: done(i) and i.get("Restarts") == "1", 240)
    out = c.output("requeue", jid)
    res = re.findall(r"kiln: resumed from \S+ \(step (\d+)", out)
    print(f"requeue: job {jid} {info and info.get('JobState')}, restarts "
          f"{info and info.get('Restarts')}, attempt 2 resumed from step {res}", flush=True)
    check(info is not None and info.get("JobState") == "COMPLETED" and res,
          f"requeue: {info and info.get('JobState')}:\n{out[-2000:]}")
    compare(ref, losses(rd), "requeue")


def file_case(c, ref, one_node):
    """The file rendezvous (srun --mpi=none) requeued twice."""
    jid = c.sbatch("kiln_no_pmix.sbatch", "file", env={"KILN_STEP_DELAY_MS": "300"})
    rd = c.run_dir("file", jid)
    for n in (1, 2):
        c.wait(jid, lambda i: i.get("JobState") == "RUNNING" and len(losses(rd)) >= 6 * n or done(i),
               120)
        sh("scontrol", "requeue", jid, env=c.env)
        print(f"file: requeue {n} after step {max(losses(rd), default=-1)}", flush=True)
        c.wait(jid, lambda i: i.get("JobState") != "RUNNING", 30, release=False)
    info = c.wait(jid, lambda i: done(i) and i.get("Restarts") == "2", 300)
    out = c.output("file", jid)
    rdzv = sorted(os.listdir(os.path.join(rd, "rendezvous"))) if os.path.isdir(
        os.path.join(rd, "rendezvous")) else []
    stale = re.findall(r".*(?:stale|earlier attempt|collective .* is ').*", out)
    print(f"file: job {jid} {info and info.get('JobState')}, restarts {info and info.get('Restarts')},"
          f" rendezvous directories {rdzv}, stale-file messages {stale}", flush=True)
    check(info is not None and info.get("JobState") == "COMPLETED",
          f"file: {info and info.get('JobState')}:\n{out[-2500:]}")
    check(not stale, f"file: stale-file messages: {stale}")
    check(len([d for d in rdzv if re.match(r"\d+\.0\.r[012]$", d)]) == 3,
          f"file: rendezvous directories {rdzv}")
    compare(ref, losses(rd), "file rendezvous, requeued twice")


def killed_case(c, ref, one_node):
    """A task SIGKILLed at step 5: the job ends within parallel.timeout_s."""
    jid = c.sbatch(one_node, "killed", env={"KILN_FAULT_INJECT": "1:5:kill"})
    t0 = None
    deadline = time.time() + 120
    while time.time() < deadline:
        if t0 is None and "fault injection: rank 1 kill" in c.output("killed", jid):
            t0 = time.time()
        info = c.job(jid)
        if done(info):
            break
        time.sleep(0.2)
    took = time.time() - t0 if t0 else None
    print(f"killed: job {jid} {info.get('JobState')} {took if took is None else round(took, 1)} s "
          f"after rank 1 was killed (parallel.timeout_s 20)", flush=True)
    check(done(info) and info.get("JobState") != "COMPLETED" and took is not None and took < 20,
          f"killed: {info.get('JobState')}, {took} s:\n{c.output('killed', jid)[-1500:]}")


def warning_case(c, ref, one_node):
    """The time-limit warning, delivered as slurmctld does (see the module docstring)."""
    jid = c.sbatch(one_node, "warning", env={"KILN_STEP_DELAY_MS": "400"})
    rd = c.run_dir("warning", jid)
    c.wait(jid, lambda i: len(losses(rd)) >= 6 or done(i), 120, release=False)
    sh("scancel", "--batch", "--signal=USR1", jid, env=c.env)
    print(f"warning: scancel --batch --signal=USR1 {jid} after step {max(losses(rd), default=-1)}",
          flush=True)
    info = c.wait(jid, lambda i: done(i) and i.get("Restarts") == "1", 240)
    out = c.output("warning", jid)
    codes = re.findall(r"kiln train exited with status (\d+)", out)
    saved = re.findall(r"kiln: caught SIGUSR1: saved \S+ after step (\d+)", out)
    res = re.findall(r"kiln: resumed from \S+ \(step (\d+)", out)
    print(f"warning: job {jid} {info and info.get('JobState')}, restarts "
          f"{info and info.get('Restarts')}, kiln exit statuses {codes}, saved on SIGUSR1 after "
          f"steps {saved}, attempt 2 resumed from step {res[:1]}", flush=True)
    check(info is not None and info.get("JobState") == "COMPLETED" and codes[:1] == ["138"] and
          saved and res[:1] == saved[:1] and "SIGUSR1" in out and "requeueing job" in out,
          f"warning: {info and info.get('JobState')}:\n{out[-2500:]}")
    compare(ref, losses(rd), "warning")


def timelimit_case(c, ref, one_node):
    """A real --time limit: SIGTERM at the limit, a checkpoint, exit 143, TIMEOUT; then resume."""
    t0 = time.time()
    jid = c.sbatch(one_node, "timelimit", opts=["--time=1", "--signal=B:URG@1"],
                   env={"KILN_STEP_DELAY_MS": "5000"})
    rd = c.run_dir("timelimit", jid)
    info = c.wait(jid, done, 200, release=False)
    out = c.output("timelimit", jid)
    codes = re.findall(r"kiln train exited with status (\d+)", out)
    saved = re.findall(r"kiln: caught SIGTERM: saved \S+ after step (\d+)", out)
    print(f"timelimit: job {jid} {info and info.get('JobState')} after {time.time() - t0:.0f} s, "
          f"kiln exit statuses {codes}, saved on SIGTERM after steps {saved}", flush=True)
    check(info is not None and info.get("JobState") == "TIMEOUT" and codes == ["143"] and saved,
          f"timelimit: {info and info.get('JobState')}:\n{out[-2500:]}")
    # The same run directory, no limit: resumes from the checkpoint saved at the limit.
    jid2 = c.sbatch(one_node, "timelimit2", env={"RUN_DIR": rd})
    info = c.wait(jid2, done, 120)
    out = c.output("timelimit2", jid2)
    res = re.findall(r"kiln: resumed from \S+ \(step (\d+)", out)
    print(f"timelimit: resubmitted as job {jid2}: {info and info.get('JobState')}, resumed from "
          f"step {res[:1]}", flush=True)
    check(info is not None and info.get("JobState") == "COMPLETED" and res[:1] == saved[:1],
          f"timelimit: the resumed job: {info and info.get('JobState')}:\n{out[-2000:]}")
    compare(ref, losses(rd), "timelimit")


if __name__ == "__main__":
    sys.exit(main())
