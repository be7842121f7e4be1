"""Test doubles that are real servers: the fake Hub (and, later, a fault-injecting proxy)."""
