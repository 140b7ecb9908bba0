"""Sample-quality metrics: optimal-transport distances (`ot`), maximum mean discrepancy (`mmd`), the
FID InceptionV3 (`inception`, weights via `inception_weights`)."""
