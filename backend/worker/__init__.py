"""`animate4d worker`: connects to a server, runs one job at a time, reports and checkpoints."""
