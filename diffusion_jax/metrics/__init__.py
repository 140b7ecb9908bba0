"""Sample-quality metrics: optimal-transport distances (`ot`) and maximum mean discrepancy (`mmd`)."""
