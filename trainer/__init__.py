"""trainer: CLIP pretraining and GeneCIS Combiner training on Ray Train (Ray-free core: model, checkpoint,
loss, optim, tasks, data, features, runstate; Ray launcher: train, loop; CLI: __main__)."""
