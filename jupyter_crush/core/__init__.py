"""The bottom layer: messages, the model and tool protocols, run events, token arithmetic,
images, limits, secrets, output capping and markdown helpers, the todos plan, the question
tool's questions and answers, a turn's change log (for undo) and remote kernels. Imports
nothing else here."""
