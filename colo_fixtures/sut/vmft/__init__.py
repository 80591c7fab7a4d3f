"""vm-ft / PLOVER: the tree's build, its nodes (QEMU + RDMA Paxos), a group of three, DARE's
logs.
"""
