/* test_launcher.c — tpcomm-run and the NUMA helpers.
 *
 * The launcher is run as the real binary (TPC_TEST_LAUNCHER) with -n N and small `sh -c` programs, so
 * every test except the shared-GPU one works on a machine without a GPU. Relies on tpc_test_run()
 * (tests/common/testutil.h: captured stdout+stderr, bounded by a timeout so nothing hangs); to look at
 * stdout and stderr apart, the launcher runs under `sh -c '... 2>/dev/null'`. Tests that signal the
 * launcher start it with start_background() below and wait for its ranks to say "ready" first, so they
 * do not depend on timing. The NUMA tests call the public API and check the result with libnuma. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <numa.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"
#include "tpcomm/tpcomm.h"

#define RUN_TIMEOUT_S 60

/* Runs tpcomm-run with the given arguments; returns its status, *out gets stdout+stderr. The jobs here
 * run CPU programs: --allow-shared-gpu and --bind none make them behave the same on a machine with GPUs
 * (where -n 3 may exceed the GPU count, and binding may print a line); without a GPU both change nothing
 * but TPCOMM_ALLOW_SHARED_GPU, which the environment test checks without them. */
#define CPU_JOB "--allow-shared-gpu", "--bind", "none"
#define LAUNCH(out, ...) \
  tpc_test_run((char*[]){TPC_TEST_LAUNCHER, CPU_JOB, __VA_ARGS__, NULL}, NULL, (out), RUN_TIMEOUT_S)
/* The same with the launcher's defaults. */
#define LAUNCH_PLAIN(out, ...) \
  tpc_test_run((char*[]){TPC_TEST_LAUNCHER, __VA_ARGS__, NULL}, NULL, (out), RUN_TIMEOUT_S)

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Runs a shell command line (for redirections around the launcher). */
static int run_shell(const char* cmdline, char** out) {
  return tpc_test_run((char*[]){"sh", "-c", (char*)cmdline, NULL}, NULL, out, RUN_TIMEOUT_S);
}

/* Number of lines of text equal to line. */
static int count_lines(const char* text, const char* line) {
  int n = 0;
  size_t len = strlen(line);
  for (const char* p = text; *p;) {
    const char* nl = strchr(p, '\n');
    size_t l = nl ? (size_t)(nl - p) : strlen(p);
    if (l == len && !memcmp(p, line, len)) n++;
    p += l + (nl ? 1 : 0);
  }
  return n;
}

static int count_all_lines(const char* text) {
  int n = 0;
  for (const char* p = text; *p; p++)
    if (*p == '\n') n++;
  return n;
}

/* ---- environment of the ranks ---------------------------------------------------------------------- */

Test(launcher, every_rank_gets_its_rank_world_size_and_the_same_unique_id) {
  char* out = NULL;
  int rc = LAUNCH(&out, "-n", "3", "--", "sh", "-c",
                  "echo \"R=$TPCOMM_RANK W=$TPCOMM_WORLD_SIZE L=$TPCOMM_LOCAL_RANK U=$TPCOMM_UNIQUE_ID\"");
  cr_assert_eq(rc, 0, "rc=%d, output:\n%s", rc, out);
  cr_assert_eq(count_all_lines(out), 3, "output:\n%s", out);
  char first_uid[TPC_UNIQUE_ID_STRLEN] = "";
  int seen[3] = {0, 0, 0};
  for (char* line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
    int prefix = -1, r = -1, w = -1, l = -1;
    char uid[512] = "";
    cr_assert_eq(sscanf(line, "[%d] R=%d W=%d L=%d U=%511s", &prefix, &r, &w, &l, uid), 5, "line '%s'", line);
    cr_assert(prefix >= 0 && prefix < 3, "line '%s'", line);
    cr_assert_eq(r, prefix, "line '%s': TPCOMM_RANK differs from the prefix", line);
    cr_assert_eq(w, 3, "line '%s'", line);
    cr_assert_eq(l, prefix, "line '%s': TPCOMM_LOCAL_RANK must equal the rank on one host", line);
    cr_assert_eq(strlen(uid), 2 * TPC_UNIQUE_ID_BYTES, "line '%s': unique id of %zu chars", line, strlen(uid));
    cr_assert_eq(strspn(uid, "0123456789abcdefABCDEF"), strlen(uid), "line '%s': unique id is not hex", line);
    if (!first_uid[0]) snprintf(first_uid, sizeof first_uid, "%s", uid);
    cr_assert_str_eq(uid, first_uid, "ranks got different unique ids");
    seen[prefix]++;
  }
  cr_assert(seen[0] == 1 && seen[1] == 1 && seen[2] == 1, "each rank must print exactly once");
  free(out);
}

