/* bench_main.c — `tpcomm-bench <subcommand> [options]`: the table of subcommands, top-level --help, and
 * dispatch. Each subcommand parses its own options (so its --help works without a GPU), sets up the job
 * with bench_common.c and returns the process exit code (BENCH_EXIT_*).
 *
 * Relies on: every subcommand exporting `int bench_<name>(int argc, char** argv)` (argv[0] is the
 * subcommand's name) and `void bench_<name>_usage(FILE*)`. */
#include <stdio.h>
#include <string.h>

#include "bench_common.h"

int bench_allreduce(int argc, char** argv);
void bench_allreduce_usage(FILE* f);
int bench_tp_qknorm(int argc, char** argv);
void bench_tp_qknorm_usage(FILE* f);
int bench_kernels_norm(int argc, char** argv);
void bench_kernels_norm_usage(FILE* f);
int bench_kernels_gemm(int argc, char** argv);
void bench_kernels_gemm_usage(FILE* f);

/* `kernels`: every single-GPU kernel benchmark, one after the other (kernels-norm, then kernels-gemm).
 * `--json PREFIX` writes PREFIX-norm.json and PREFIX-gemm.json. */
static int bench_kernels(int argc, char** argv) {
  char norm_path[1024] = "", gemm_path[1024] = "";
  if (argc == 3 && (!strcmp(argv[1], "--json") || !strcmp(argv[1], "-J"))) {
    snprintf(norm_path, sizeof norm_path, "%s-norm.json", argv[2]);
    snprintf(gemm_path, sizeof gemm_path, "%s-gemm.json", argv[2]);
  } else if (argc != 1) {
    fprintf(stderr, "%s kernels: only --json PREFIX is accepted; use kernels-norm / kernels-gemm for options\n",
            BENCH_PROGRAM);
    return BENCH_EXIT_USAGE;
  }
  char* norm_argv[] = {"kernels-norm", "--json", norm_path, NULL};
  char* gemm_argv[] = {"kernels-gemm", "--json", gemm_path, NULL};
  const int n = norm_path[0] ? 3 : 1;
  int rc = bench_kernels_norm(n, norm_argv);
  bench_getopt_reset();
  int rc2 = bench_kernels_gemm(n, gemm_argv);
  return rc > rc2 ? rc : rc2;
}
static void bench_kernels_usage(FILE* f) {
  fprintf(f, "Usage: %s kernels [--json PREFIX]\n  runs kernels-norm and kernels-gemm with their defaults\n",
          BENCH_PROGRAM);
}

typedef struct {
  const char* name;
  const char* summary;
  int (*run)(int argc, char** argv);
  void (*usage)(FILE* f);
} bench_command_t;

static const bench_command_t k_commands[] = {
    {"allreduce", "all-reduce latency and bandwidth: tpcomm (auto, one-shot, two-shot, nccl) vs NCCL, like "
                  "all_reduce_perf",
     bench_allreduce, bench_allreduce_usage},
    {"tp_qknorm", "tensor-parallel QK-RMSNorm: fused vs partial sums + all-reduce (NCCL or ours) + apply",
     bench_tp_qknorm, bench_tp_qknorm_usage},
    {"kernels", "every single-GPU kernel benchmark (kernels-norm, then kernels-gemm)", bench_kernels,
     bench_kernels_usage},
    {"kernels-norm", "single-GPU norm kernels (QK-RMSNorm per head and across heads, RMSNorm, fused add) vs the "
                     "memory floor",
     bench_kernels_norm, bench_kernels_norm_usage},
    {"kernels-gemm", "FP8 quantization and cuBLASLt GEMMs (merged, batched, FP8) vs memory floors", bench_kernels_gemm,
     bench_kernels_gemm_usage},
};
enum { NUM_COMMANDS = sizeof k_commands / sizeof k_commands[0] };

static void print_usage(FILE* f) {
  fprintf(f,
          "Usage: %s <command> [options]\n"
          "       %s <command> --help\n\n"
          "Benchmarks of tpcomm, printed like nccl-tests. Start one process per GPU with tpcomm-run or\n"
          "mpirun, or run it alone (one rank on device 0).\n\nCommands:\n",
          BENCH_PROGRAM, BENCH_PROGRAM);
  for (int i = 0; i < NUM_COMMANDS; i++) fprintf(f, "  %-12s %s\n", k_commands[i].name, k_commands[i].summary);
  fprintf(f, "\nExit status: 0 done, 1 wrong results, 2 bad command line, 3 a CUDA/NCCL/tpcomm failure.\n");
}

static const bench_command_t* find_command(const char* name) {
  for (int i = 0; i < NUM_COMMANDS; i++)
    if (strcmp(k_commands[i].name, name) == 0) return &k_commands[i];
  return NULL;
}

int main(int argc, char** argv) {
  bench_set_command_line(argc, argv);
  if (argc < 2) {
    print_usage(stderr);
    return BENCH_EXIT_USAGE;
  }
  const char* name = argv[1];
  if (strcmp(name, "-h") == 0 || strcmp(name, "--help") == 0 || strcmp(name, "help") == 0) {
    const bench_command_t* cmd = argc > 2 ? find_command(argv[2]) : NULL;
    if (cmd) cmd->usage(stdout);
    else print_usage(stdout);
    return BENCH_EXIT_OK;
  }
  const bench_command_t* cmd = find_command(name);
  if (!cmd) {
    fprintf(stderr, "%s: unknown command '%s'\n\n", BENCH_PROGRAM, name);
    print_usage(stderr);
    return BENCH_EXIT_USAGE;
  }
  bench_getopt_reset();
  return cmd->run(argc - 1, argv + 1);
}
