"""The kernel-oracle rig of the device tests, for the engine's own kernel comparisons."""

from tests.device.test_kernel_oracle import assemble_rig  # noqa: F401
