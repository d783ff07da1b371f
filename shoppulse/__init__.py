"""ShopPulse: real-time personalization for online shops."""

__version__ = "0.1.0"
