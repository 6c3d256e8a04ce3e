"""The scheduling core: buckets and packing plans, which rows form the next device step,
fair turns on shared devices, the batcher's threads, the embedding cache. No JAX: it runs any
`Workload`."""
