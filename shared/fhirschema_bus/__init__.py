"""What every FHIRSchema service and NATS client shares: subjects, topology, contracts, settings."""
