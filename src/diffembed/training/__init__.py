"""Training: pretraining objectives (masked diffusion, MNTP) and, later, the stage loops."""
