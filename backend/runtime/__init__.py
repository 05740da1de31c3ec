"""How this process runs: the runtime switches and the devices they apply to."""
