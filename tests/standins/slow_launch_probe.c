/* A test aid, not a stand-in: preloaded (LD_PRELOAD) into the real msb, it makes `msb __launch-protocol`
   (the SDK's launch probe, which the SDK gives 2 s) answer SLOW_LP_MS milliseconds late, as a busy or
   slow host does. With SLOW_LP_ONCE=FILE only while FILE exists, and the first slow probe removes it.
   Every other msb command, and every other program, runs untouched. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

__attribute__((constructor)) static void answer_late(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "__launch-protocol") != 0) continue;
    const char *once = getenv("SLOW_LP_ONCE");
    if (once && unlink(once) != 0) return; /* already taken: answer at once */
    const char *ms = getenv("SLOW_LP_MS");
    usleep((useconds_t)(ms ? atoi(ms) : 3000) * 1000);
  }
}
