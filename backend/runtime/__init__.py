"""How this process runs: runtime switches, devices, and host-to-device copies."""
