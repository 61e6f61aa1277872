"""GeneCIS triplet miner: caption scene-graph parsing and conditional-similarity triplet mining."""
