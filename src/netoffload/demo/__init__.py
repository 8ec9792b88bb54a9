"""`netoffload demo`: two SoftNics on a Wire, a bulk flow with offload on and off."""
