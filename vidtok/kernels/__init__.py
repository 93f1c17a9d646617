"""CPU convolution kernels (Winograd F(2,3) and the fast-conv dispatch) that compute what nn.Conv3d does, faster."""
