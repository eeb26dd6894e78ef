"""Docker's side of capillary: libnetwork's remote driver protocol and the Engine API."""
