"""What every layer uses: the typed verdicts, the one wait helper, the phases a test goes
through.
"""
