"""smearlens trainer: data, model, optimisers and the training loop."""
