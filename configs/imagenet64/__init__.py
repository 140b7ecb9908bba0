"""ImageNet-64 paper configurations (for accelerators; 'tiny' variants run on a CPU in tests)."""
