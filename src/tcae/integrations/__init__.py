"""Bridges to other libraries. :mod:`tcae.integrations.diffusers`: a TC-AE as a diffusers autoencoder
(``TCAEAutoencoder``, a ``ModelMixin``/``ConfigMixin`` with ``AutoencoderDC``'s interface) and
:func:`~tcae.integrations.diffusers.export_diffusers`. Importing it needs ``diffusers``."""
