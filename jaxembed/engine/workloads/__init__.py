"""What the devices run per modality beside text: image towers, vision-language items (their
input preparation next to them), each as a `Workload` for the batcher."""
