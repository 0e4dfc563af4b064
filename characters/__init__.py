"""Characters: TimeInv (timestep-dependent textual inversion) + LoRA, trained from a few reference images.

Stage four of storyboard → retrieval → structure → **characters** → render.
"""
