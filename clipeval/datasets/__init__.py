"""The inputs a run reads: probe image folders and their manifest (probe), concept sets (concepts) and the
ImageNet class names and synonyms read from installed packages (imagenet)."""
