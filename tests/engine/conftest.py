"""The kernel-oracle rigs of the device tests, for the engine's own kernel comparisons."""

from tests.device.test_kernel_oracle import assemble_rig, segment_rig  # noqa: F401
