"""Integrations with training frameworks: ``attent.integrations.hf`` (Hugging Face ``Trainer``) and
``attent.integrations.timm`` (a from-scratch ViT recipe). Each is imported on its own, so that
using one never imports the other framework."""
