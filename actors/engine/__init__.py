"""The engine: the driver, the pool and its ledger, the stage workers, the gate."""
