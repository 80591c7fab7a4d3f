"""What drives the VM and breaks it: the client and its history, the checker, the nemesis
(faults).
"""
