"""The lab: topology as data, host backends (namespace, SSH), the VM network, the ledger and
janitor, capture.
"""
