"""Training: continued pretraining (masked diffusion, MNTP) and the contrastive stages, on one shared loop."""
