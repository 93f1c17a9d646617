"""What training the autoencoder needs and inference does not: loss, LPIPS, discriminators, EMA, image logs, the
run's callbacks."""
