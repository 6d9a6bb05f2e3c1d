/* nvml.c — the few NVML calls tpcomm uses, loaded at run time with dlopen("libnvidia-ml.so.1") and our
 * own declarations (NVML is not on the build machines, and an inference server must not need it). When
 * the library or a call is missing, the answer is TPC_TRI_UNKNOWN with a reason, logged once at INFO. */
#include <dlfcn.h>
#include <pthread.h>
#include <stddef.h>

#include "debug.h"
#include "topo.h"

typedef int nvml_return_t;                /* nvmlReturn_t: 0 = NVML_SUCCESS */
typedef struct nvml_device* nvml_device_t; /* nvmlDevice_t */
enum { NVML_P2P_CAPS_INDEX_NVLINK_ = 2, NVML_P2P_STATUS_OK_ = 0 };

static struct {
  nvml_return_t (*init)(void);
  nvml_return_t (*by_bus_id)(const char*, nvml_device_t*);
  nvml_return_t (*p2p_status)(nvml_device_t, nvml_device_t, int, int*);
  const char* (*error_string)(nvml_return_t);
  const char* why; /* NULL when loaded */
} g_nvml;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER; /* NVML calls are thread-safe; keep it simple */

static void nvml_load(void) {
  void* h = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    g_nvml.why = "libnvidia-ml.so.1 not found (no NVML): NVLink unknown";
    TPC_INFO(TPC_SUB_P2P, "%s (%s)", g_nvml.why, dlerror());
    return;
  }
  g_nvml.init = (nvml_return_t(*)(void))dlsym(h, "nvmlInit_v2");
  g_nvml.by_bus_id = (nvml_return_t(*)(const char*, nvml_device_t*))dlsym(h, "nvmlDeviceGetHandleByPciBusId_v2");
  g_nvml.p2p_status = (nvml_return_t(*)(nvml_device_t, nvml_device_t, int, int*))dlsym(h, "nvmlDeviceGetP2PStatus");
  g_nvml.error_string = (const char* (*)(nvml_return_t))dlsym(h, "nvmlErrorString");
  if (!g_nvml.init || !g_nvml.by_bus_id || !g_nvml.p2p_status) {
    g_nvml.why = "libnvidia-ml.so.1 lacks nvmlInit_v2/nvmlDeviceGetHandleByPciBusId_v2/nvmlDeviceGetP2PStatus";
    TPC_INFO(TPC_SUB_P2P, "%s", g_nvml.why);
    return;
  }
  nvml_return_t r = g_nvml.init();
  if (r != 0) {
    g_nvml.why = "nvmlInit_v2 failed: NVLink unknown";
    TPC_INFO(TPC_SUB_P2P, "%s (%s)", g_nvml.why, g_nvml.error_string ? g_nvml.error_string(r) : "?");
    return;
  }
  TPC_INFO(TPC_SUB_P2P, "NVML loaded");
}

tpc_tri_t tpc_nvml_nvlink(const char* bus_a, const char* bus_b, const char** why) {
  pthread_once(&g_once, nvml_load);
  if (g_nvml.why) {
    if (why) *why = g_nvml.why;
    return TPC_TRI_UNKNOWN;
  }
  pthread_mutex_lock(&g_lock);
  nvml_device_t a = NULL, b = NULL;
  int status = -1;
  nvml_return_t r = g_nvml.by_bus_id(bus_a, &a);
  if (r == 0) r = g_nvml.by_bus_id(bus_b, &b);
  if (r == 0) r = g_nvml.p2p_status(a, b, NVML_P2P_CAPS_INDEX_NVLINK_, &status);
  pthread_mutex_unlock(&g_lock);
  if (r != 0) {
    if (why) *why = "an NVML query failed";
    TPC_INFO(TPC_SUB_P2P, "NVML query for %s <-> %s failed: %s", bus_a, bus_b,
             g_nvml.error_string ? g_nvml.error_string(r) : "?");
    return TPC_TRI_UNKNOWN;
  }
  if (why) *why = status == NVML_P2P_STATUS_OK_ ? "NVLink" : "NVML reports no NVLink P2P";
  return status == NVML_P2P_STATUS_OK_ ? TPC_TRI_YES : TPC_TRI_NO;
}