Test(launcher, unique_id_is_fresh_per_job) {
  char *a = NULL, *b = NULL;
  cr_assert_eq(LAUNCH(&a, "-n", "1", "sh", "-c", "echo $TPCOMM_UNIQUE_ID"), 0, "%s", a);
  cr_assert_eq(LAUNCH(&b, "-n", "1", "sh", "-c", "echo $TPCOMM_UNIQUE_ID"), 0, "%s", b);
  cr_assert_eq(strlen(a), strlen("[0] \n") + 2 * TPC_UNIQUE_ID_BYTES, "'%s'", a);
  cr_assert_str_neq(a, b, "two jobs got the same unique id");
  free(a);
  free(b);
}

Test(launcher, environment_is_inherited_and_stale_launcher_variables_replaced) {
  char e1[] = "TPC_TEST_MARK=kept", e2[] = "TPCOMM_RANK=77", e3[] = "TPCOMM_DEVICE=5";
  char* env[] = {e1, e2, e3, NULL};
  char* out = NULL;
  const char* why = NULL;
  int gpus = tpc_test_gpu_count(&why);
  int rc = tpc_test_run(
      (char*[]){TPC_TEST_LAUNCHER, "-n", "1", "--bind", "none", "--", "sh", "-c",
                "echo mark=$TPC_TEST_MARK rank=$TPCOMM_RANK dev=${TPCOMM_DEVICE-unset} "
                "cvd=${CUDA_VISIBLE_DEVICES-unset} shared=${TPCOMM_ALLOW_SHARED_GPU-unset}",
                NULL},
      env, &out, RUN_TIMEOUT_S);
  cr_assert_eq(rc, 0, "rc=%d, output:\n%s", rc, out);
  cr_assert(strstr(out, "[0] mark=kept rank=0 "), "output:\n%s", out);
  if (gpus == 0) cr_assert(strstr(out, " dev=unset "), "no GPU: TPCOMM_DEVICE must not be set; output:\n%s", out);
  else cr_assert(strstr(out, " dev=0 "), "rank 0 runs on GPU 0; output:\n%s", out);
  if (!getenv("CUDA_VISIBLE_DEVICES"))
    cr_assert(strstr(out, " cvd=unset "), "the launcher must not set CUDA_VISIBLE_DEVICES; output:\n%s", out);
  cr_assert(strstr(out, " shared=unset"), "output:\n%s", out);
  free(out);
}

Test(launcher, options_export_their_tunables) {
  char* out = NULL;
  int rc = LAUNCH(&out, "-n", "1", "--allow-shared-gpu", "--timeout-ms", "1234", "--", "sh", "-c",
                  "echo shared=$TPCOMM_ALLOW_SHARED_GPU timeout=$TPCOMM_TIMEOUT_MS");
  cr_assert_eq(rc, 0, "rc=%d, output:\n%s", rc, out);
  cr_assert_eq(count_lines(out, "[0] shared=1 timeout=1234"), 1, "output:\n%s", out);
  free(out);
}

/* ---- output prefixing ------------------------------------------------------------------------------ */

