/* consumer.c — an outside program built against the installed tpcomm: it only needs the public header
 * and the library, and runs without a GPU (status strings and unique ids need none). */
#include <stdio.h>
#include <string.h>

#include <tpcomm/tpcomm.h>

int main(void) {
  tpc_unique_id_t id;
  char text[TPC_UNIQUE_ID_STRLEN];
  if (tpc_get_unique_id(&id) != TPC_SUCCESS || tpc_unique_id_to_string(&id, text, sizeof text) != TPC_SUCCESS) {
    fprintf(stderr, "unique id failed: %s\n", tpc_get_last_error(NULL));
    return 1;
  }
  if (strcmp(tpc_status_string(TPC_ERR_TIMEOUT), "timeout") != 0) return 1;
  printf("consumer ok: %zu hex digits, version %d\n", strlen(text), TPC_VERSION_CODE);
  return 0;
}
