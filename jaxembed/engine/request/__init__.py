"""What a caller asks of the engine and how a request is tracked: jobs, options, results,
progress, limits, tasks. Plain data; imports nothing else of the engine, and no JAX."""
