"""Fashion-MNIST experiments (Debian's dataset-fashion-mnist files): one config per formulation."""
