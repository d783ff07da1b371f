"""The Faust stream: validate events, update state in Redis, refresh recommendations."""
