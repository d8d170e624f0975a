"""gemmaforge tests: tiny seeded parity tests, and real-model tests marked slow."""
