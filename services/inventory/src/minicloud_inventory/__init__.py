"""minicloud inventory service: the physical world: regions, racks, NVLink domains, hosts and GPUs."""
