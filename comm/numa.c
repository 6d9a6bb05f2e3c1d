/* numa.c — NUMA placement of a rank next to its GPU: tpc_gpu_numa_node(), tpc_bind_numa_node(),
 * tpc_bind_to_gpu() (public API, tpcomm.h).
 *
 * Relies on: the CUDA runtime for the device count and PCI bus id (cudaDeviceGetPCIBusId initializes the
 * driver but creates no context); sysfs (/sys/bus/pci/devices/<bus id>/numa_node, where -1 or a missing
 * file means the machine gives no NUMA information); libnuma for the binding.
 *
 * Binding policy. CPUs: numa_run_on_node(node), i.e. the affinity becomes every CPU of the node (this
 * replaces any affinity the process had). Memory: numa_set_preferred(node), not numa_set_membind(). The
 * rank's host memory (pinned staging buffers, the CUDA driver's own allocations) should come from the
 * GPU's node, but a strict bind turns "the node is full" into allocation failures or the OOM killer on a
 * machine that still has free memory elsewhere; "preferred" keeps the locality in the normal case and
 * degrades to remote memory instead of failing. Both settings are inherited across fork and exec, which
 * is what tpcomm-run relies on: it computes the node in the parent with tpc_gpu_numa_node() and calls
 * tpc_bind_numa_node() in the child between fork and exec, so the rank itself never needs CUDA for it.
 * tpc_bind_numa_node() does not touch CUDA (only libnuma, which allocates with malloc; glibc keeps malloc
 * usable in the child of a fork).
 *
 * Argument checks come before anything that depends on the machine, so that invalid input gives
 * TPC_ERR_INVALID_ARGUMENT everywhere (also on a machine without GPU or NUMA support). */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <cuda_runtime_api.h>
#include <numa.h>

#include "checks.h"
#include "debug.h"
#include "tpcomm/tpcomm.h"

/* Normalizes a CUDA bus id ("0000:18:00.0", "00000000:18:00.0", upper or lower case) to the sysfs name
 * "dddd:bb:dd.f" (%x prints lower case). Returns 0 on success. */
static int normalize_bus_id(const char* in, char* out, size_t outlen) {
  unsigned domain, bus, dev, fn;
  int used = 0;
  if (strspn(in, "0123456789abcdefABCDEF:.") != strlen(in)) return -1; /* no signs, spaces or "0x" */
  if (sscanf(in, "%x:%x:%x.%x%n", &domain, &bus, &dev, &fn, &used) != 4 || in[used] != 0) return -1;
  if (bus > 0xff || dev > 0x1f || fn > 7) return -1;
  int n = snprintf(out, outlen, "%04x:%02x:%02x.%x", domain, bus, dev, fn);
  if (n < 0 || (size_t)n >= outlen) return -1;
  return 0;
}

/* Reads the numa_node attribute of PCI device bus_id (sysfs form). A missing file means no NUMA
 * information (*node = -1); an unreadable or malformed one is an error. */
static tpc_status_t pci_numa_node(const char* bus_id, int* node) {
  char path[256];
  snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/numa_node", bus_id);
  FILE* f = fopen(path, "r");
  if (!f) {
    if (errno == ENOENT) {
      TPC_INFO(TPC_SUB_INIT, "%s does not exist: no NUMA information for PCI device %s", path, bus_id);
      *node = -1;
      return TPC_SUCCESS;
    }
    return tpc_error(NULL, TPC_ERR_SYSTEM, "tpc_gpu_numa_node: cannot open %s: %s", path, strerror(errno));
  }
  int value = 0;
  int got = fscanf(f, "%d", &value);
  fclose(f);
  if (got != 1 || value < -1)
    return tpc_error(NULL, TPC_ERR_SYSTEM, "tpc_gpu_numa_node: %s does not hold a node number", path);
  *node = value;
  return TPC_SUCCESS;
}

tpc_status_t tpc_gpu_numa_node(int device, int* node) {
  if (!node) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "tpc_gpu_numa_node: node is NULL");
  if (device < 0)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "tpc_gpu_numa_node: device=%d is negative", device);

  int count = 0;
  cudaError_t cerr = cudaGetDeviceCount(&count);
  if (cerr != cudaSuccess) {
    cudaGetLastError(); /* leave no error behind in the runtime's last-error slot */
    return tpc_error(NULL, TPC_ERR_NO_DEVICE, "tpc_gpu_numa_node: no CUDA GPU is visible (%s)",
                     cudaGetErrorString(cerr));
  }
  if (count == 0)
    return tpc_error(NULL, TPC_ERR_NO_DEVICE, "tpc_gpu_numa_node: no CUDA GPU is visible (device count 0)");
  if (device >= count)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT,
                     "tpc_gpu_numa_node: device=%d is out of range (%d visible GPU%s)", device, count,
                     count == 1 ? "" : "s");

  char raw[64], bus_id[64];
  cerr = cudaDeviceGetPCIBusId(raw, (int)sizeof raw, device);
  if (cerr != cudaSuccess) {
    cudaGetLastError();
    return tpc_error(NULL, TPC_ERR_CUDA, "tpc_gpu_numa_node: cudaDeviceGetPCIBusId(device=%d) failed: %s", device,
                     cudaGetErrorString(cerr));
  }
  if (normalize_bus_id(raw, bus_id, sizeof bus_id) != 0)
    return tpc_error(NULL, TPC_ERR_CUDA, "tpc_gpu_numa_node: unexpected PCI bus id '%s' for device %d", raw,
                     device);

  int value = -1;
  TPC_CHECK(pci_numa_node(bus_id, &value));
  *node = value;
  TPC_INFO(TPC_SUB_INIT, "GPU %d (%s) is on NUMA node %d", device, bus_id, value);
  return TPC_SUCCESS;
}

tpc_status_t tpc_bind_numa_node(int node) {
  if (node == -1) {
    TPC_INFO(TPC_SUB_INIT, "tpc_bind_numa_node: node -1 (no NUMA information): not binding");
    return TPC_SUCCESS;
  }
  /* libnuma wants numa_available() before anything else; its answer only matters after the range check
   * (numa_max_node() comes from sysfs and is valid either way). */
  int available = numa_available();
  int max_node = numa_max_node();
  if (node < -1 || node > max_node)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT,
                     "tpc_bind_numa_node: node=%d is out of range (-1 or 0..%d)", node, max_node);
  if (available < 0)
    return tpc_error(NULL, TPC_ERR_UNSUPPORTED,
                     "tpc_bind_numa_node: libnuma reports no NUMA support (numa_available() < 0); "
                     "cannot bind to node %d", node);

  errno = 0;
  if (numa_run_on_node(node) != 0)
    return tpc_error(NULL, TPC_ERR_SYSTEM, "tpc_bind_numa_node: numa_run_on_node(%d) failed: %s", node,
                     strerror(errno ? errno : EINVAL));
  numa_set_preferred(node); /* returns nothing: check the policy it should have left */
  if (numa_preferred() != node)
    return tpc_error(NULL, TPC_ERR_SYSTEM,
                     "tpc_bind_numa_node: CPUs bound to node %d but numa_set_preferred(%d) did not take "
                     "effect (preferred node is %d)", node, node, numa_preferred());
  TPC_INFO(TPC_SUB_INIT, "bound CPUs to NUMA node %d, memory preferred on node %d", node, node);
  return TPC_SUCCESS;
}

tpc_status_t tpc_bind_to_gpu(int device) {
  int node = -1;
  TPC_CHECK(tpc_gpu_numa_node(device, &node));
  return tpc_bind_numa_node(node);
}
