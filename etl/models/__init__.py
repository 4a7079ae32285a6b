"""Model stages: image embeddings and VAE latents (encoders.py); tiny checkpoints (tiny.py).
Everything loads through `from_pretrained(path)`, so tiny and real checkpoints share one path."""
