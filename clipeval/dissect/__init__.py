"""One CLIP-Dissect run: the probe pass and labelling (pipeline), activation collection and per-unit
summaries (activations), pooling a layer's output to one value per unit (pooling), similarity functions,
activation maps, the live probe of one image (live) and descriptions imported from or exported to CSV."""
