"""Judges that score sampled answers for the trait and for coherence, and the filter that uses the scores.

The paper (§1) keeps a contrastive pair only when the judge finds the trait in the D⁺ answer, not in the D⁻
answer, and both answers coherent (the persona-vectors filtering rule); see `wsteer.judges.filtering`.
"""
