"""`netoffload demo`: two SoftNics on a Cable, a bulk flow with offload on and off."""