static const char k_two_streams[] =
    "sh -c 'echo out1; echo err1 >&2; echo out2; echo err2 >&2; printf otail; printf etail >&2'";

Test(launcher, stdout_lines_are_prefixed_and_stay_on_stdout) {
  char cmd[512], *out = NULL;
  snprintf(cmd, sizeof cmd, "'%s' --allow-shared-gpu --bind none -n 2 -- %s 2>/dev/null", TPC_TEST_LAUNCHER,
           k_two_streams);
  int rc = run_shell(cmd, &out);
  cr_assert_eq(rc, 0, "rc=%d, output:\n%s", rc, out);
  for (int r = 0; r < 2; r++) {
    char l1[32], l2[32], l3[32];
    snprintf(l1, sizeof l1, "[%d] out1", r);
    snprintf(l2, sizeof l2, "[%d] out2", r);
    snprintf(l3, sizeof l3, "[%d] otail", r); /* the partial last line, flushed at EOF */
    cr_assert_eq(count_lines(out, l1), 1, "missing '%s' in stdout:\n%s", l1, out);
    cr_assert_eq(count_lines(out, l2), 1, "missing '%s' in stdout:\n%s", l2, out);
    cr_assert_eq(count_lines(out, l3), 1, "missing '%s' in stdout:\n%s", l3, out);
  }
  cr_assert_eq(count_all_lines(out), 6, "stdout must hold exactly the 6 stdout lines:\n%s", out);
  cr_assert_null(strstr(out, "err"), "stderr leaked into stdout:\n%s", out);
  free(out);
}

Test(launcher, stderr_lines_are_prefixed_and_stay_on_stderr) {
  char cmd[512], *out = NULL;
  snprintf(cmd, sizeof cmd, "'%s' --allow-shared-gpu --bind none -n 2 -- %s >/dev/null", TPC_TEST_LAUNCHER,
           k_two_streams);
  int rc = run_shell(cmd, &out);
  cr_assert_eq(rc, 0, "rc=%d, output:\n%s", rc, out);
  for (int r = 0; r < 2; r++) {
    char l1[32], l2[32], l3[32];
    snprintf(l1, sizeof l1, "[%d] err1", r);
    snprintf(l2, sizeof l2, "[%d] err2", r);
    snprintf(l3, sizeof l3, "[%d] etail", r);
    cr_assert_eq(count_lines(out, l1), 1, "missing '%s' in stderr:\n%s", l1, out);
    cr_assert_eq(count_lines(out, l2), 1, "missing '%s' in stderr:\n%s", l2, out);
    cr_assert_eq(count_lines(out, l3), 1, "missing '%s' in stderr:\n%s", l3, out);
  }
  cr_assert_eq(count_all_lines(out), 6, "stderr must hold exactly the 6 stderr lines:\n%s", out);
  cr_assert_null(strstr(out, "out"), "stdout leaked into stderr:\n%s", out);
  free(out);
}

Test(launcher, lines_of_concurrent_ranks_never_interleave) {
  enum { NR = 3, LINES = 400 };
  char* out = NULL;
  int rc = LAUNCH(&out, "-n", "3", "--", "sh", "-c",
                  "i=0; while [ $i -lt 400 ]; do "
                  "echo \"r$TPCOMM_RANK-$i-0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnop\"; "
                  "i=$((i+1)); done");
  cr_assert_eq(rc, 0, "rc=%d", rc);
  cr_assert_eq(count_all_lines(out), NR * LINES, "%d lines", count_all_lines(out));
  int next[NR] = {0, 0, 0};
  for (char* line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
    int prefix = -1, r = -1, i = -1, used = 0;
    cr_assert_eq(sscanf(line, "[%d] r%d-%d-%n", &prefix, &r, &i, &used), 3, "garbled line '%s'", line);
    cr_assert(prefix >= 0 && prefix < NR && r == prefix, "line '%s' carries the wrong prefix", line);
    cr_assert_str_eq(line + used, "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnop",
                     "garbled line '%s'", line);
    cr_assert_eq(i, next[r], "rank %d: line %d came out as %d", r, next[r], i);
    next[r]++;
  }
  free(out);
}

