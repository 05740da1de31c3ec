"""Diffusion priors: which pretrained models exist (`registry`), how they are fetched
(`fetch`), loaded (`loading`, real folders or random weights at the real sizes) and faked
(`tiny`), and the guidance modules that turn a render into a gradient (`sds` and one module per
prior). Nothing here downloads unless `animate4d models fetch` asks it to."""
