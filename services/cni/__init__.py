"""capillary's CNI plugin: container runtimes put containers on capillary through it."""