/* ---- exit status and teardown ---------------------------------------------------------------------- */

Test(launcher, all_ranks_succeed_exit_zero) {
  char* out = NULL;
  int rc = LAUNCH(&out, "-n", "2", "--", "true");
  cr_assert_eq(rc, 0, "rc=%d, output:\n%s", rc, out);
  cr_assert_eq(strlen(out), 0, "a clean run prints nothing, got:\n%s", out);
  free(out);
}

Test(launcher, failing_rank_is_named_with_its_status) {
  char* out = NULL;
  int rc = LAUNCH(&out, "-n", "2", "--", "sh", "-c", "if [ $TPCOMM_RANK = 1 ]; then echo bye; exit 3; fi");
  cr_assert_eq(rc, 3, "the launcher must exit with the failing rank's status; rc=%d, output:\n%s", rc, out);
  cr_assert(strstr(out, "tpcomm-run: rank 1 (pid "), "output:\n%s", out);
  cr_assert(strstr(out, ") exited with status 3\n"), "output:\n%s", out);
  /* the rank's last words come before the report of its exit */
  cr_assert(strstr(out, "[1] bye\n") < strstr(out, "tpcomm-run: rank 1"), "output:\n%s", out);
  free(out);
}

Test(launcher, rank_killed_by_signal_is_named) {
  char* out = NULL;
  int rc = LAUNCH(&out, "-n", "2", "--", "sh", "-c", "if [ $TPCOMM_RANK = 0 ]; then kill -SEGV $$; fi");
  cr_assert_eq(rc, 128 + SIGSEGV, "rc=%d, output:\n%s", rc, out);
  cr_assert(strstr(out, "tpcomm-run: rank 0 (pid "), "output:\n%s", out);
  cr_assert(strstr(out, "was killed by signal 11 (SIGSEGV)"), "output:\n%s", out);
  free(out);
}

Test(launcher, program_that_cannot_run_exits_127) {
  char* out = NULL;
  int rc = LAUNCH(&out, "-n", "1", "--", "/nonexistent/tpcomm-test-program");
  cr_assert_eq(rc, 127, "rc=%d, output:\n%s", rc, out);
  cr_assert(strstr(out, "[0] tpcomm-run: rank 0: cannot execute '/nonexistent/tpcomm-test-program': No such file"),
            "output:\n%s", out);
  cr_assert(strstr(out, "exited with status 127"), "output:\n%s", out);
  free(out);
}

/* Rank 1 runs rank1_setup, reports its pid, creates a mark file and sleeps; rank 0 waits for the mark,
 * then exits with rank0_status. The launcher must return within max_s with that status, and rank 1's
 * process must be gone by then. */
static void check_teardown(const char* rank1_setup, int rank0_status, double max_s, const char* expect_msg) {
  char dir[] = "/tmp/tpc-test-teardown-XXXXXX";
  cr_assert_not_null(mkdtemp(dir), "mkdtemp: %s", strerror(errno));
  char script[512], *out = NULL;
  snprintf(script, sizeof script,
           "if [ $TPCOMM_RANK = 0 ]; then while [ ! -e %s/up ]; do sleep 0.05; done; exit %d; fi; "
           "%s; echo pid $$; touch %s/up; exec sleep 60",
           dir, rank0_status, rank1_setup, dir);
  double t0 = now_s();
  int rc = LAUNCH(&out, "-n", "2", "--", "sh", "-c", script);
  double elapsed = now_s() - t0;
  char mark[64];
  snprintf(mark, sizeof mark, "%s/up", dir);
  unlink(mark);
  rmdir(dir);
  cr_assert_eq(rc, rank0_status, "rc=%d, output:\n%s", rc, out);
  cr_assert_lt(elapsed, max_s, "the launcher took %.1f s to tear the job down; output:\n%s", elapsed, out);
  char failed[64];
  snprintf(failed, sizeof failed, ") exited with status %d", rank0_status);
  cr_assert(strstr(out, "tpcomm-run: rank 0 (pid "), "output:\n%s", out);
  cr_assert(strstr(out, failed), "output:\n%s", out);
  if (expect_msg) cr_assert(strstr(out, expect_msg), "missing '%s' in:\n%s", expect_msg, out);
  const char* p = strstr(out, "[1] pid ");
  cr_assert_not_null(p, "rank 1 did not start; output:\n%s", out);
  int pid = atoi(p + strlen("[1] pid "));
  cr_assert_gt(pid, 0);
  cr_assert(kill(pid, 0) != 0 && errno == ESRCH, "rank 1 (pid %d) is still alive after the launcher returned", pid);
  free(out);
}

