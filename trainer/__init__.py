"""trainer: CLIP pretraining and GeneCIS Combiner training on Ray Train (Ray-free core: model, checkpoint,
loss, optim, tasks, data; Ray launcher: train, loop)."""
