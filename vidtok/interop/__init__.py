"""Conversion to and from other implementations of VidTok.

- `vidtok.interop.diffusers`: diffusers' `AutoencoderVidTok` (config mapping, weights, whole models). Importing
  it does not import diffusers; the functions that build a diffusers model do, and say how to install it.
"""
