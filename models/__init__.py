"""fusegan.models: lean network definitions on fusegan.kernels, each matching a published reference.

- `fusegan.models.stylegan2`: StyleGAN2 generator/discriminator, `load_nvlabs` (NVIDIA StyleGAN2-ADA weights)
- `fusegan.models.dcgan`: the PyTorch example's DCGAN, 64x64 and 32x32
- `fusegan.models.pix2pix`: U-Net, PatchGAN and ResNet generators of pix2pix/CycleGAN
- `fusegan.models.autoencoder`: conv/denoising autoencoders, conv and MLP VAEs, a PCA baseline
"""
