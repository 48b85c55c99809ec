"""fusegan.models: lean network definitions (StyleGAN2, DCGAN, pix2pix, CycleGAN, autoencoders) on fusegan.kernels."""
