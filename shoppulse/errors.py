"""One exception base for the whole service, with small subclasses per concern."""


class ShopPulseError(Exception):
    """Base of every error ShopPulse raises on purpose."""


class ConfigError(ShopPulseError):
    """A setting or command-line argument cannot be used."""


class InvalidEvent(ShopPulseError):
    """An input event cannot be used; its message is the dead-letter reason."""


class StoreError(ShopPulseError):
    """Redis state could not be read or written as expected."""


class LocalStackError(ShopPulseError):
    """A local broker or Redis server could not be found or started."""


class DatasetError(ShopPulseError):
    """A dataset could not be fetched or parsed."""
