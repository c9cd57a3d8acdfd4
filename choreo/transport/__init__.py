"""Transports: the in-memory log and Kafka (aiokafka), behind one interface."""
