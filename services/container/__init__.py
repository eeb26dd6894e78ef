"""capillary in containers: configuration from the environment, kernel headers for bcc,
the nats-server launcher and health checks (the image's entrypoint, `capillary-container`)."""
