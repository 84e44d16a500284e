"""The bottom layer: messages, the model and tool protocols, run events, token arithmetic,
images, limits, secrets, output capping and markdown helpers. Imports nothing else here."""
