/* test_mpi_bootstrap.c — libtpcomm_mpi under mpirun (run by ctest as `mpirun -np 2 ... test_mpi_bootstrap`):
 * the unique id broadcast, the local rank (Open MPI variable and host split), failure propagation, and the
 * internal socket bootstrap driven by MPI's rank and size. Plain C, not Criterion; needs no GPU and never
 * calls tpc_comm_init_mpi past its argument checks (that would need a GPU and tpc_comm_init_rank).
 *
 * Relies on: both ranks on one host (so local ranks are 0 and 1), the internal bootstrap.h (comm/ include
 * path). Each rank counts its checks; rank 0 prints "N passed, N failed" last; every rank exits non-zero
 * when any rank failed. */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bootstrap.h"
#include "tpcomm/tpcomm_mpi.h"

static int g_rank = -1, g_passed = 0, g_failed = 0;

#define CHECK(cond, ...)                                                            \
  do {                                                                              \
    if (cond) {                                                                     \
      g_passed++;                                                                   \
    } else {                                                                        \
      g_failed++;                                                                   \
      fprintf(stderr, "rank %d: FAIL %s:%d: %s: ", g_rank, __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                                                 \
      fprintf(stderr, " (last error: %s)\n", tpc_get_last_error(NULL));            \
    }                                                                               \
  } while (0)

static void test_unique_id(int size) {
  tpc_unique_id_t id;
  memset(&id, 0, sizeof id);
  tpc_status_t st = tpc_mpi_get_unique_id(MPI_COMM_WORLD, &id);
  CHECK(st == TPC_SUCCESS, "tpc_mpi_get_unique_id returned %d", (int)st);
  CHECK(tpc_bootstrap_check_id(&id) == TPC_SUCCESS, "the broadcast id is not valid");
  tpc_unique_id_t* all = malloc(sizeof(tpc_unique_id_t) * (size_t)size);
  MPI_Allgather(&id, (int)sizeof id, MPI_BYTE, all, (int)sizeof id, MPI_BYTE, MPI_COMM_WORLD);
  for (int r = 0; r < size; r++) CHECK(memcmp(&all[r], &all[0], sizeof id) == 0, "rank %d has another id", r);
  free(all);
  /* the rendezvous directory exists (made by rank 0); nobody used it, so rank 0 removes it */
  MPI_Barrier(MPI_COMM_WORLD);
  if (g_rank == 0) {
    tpc_uid_layout_t u;
    memcpy(&u, id.internal, sizeof u);
    char* slash = strrchr(u.path, '/');
    if (slash) *slash = 0;
    struct stat sb;
    CHECK(stat(u.path, &sb) == 0 && (sb.st_mode & 0777) == 0700, "rendezvous %s is not a 0700 directory", u.path);
    rmdir(u.path);
  }
}

static void test_unique_id_failure_propagates(void) {
  /* rank 0 passes NULL: it must fail, and so must every other rank, without hanging */
  tpc_unique_id_t id;
  tpc_status_t st = tpc_mpi_get_unique_id(MPI_COMM_WORLD, g_rank == 0 ? NULL : &id);
  CHECK(st == TPC_ERR_INVALID_ARGUMENT, "expected TPC_ERR_INVALID_ARGUMENT, got %d", (int)st);
  if (g_rank != 0)
    CHECK(strstr(tpc_get_last_error(NULL), "rank 0 of the MPI communicator could not create"), "message: %s",
          tpc_get_last_error(NULL));
  /* a NULL on a non-root rank fails there only; the broadcast still completes everywhere */
  st = tpc_mpi_get_unique_id(MPI_COMM_WORLD, g_rank == 1 ? NULL : &id);
  CHECK(st == (g_rank == 1 ? TPC_ERR_INVALID_ARGUMENT : TPC_SUCCESS), "got %d", (int)st);
  MPI_Barrier(MPI_COMM_WORLD);
  if (g_rank == 0 && st == TPC_SUCCESS) { /* remove the unused rendezvous */
    tpc_uid_layout_t u;
    memcpy(&u, id.internal, sizeof u);
    char* slash = strrchr(u.path, '/');
    if (slash) *slash = 0;
    rmdir(u.path);
  }
  CHECK(tpc_mpi_get_unique_id(MPI_COMM_NULL, &id) == TPC_ERR_INVALID_ARGUMENT, "MPI_COMM_NULL accepted");
}

static void test_local_rank(int size) {
  int local = -1;
  tpc_status_t st = tpc_mpi_local_rank(MPI_COMM_WORLD, &local);
  CHECK(st == TPC_SUCCESS, "tpc_mpi_local_rank(MPI_COMM_WORLD) returned %d", (int)st);
  CHECK(local == g_rank, "world: local rank %d on world rank %d (one host)", local, g_rank);
  /* a duplicate of MPI_COMM_WORLD is not MPI_COMM_WORLD: the split path must agree */
  MPI_Comm dup;
  MPI_Comm_dup(MPI_COMM_WORLD, &dup);
  int local2 = -1;
  st = tpc_mpi_local_rank(dup, &local2);
  CHECK(st == TPC_SUCCESS, "tpc_mpi_local_rank(dup) returned %d", (int)st);
  CHECK(local2 == g_rank, "split: local rank %d on world rank %d", local2, g_rank);
  MPI_Comm_free(&dup);
  int* all = malloc(sizeof(int) * (size_t)size);
  MPI_Gather(&local, 1, MPI_INT, all, 1, MPI_INT, 0, MPI_COMM_WORLD);
  if (g_rank == 0)
    for (int r = 0; r < size; r++) CHECK(all[r] == r, "rank %d reported local rank %d", r, all[r]);
  free(all);
  CHECK(tpc_mpi_local_rank(MPI_COMM_WORLD, NULL) == TPC_ERR_INVALID_ARGUMENT, "NULL local_rank accepted");
}

static void test_socket_bootstrap(int size) {
  tpc_unique_id_t id;
  tpc_status_t st = tpc_mpi_get_unique_id(MPI_COMM_WORLD, &id);
  CHECK(st == TPC_SUCCESS, "tpc_mpi_get_unique_id returned %d", (int)st);
  if (st != TPC_SUCCESS) return;
  tpc_bootstrap_t* bs = NULL;
  st = tpc_bootstrap_init_socket(&bs, &id, g_rank, size, 20000);
  CHECK(st == TPC_SUCCESS, "tpc_bootstrap_init_socket returned %d", (int)st);
  if (st != TPC_SUCCESS) return;
  CHECK(tpc_bootstrap_rank(bs) == g_rank && tpc_bootstrap_size(bs) == size, "rank/size %d/%d",
        tpc_bootstrap_rank(bs), tpc_bootstrap_size(bs));
  for (int k = 0; k < 3; k++) {
    const size_t n = 1000 + 37 * (size_t)k;
    uint32_t* send = malloc(n * sizeof *send);
    uint32_t* recv = malloc(n * sizeof *recv * (size_t)size);
    for (size_t i = 0; i < n; i++) send[i] = (uint32_t)(g_rank * 1000003u + k * 7919u + i);
    st = tpc_bootstrap_allgather(bs, send, recv, n * sizeof *send);
    CHECK(st == TPC_SUCCESS, "allgather %d returned %d", k, (int)st);
    int bad = 0;
    for (int r = 0; r < size && st == TPC_SUCCESS; r++)
      for (size_t i = 0; i < n; i++) bad += recv[(size_t)r * n + i] != (uint32_t)(r * 1000003u + k * 7919u + i);
    CHECK(bad == 0, "allgather %d: %d wrong words", k, bad);
    free(send);
    free(recv);
  }
  st = tpc_bootstrap_barrier(bs);
  CHECK(st == TPC_SUCCESS, "barrier returned %d", (int)st);
  tpc_bootstrap_destroy(bs);
}

static void test_comm_init_mpi_args(void) {
  /* argument errors must be agreed on by every rank, not leave the others waiting */
  tpc_status_t st = tpc_comm_init_mpi(g_rank == 1 ? NULL : (tpc_comm_t[1]){0}, MPI_COMM_WORLD, NULL);
  CHECK(st != TPC_SUCCESS, "tpc_comm_init_mpi succeeded with a NULL comm on rank 1");
  if (g_rank == 1) CHECK(st == TPC_ERR_INVALID_ARGUMENT, "rank 1 got %d", (int)st);
  CHECK(tpc_comm_init_mpi(NULL, MPI_COMM_NULL, NULL) == TPC_ERR_INVALID_ARGUMENT, "MPI_COMM_NULL accepted");
}

int main(int argc, char** argv) {
  if (MPI_Init(&argc, &argv) != MPI_SUCCESS) {
    fprintf(stderr, "MPI_Init failed\n");
    return 2;
  }
  int size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  CHECK(size >= 2, "run with mpirun -np 2 (size=%d)", size);

  test_unique_id(size);
  test_unique_id_failure_propagates();
  test_local_rank(size);
  test_socket_bootstrap(size);
  test_comm_init_mpi_args();

  int counts[2] = {g_passed, g_failed}, total[2] = {0, 0};
  MPI_Allreduce(counts, total, 2, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (g_rank == 0) {
    printf("%d passed, %d failed\n", total[0], total[1]);
    fflush(stdout);
  }
  MPI_Finalize();
  return total[1] == 0 ? 0 : 1;
}
