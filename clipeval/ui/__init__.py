"""The Streamlit side of the explorer (the only Streamlit code inside clipeval/): cached store reads
(data), shared widgets, the neuron view, activation maps, the live probe, label sources and build progress.
Pages in pages/ hold layout and call these."""
