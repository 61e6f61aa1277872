"""A procedural image-caption world and a GeneCIS-format benchmark built from it (Ray-free).

``scene`` is the ground-truth model every other module shares: object kinds, attributes, placement and
the spatial relations computed from geometry.
"""
