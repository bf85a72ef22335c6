"""Loading the models a run uses, by name, from local files only: the target networks (targets), the
image-text labellers and judges (image_text), BLIP-2 for VQA (vqa), and the offline hub settings (hub)."""
