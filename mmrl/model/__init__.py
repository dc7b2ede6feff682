"""The policy model: loading (zoo, directory, hub), LoRA and the KL reference, prompts and media, log-probs
(`policy`), sequence packing (`packing`) and the offline tiny model zoo (`zoo`)."""
