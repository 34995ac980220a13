/* callgrind's collection switched on or off from Python (ctypes), for
   benchmarks/bench_request_path.py --critical: a client request, a no-op outside valgrind. */
#include <valgrind/callgrind.h>

void cg_toggle(void) { CALLGRIND_TOGGLE_COLLECT; }
