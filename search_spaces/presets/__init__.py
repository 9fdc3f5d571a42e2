"""The published MobileViT variants as ArchConfig YAML files."""
