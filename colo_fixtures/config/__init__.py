"""Configuration: the knobs (options, ini, environment) as frozen ``Settings``; the lab
inventory file.
"""
