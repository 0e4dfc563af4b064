"""evaluate-story: measure a rendered story the way the papers do (text alignment, identity, consistency,
structure and motion fidelity, action, FVD/KVD), per shot and for the story; see docs/EVALUATION.md."""
