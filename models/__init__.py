"""Pure algorithms on numpy arrays and plain dicts: no Kafka, Faust or Redis imports here."""
