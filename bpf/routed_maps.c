/* The maps routed owns. Compiling this creates and pins them; it loads no program. */
#include "lib/ipcache.h"
#include "lib/tunnel.h"
