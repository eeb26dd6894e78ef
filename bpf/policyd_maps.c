/* The maps policyd owns. Compiling this creates and pins them; it loads no program. */
#include "lib/policy.h"
