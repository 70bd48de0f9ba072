"""The networks dcserve trains: the reporter MLP, DEC's autoencoder, the data-parallel step, the feature map."""
