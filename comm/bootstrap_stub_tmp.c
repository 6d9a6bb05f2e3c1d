/* bootstrap_stub_tmp.c — TEMPORARY STUB. DELETE AT MERGE: comm/bootstrap.c (another branch) provides the
 * real tpc_get_unique_id / tpc_unique_id_to_string / tpc_unique_id_from_string.
 *
 * Exists only so that the launcher branch builds and tpcomm-run's tests run before bootstrap.c lands. The
 * id is random bytes from getrandom() (no rendezvous directory, no layout); the text form is the one
 * tpcomm.h documents: 2*TPC_UNIQUE_ID_BYTES lower-case hex digits. Relies on: getrandom() (glibc). */
#include <stdio.h>
#include <string.h>
#include <sys/random.h>

#include "debug.h"
#include "tpcomm/tpcomm.h"

tpc_status_t tpc_get_unique_id(tpc_unique_id_t* id) {
  if (!id) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "tpc_get_unique_id: id is NULL");
  size_t got = 0;
  while (got < sizeof id->internal) {
    ssize_t n = getrandom(id->internal + got, sizeof id->internal - got, 0);
    if (n <= 0) return tpc_error(NULL, TPC_ERR_SYSTEM, "tpc_get_unique_id (stub): getrandom failed");
    got += (size_t)n;
  }
  return TPC_SUCCESS;
}

tpc_status_t tpc_unique_id_to_string(const tpc_unique_id_t* id, char* buf, size_t buflen) {
  if (!id || !buf) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "tpc_unique_id_to_string: NULL argument");
  if (buflen < TPC_UNIQUE_ID_STRLEN)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "tpc_unique_id_to_string: buflen=%zu < %d", buflen,
                     TPC_UNIQUE_ID_STRLEN);
  static const char hex[] = "0123456789abcdef";
  for (size_t i = 0; i < TPC_UNIQUE_ID_BYTES; i++) {
    unsigned char b = (unsigned char)id->internal[i];
    buf[2 * i] = hex[b >> 4];
    buf[2 * i + 1] = hex[b & 15];
  }
  buf[2 * TPC_UNIQUE_ID_BYTES] = 0;
  return TPC_SUCCESS;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

tpc_status_t tpc_unique_id_from_string(const char* str, tpc_unique_id_t* id) {
  if (!str || !id) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "tpc_unique_id_from_string: NULL argument");
  if (strlen(str) != 2 * TPC_UNIQUE_ID_BYTES)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "tpc_unique_id_from_string: length %zu, expected %d",
                     strlen(str), 2 * TPC_UNIQUE_ID_BYTES);
  for (size_t i = 0; i < TPC_UNIQUE_ID_BYTES; i++) {
    int hi = hexval(str[2 * i]), lo = hexval(str[2 * i + 1]);
    if (hi < 0 || lo < 0)
      return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "tpc_unique_id_from_string: non-hex digit at %zu", 2 * i);
    id->internal[i] = (char)(hi << 4 | lo);
  }
  return TPC_SUCCESS;
}
