"""netoffload: network task offload to real Linux devices and a software NIC."""

__version__ = "0.1.0"