Test(launcher, failure_of_one_rank_terminates_the_others_quickly, .timeout = 120) {
  check_teardown(":", 5, 10.0, "terminating the other ranks");
}

Test(launcher, rank_ignoring_sigterm_is_killed_after_the_grace_period, .timeout = 120) {
  check_teardown("trap '' TERM", 4, 10.0, "sending SIGKILL");
}

/* ---- signals to the launcher ----------------------------------------------------------------------- */

typedef struct {
  pid_t pid;
  char path[64];
} background_t;

static void start_background(background_t* bg, char* const argv[]) {
  snprintf(bg->path, sizeof bg->path, "/tmp/tpc-test-launcher-XXXXXX");
  int fd = mkstemp(bg->path);
  cr_assert_geq(fd, 0, "mkstemp: %s", strerror(errno));
  bg->pid = fork();
  cr_assert_geq(bg->pid, 0, "fork: %s", strerror(errno));
  if (bg->pid == 0) {
    dup2(fd, 1);
    dup2(fd, 2);
    execv(argv[0], argv);
    _exit(127);
  }
  close(fd);
}

static char* read_file(const char* path) {
  FILE* f = fopen(path, "r");
  if (!f) return strdup("");
  size_t cap = 4096, len = 0;
  char* buf = malloc(cap);
  size_t n;
  while ((n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
    len += n;
    if (cap - len < 1024) buf = realloc(buf, cap *= 2);
  }
  buf[len] = 0;
  fclose(f);
  return buf;
}

/* Waits until the output holds `count` lines equal to "[r] <word>" for distinct r; 1 on success. */
static int wait_for_lines(const background_t* bg, const char* word, int count, double timeout_s) {
  for (double end = now_s() + timeout_s; now_s() < end;) {
    char* text = read_file(bg->path);
    int found = 0;
    for (int r = 0; r < count; r++) {
      char line[64];
      snprintf(line, sizeof line, "[%d] %s", r, word);
      found += count_lines(text, line) > 0;
    }
    free(text);
    if (found == count) return 1;
    usleep(20 * 1000);
  }
  return 0;
}

/* Waits for the launcher to exit; returns its status (0-255, 128+signal) or -1 on timeout (it is killed). */
static int wait_background(background_t* bg, double timeout_s) {
  int st = 0;
  for (double end = now_s() + timeout_s; now_s() < end;) {
    pid_t p = waitpid(bg->pid, &st, WNOHANG);
    if (p == bg->pid) return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    usleep(10 * 1000);
  }
  kill(bg->pid, SIGKILL); /* its ranks follow through PR_SET_PDEATHSIG */
  waitpid(bg->pid, &st, 0);
  return -1;
}

static void check_forwarded(int sig, const char* signame) {
  background_t bg;
  char script[256];
  snprintf(script, sizeof script,
           "trap 'echo got %s; exit 0' %s; echo ready; while :; do sleep 0.1; done", signame + 3, signame + 3);
  start_background(&bg, (char*[]){TPC_TEST_LAUNCHER, CPU_JOB, "-n", "2", "--", "sh", "-c", script, NULL});
  int ready = wait_for_lines(&bg, "ready", 2, 30.0);
  if (!ready) wait_background(&bg, 0);
  char* text = read_file(bg.path);
  cr_assert(ready, "the ranks never became ready; output:\n%s", text);
  free(text);

  double t0 = now_s();
  kill(bg.pid, sig);
  int rc = wait_background(&bg, 30.0);
  double elapsed = now_s() - t0;
  text = read_file(bg.path);
  unlink(bg.path);
  cr_assert_eq(rc, 128 + sig, "rc=%d, output:\n%s", rc, text);
  cr_assert_lt(elapsed, 10.0, "the launcher took %.1f s; output:\n%s", elapsed, text);
  char msg[64], got0[64], got1[64];
  snprintf(msg, sizeof msg, "tpcomm-run: received %s; forwarding it to every rank", signame);
  snprintf(got0, sizeof got0, "[0] got %s", signame + 3);
  snprintf(got1, sizeof got1, "[1] got %s", signame + 3);
  cr_assert_eq(count_lines(text, msg), 1, "output:\n%s", text);
  cr_assert_eq(count_lines(text, got0), 1, "rank 0 did not see %s; output:\n%s", signame, text);
  cr_assert_eq(count_lines(text, got1), 1, "rank 1 did not see %s; output:\n%s", signame, text);
  free(text);
}

Test(launcher, sigterm_is_forwarded_to_every_rank, .timeout = 120) { check_forwarded(SIGTERM, "SIGTERM"); }

Test(launcher, sigint_is_forwarded_to_every_rank, .timeout = 120) { check_forwarded(SIGINT, "SIGINT"); }

/* ---- arguments ------------------------------------------------------------------------------------- */

static void check_usage_error(char* const argv[], const char* expect) {
  char* out = NULL;
  int rc = tpc_test_run(argv, NULL, &out, RUN_TIMEOUT_S);
  cr_assert_eq(rc, 2, "rc=%d for '%s', output:\n%s", rc, expect, out);
  cr_assert(strstr(out, expect), "the message must name '%s'; output:\n%s", expect, out);
  cr_assert(strstr(out, "usage: tpcomm-run "), "no usage line; output:\n%s", out);
  free(out);
}

Test(launcher, bad_arguments_exit_2_naming_the_value) {
  check_usage_error((char*[]){TPC_TEST_LAUNCHER, "-n", "0", "true", NULL}, "-n '0'");
  check_usage_error((char*[]){TPC_TEST_LAUNCHER, "-n", "abc", "true", NULL}, "-n 'abc'");
  check_usage_error((char*[]){TPC_TEST_LAUNCHER, "-n", "1025", "true", NULL}, "-n '1025'");
  check_usage_error((char*[]){TPC_TEST_LAUNCHER, "-n", "2x", "true", NULL}, "-n '2x'");
  check_usage_error((char*[]){TPC_TEST_LAUNCHER, "--gpus", "x", "true", NULL}, "--gpus 'x'");
  check_usage_error((char*[]){TPC_TEST_LAUNCHER, "--gpus", "0,,1", "true", NULL}, "--gpus '0,,1'");
  check_usage_error((char*[]){TPC_TEST_LAUNCHER, "--gpus", "-1", "true", NULL}, "--gpus '-1'");
  check_usage_error((char*[]){TPC_TEST_LAUNCHER, "--bind", "foo", "true", NULL}, "--bind 'foo'");
  check_usage_error((char*[]){TPC_TEST_LAUNCHER, "--timeout-ms", "soon", "true", NULL}, "--timeout-ms 'soon'");
  check_usage_error((char*[]){TPC_TEST_LAUNCHER, "-n", "2", NULL}, "no program to run");
  check_usage_error((char*[]){TPC_TEST_LAUNCHER, "-n", "2", "--", NULL}, "no program to run");
  check_usage_error((char*[]){TPC_TEST_LAUNCHER, "--frobnicate", "true", NULL}, "unknown option '--frobnicate'");
  check_usage_error((char*[]){TPC_TEST_LAUNCHER, "-q", "true", NULL}, "unknown option '-q'");
  check_usage_error((char*[]){TPC_TEST_LAUNCHER, "-n", NULL}, "option '-n' needs a value");
}

Test(launcher, program_options_are_not_taken_by_the_launcher) {
  char* out = NULL;
  int rc = LAUNCH(&out, "-n", "1", "sh", "-c", "echo \"$0 $1\"", "-n", "--gpus");
  cr_assert_eq(rc, 0, "rc=%d, output:\n%s", rc, out);
  cr_assert_eq(count_lines(out, "[0] -n --gpus"), 1, "output:\n%s", out);
  free(out);
}

Test(launcher, several_ranks_per_gpu_need_allow_shared_gpu) {
  const char* why = NULL;
  int gpus = tpc_test_gpu_count(&why);
  if (gpus == 0) cr_skip_test("no CUDA GPU (%s): cannot check the shared-GPU rule", why);
  char n[16], *out = NULL;
  snprintf(n, sizeof n, "%d", gpus + 1);
  int rc = LAUNCH_PLAIN(&out, "-n", n, "--", "true");
  cr_assert_eq(rc, 2, "rc=%d, output:\n%s", rc, out);
  cr_assert(strstr(out, "--allow-shared-gpu"), "output:\n%s", out);
  free(out);
  rc = LAUNCH_PLAIN(&out, "--gpus", "0,0", "--", "true");
  cr_assert_eq(rc, 2, "rc=%d, output:\n%s", rc, out);
  cr_assert(strstr(out, "--gpus '0,0' gives GPU 0 to ranks 0 and 1"), "output:\n%s", out);
  free(out);
  snprintf(n, sizeof n, "%d", gpus);
  rc = LAUNCH_PLAIN(&out, "--gpus", n, "--", "true");
  cr_assert_eq(rc, 2, "GPU %d is not visible; rc=%d, output:\n%s", gpus, rc, out);
  free(out);
}

Test(launcher, no_gpu_and_no_n_launches_nothing) {
  const char* why = NULL;
  if (tpc_test_gpu_count(&why) > 0) cr_skip_test("a GPU is visible: the no-GPU path cannot be checked");
  char* out = NULL;
  int rc = LAUNCH_PLAIN(&out, "--", "sh", "-c", "echo should-not-run");
  cr_assert_eq(rc, 0, "rc=%d, output:\n%s", rc, out);
  cr_assert_eq(count_all_lines(out), 1, "one line expected, got:\n%s", out);
  cr_assert(!strncmp(out, "tpcomm-run: no CUDA GPU is visible (", 36), "output:\n%s", out);
  cr_assert(strstr(out, "); nothing to launch\n"), "output:\n%s", out);
  free(out);
  rc = LAUNCH_PLAIN(&out, "--gpus", "0", "--", "true");
  cr_assert_eq(rc, 2, "--gpus without a GPU; rc=%d, output:\n%s", rc, out);
  cr_assert(strstr(out, "--gpus '0': GPU 0 is not visible"), "output:\n%s", out);
  free(out);
}

/* ---- NUMA helpers (public API) --------------------------------------------------------------------- */

Test(numa, gpu_numa_node_rejects_null_and_negative) {
  cr_assert_eq(tpc_gpu_numa_node(0, NULL), TPC_ERR_INVALID_ARGUMENT);
  cr_assert(strstr(tpc_get_last_error(NULL), "tpc_gpu_numa_node: node is NULL"), "%s", tpc_get_last_error(NULL));
  int node = 42;
  cr_assert_eq(tpc_gpu_numa_node(-1, &node), TPC_ERR_INVALID_ARGUMENT);
  cr_assert(strstr(tpc_get_last_error(NULL), "device=-1"), "%s", tpc_get_last_error(NULL));
  cr_assert_eq(node, 42, "the output must stay untouched on failure");
}

Test(numa, gpu_numa_node_without_gpu_is_no_device) {
  const char* why = NULL;
  if (tpc_test_gpu_count(&why) > 0) cr_skip_test("a GPU is visible: the no-GPU path cannot be checked");
  int node = 42;
  cr_assert_eq(tpc_gpu_numa_node(0, &node), TPC_ERR_NO_DEVICE, "%s", tpc_get_last_error(NULL));
  cr_assert_eq(node, 42);
  cr_assert_eq(tpc_bind_to_gpu(0), TPC_ERR_NO_DEVICE, "%s", tpc_get_last_error(NULL));
}

Test(numa, gpu_numa_node_with_gpus) {
  const char* why = NULL;
  int gpus = tpc_test_gpu_count(&why);
  if (gpus == 0) cr_skip_test("no CUDA GPU (%s)", why);
  int node = 42;
  cr_assert_eq(tpc_gpu_numa_node(gpus, &node), TPC_ERR_INVALID_ARGUMENT);
  char expect[32];
  snprintf(expect, sizeof expect, "device=%d", gpus);
  cr_assert(strstr(tpc_get_last_error(NULL), expect), "%s", tpc_get_last_error(NULL));
  for (int d = 0; d < gpus; d++) {
    cr_assert_eq(tpc_gpu_numa_node(d, &node), TPC_SUCCESS, "%s", tpc_get_last_error(NULL));
    cr_assert(node >= -1 && node <= numa_max_node(), "GPU %d: node %d", d, node);
  }
}

Test(numa, bind_to_node_minus_one_is_a_no_op) {
  cpu_set_t before, after;
  cr_assert_eq(sched_getaffinity(0, sizeof before, &before), 0);
  cr_assert_eq(tpc_bind_numa_node(-1), TPC_SUCCESS, "%s", tpc_get_last_error(NULL));
  cr_assert_eq(sched_getaffinity(0, sizeof after, &after), 0);
  cr_assert(CPU_EQUAL(&before, &after), "node -1 must leave the affinity alone");
}

Test(numa, bind_rejects_out_of_range_nodes) {
  cr_assert_eq(tpc_bind_numa_node(99999), TPC_ERR_INVALID_ARGUMENT);
  cr_assert(strstr(tpc_get_last_error(NULL), "node=99999"), "%s", tpc_get_last_error(NULL));
  cr_assert_eq(tpc_bind_numa_node(-2), TPC_ERR_INVALID_ARGUMENT);
  cr_assert(strstr(tpc_get_last_error(NULL), "node=-2"), "%s", tpc_get_last_error(NULL));
  cr_assert_eq(tpc_bind_numa_node(numa_max_node() + 1), TPC_ERR_INVALID_ARGUMENT);
}

/* Criterion runs each test in its own process, so binding here does not leak into other tests. */
Test(numa, bind_to_node_zero_binds_cpus_and_prefers_its_memory) {
  tpc_status_t st = tpc_bind_numa_node(0);
  if (numa_available() < 0) {
    cr_assert_eq(st, TPC_ERR_UNSUPPORTED, "%s", tpc_get_last_error(NULL));
    cr_skip_test("libnuma reports no NUMA support here: only the error path was checked");
  }
  cr_assert_eq(st, TPC_SUCCESS, "%s", tpc_get_last_error(NULL));
  cpu_set_t set;
  cr_assert_eq(sched_getaffinity(0, sizeof set, &set), 0);
  cr_assert_gt(CPU_COUNT(&set), 0);
  for (int c = 0; c < CPU_SETSIZE; c++)
    if (CPU_ISSET(c, &set)) cr_assert_eq(numa_node_of_cpu(c), 0, "CPU %d of the affinity is not on node 0", c);
  cr_assert_eq(numa_preferred(), 0);
}
