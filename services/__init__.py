"""capillary: Cilium-style eBPF pod networking for one Linux node."""
