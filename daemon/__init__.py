"""tritterd: the daemon, its event log, bus, control server and the training engine."""
