"""rrpcsync: declarative config sync for device fleets over Tencent Cloud IoT Explorer RRPC."""

__version__ = "0.1.0"
