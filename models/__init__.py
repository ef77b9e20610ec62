"""UNet 3+ model (unet3plus.py), encoders, blocks, losses and metrics (Keras 3,
backend-neutral), and the model's settings (model_config.py).

Nothing is imported here: `models.model_config` must stay importable without Keras, so that the
runners and pipeline/configs.py load fast and before TensorFlow prints anything."""
