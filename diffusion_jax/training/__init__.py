"""Training: train state, sharded step, sharding rules, checkpoints, logging and the loop.

Modules: `state` (TrainState, optimizer, EMA), `step` (the jitted train step), `sharding` (mesh and
logical-axis rules), `fsdp` (ZeRO-3 network call: gathered weights, reduce-scattered gradients),
`collectives` (collective counts and bytes of a compiled program), `checkpoints` (Orbax, exact
resume, read-only `load_denoiser_from_checkpoint`), `integrity` (checksum manifests, proof of
damage, retries), `lock` (one writer per workdir), `workdir` (is the workdir this run's;
`config.resume`), `preemption` (SIGTERM flag), `distributed` (multi-host initialisation, global
batches), `logging` (TensorBoard + JSONL), `loop` (the training loop behind
`python -m diffusion_jax.train`).
"""
