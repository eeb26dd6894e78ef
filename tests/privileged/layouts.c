/* Structs that live in no map of their own, in throwaway arrays, so that bcc reports their
 * layout to tests/privileged/test_map_layouts.py. */
#include "../../bpf/lib/events.h"

BPF_ARRAY(layout_flow_event, struct flow_event, 1);
