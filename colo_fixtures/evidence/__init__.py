"""What a test concludes from: the replicas compared, and the known issues with the evidence
each needs.
"""
