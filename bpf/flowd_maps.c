/* The maps flowd owns: the event ring buffer and its stats. Compiling this creates and pins
 * them; it loads no program. */
#include "lib/events.h"
